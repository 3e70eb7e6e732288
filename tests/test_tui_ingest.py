"""Whole-run ingestion (processes, batches, mixed rows), the tree repaint per snapshot, replay
wake-ups."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from stagewatch.records import Step, encode
from tui.model.aggregate import RunAgg
from tui.source.bulk import parallel_worth
from tui.source.decode import parse_line
from tui.source.feed import FOLD_LINES
from tui.source.reader import RunSource
from tui.testing import start_line, write_run


def _figures(src: RunSource) -> dict:
    d = dataclasses.asdict(src.snapshot())
    d.pop("idle_s")
    return d


def _close(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):  # the chart's series
        return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-6, equal_nan=True))
    return a == b


def test_parallel_load_matches_serial(tmp_path: Path) -> None:
    write_run(tmp_path, "r", steps=300, ranks=3, n_regions=12, straggler=2, eval_every=50)
    run = tmp_path / "r"
    with open(run / "rank1.jsonl", "a") as f:  # a bad line and a partial last line
        f.write('{"v":"1.0","kind":"step","step":"x"}\n{"v":"1.0","kind":')
    serial = RunSource(run, use_index=False).load(parallel=False)
    par = RunSource(run, use_index=False).load(parallel=True)
    assert par.version > 0
    a, b = _figures(serial), _figures(par)
    for k in a:
        assert _close(a[k], b[k]), k
    assert b["straggler"] == 2
    assert [f.malformed for f in par.files()] == [0, 1, 0]
    # the feeds carry on from where the workers stopped: new lines are read, once
    with open(run / "rank1.jsonl", "a") as f:
        f.write('"eval","step":300,"metrics":{"psnr":30.5}}\n')
    assert par.poll()
    assert dict(par.snapshot().evals)["psnr"] == 30.5
    assert par.agg.ranks[1].steps == 300


def test_load_decides_by_size(tmp_path: Path) -> None:
    write_run(tmp_path, "r", steps=5, ranks=2)
    src = RunSource(tmp_path / "r")
    assert not parallel_worth(list(src.feeds.values()))  # small: one process
    assert src.load().agg.ranks[1].steps == 5


def test_long_reads_fold_in_sub_batches(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    n = 3 * FOLD_LINES + 7
    lines = [start_line("r")]
    for s in range(1, n + 1):
        regions = {"a": (float(s), 1)} if s % 2 else {"a": (float(s), 2), "b": (1.0, 1)}
        lines.append(
            encode(Step(step=s, time=float(s), wall_ms=2.0 * s, regions=regions, samples=1))
        )
    (run / "rank0.jsonl").write_text("".join(lines))
    agg = RunSource(run).load().agg.ranks[0]
    col_a, col_b = agg.cols["a"], agg.cols["b"]
    assert agg.steps == n
    assert agg.sum[col_a] == sum(range(1, n + 1))
    assert agg.n[col_b] == n // 2 and agg.calls[col_a] == n + n // 2
    assert agg.min[col_a] == 1.0 and agg.max[col_a] == float(n)
    assert agg.last_step == n and agg.last[col_a] == float(n)


def test_ingest_same_as_row_by_row() -> None:
    regs = [{"a": [1.0, 1], "b": [2.0, 3]}, {"b": [4.0, 1]}, {"a": [5.0, 2], "c": [0.5, 1]}, {}]
    rows = []
    for i, r in enumerate(regs * 5, 1):
        line = encode(
            Step(
                step=i, time=float(i), wall_ms=10.0 + i, regions={k: tuple(v) for k, v in r.items()}
            )
        )
        row = parse_line(line.rstrip("\n").encode())
        assert row is not None
        rows.append(row)
    one, many = RunAgg("x"), RunAgg("x")
    one.add_steps(0, rows)
    for r in rows:
        many.add_steps(0, [r])
    a, b = one.ranks[0], many.ranks[0]
    assert a.names == b.names
    k = len(a.names)
    for attr in ("sum", "min", "max", "n", "calls", "last", "last_calls", "last_seen"):
        assert list(getattr(a, attr)[:k]) == list(getattr(b, attr)[:k]), attr
    assert (a.hist == b.hist).all() and a.all_stats() == b.all_stats()


def test_tree_repaints_changed_values_without_rebuilding(tmp_path: Path) -> None:
    import asyncio
    import time

    from tui.source.replay import ReplaySource
    from tui.view.app import MonitorApp
    from tui.view.widgets.tree import StageTree

    run = tmp_path / "r"
    run.mkdir()
    steps = [
        Step(step=i, time=float(i), wall_ms=100.0, regions={"alpha": (ms, 1)})
        for i, ms in ((1, 11.25), (2, 77.5))
    ]
    (run / "rank0.jsonl").write_text(start_line("r") + "".join(encode(s) for s in steps))

    def screen_text(tree: StageTree) -> str:
        return "\n".join(tree.render_line(y).text for y in range(tree.size.height))

    async def main() -> None:
        app = MonitorApp(ReplaySource(run, playing=False))
        async with app.run_test(size=(160, 40)) as pilot:
            tree = app.query_one(StageTree)

            async def until(cond) -> None:  # type: ignore[no-untyped-def]
                t0 = time.monotonic()
                while not cond():
                    assert time.monotonic() - t0 < 10, "condition not met in time"
                    await pilot.pause(0.02)

            app.source.command(lambda: app.source.seek(1))
            await until(lambda: "11.2" in screen_text(tree))
            rebuilds = tree.rebuilds
            repaints: list[int] = []
            refresh = tree.refresh
            tree.refresh = lambda *a, **k: (repaints.append(1), refresh(*a, **k))[1]  # type: ignore[method-assign]
            app.source.command(lambda: app.source.seek(2))
            await until(lambda: "77.5" in screen_text(tree))  # last ms of step 2
            assert tree.rebuilds == rebuilds and repaints  # labels replaced, the tree repainted
            assert tree.nodes_by_name["alpha"].label.plain.startswith("alpha ")

    asyncio.run(main())


def test_replay_posts_after_a_command_whose_wakeup_was_lost(tmp_path: Path) -> None:
    import threading

    from tui.source.replay import ReplaySource

    write_run(tmp_path, "r", steps=5, ranks=1)
    src = ReplaySource(tmp_path / "r", playing=False, tick_s=0.01)
    posted: list[int] = []
    done = threading.Event()

    class LateWake(threading.Event):
        """The command arrives (and sets the event) just as the wait times out."""

        calls = 0

        def wait(self, timeout: float | None = None) -> bool:
            LateWake.calls += 1
            if LateWake.calls == 2:
                src._commands.append(lambda: src.forward(1))
                self.set()
                return False  # timed out: the set() above is cleared by the loop
            if LateWake.calls > 4:
                done.set()
                src._stop.set()
            return False

    src._wake = LateWake()

    def post(snap) -> None:  # type: ignore[no-untyped-def]
        posted.append(snap.selected.step)

    t = threading.Thread(target=src._loop, args=(post,))
    t.start()
    assert done.wait(10)
    t.join(10)
    assert posted[0] == 0 and 1 in posted  # the step the command showed was posted


def test_a_replay_jump_stops_at_the_next_batch_once_the_source_is_stopped(
    tmp_path: Path,
) -> None:
    # the worker that runs the loop is joined at exit: a jump to the end of a long run
    # must not keep a quitting monitor alive until it has folded the whole run
    from tui.source import replay
    from tui.source.replay import ReplaySource

    write_run(tmp_path, "r", steps=3 * replay.BATCH, ranks=2, n_regions=4)
    src = ReplaySource(tmp_path / "r", playing=False)
    src._stop.set()
    src.jump_end()
    assert 0 < src.position < 3 * replay.BATCH
    done = ReplaySource(tmp_path / "r", playing=False)
    done.jump_end()
    assert done.position == 3 * replay.BATCH
