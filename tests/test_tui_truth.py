"""Issue 20: no valid step thrown away by one bad line (one record per step number, the
newest; only a resume supersedes earlier steps), and log text never reaching the screen raw."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stagewatch.records import MAX_INT, RunEnd, RunStart, Step, encode
from tui.report.summary import summary_dict, summary_text
from tui.source import decode
from tui.source.feed import StepSet
from tui.source.reader import RunSource
from tui.source.replay import ReplaySource

RUN = "20261126-120000-truth-0001"


def _step(n: int, wall: float = 10.0, **kw: object) -> str:
    d = {
        "v": "1.0",
        "kind": "step",
        "step": n,
        "time": 1.0,
        "wall_ms": wall,
        "samples": 1,
        "regions": {"a": [4.0, 1], "a/b": [2.0, 1]},
    }
    d.update(kw)
    return json.dumps(d, separators=(",", ":"))


def _start(start_step: int = 0, **kw: object) -> str:
    rec = RunStart(run_id=RUN, rank=0, world_size=1, time=1.0, start_step=start_step)
    d = json.loads(encode(rec))
    d.update(kw)
    return json.dumps(d, separators=(",", ":"))


def _write(tmp_path: Path, lines: list[str], name: str = RUN) -> Path:
    run = tmp_path / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "rank0.jsonl").write_text("\n".join(lines) + "\n")
    return run


def _steps_read(run: Path, monkeypatch: pytest.MonkeyPatch, fast: bool) -> tuple[int, int]:
    """(steps folded, lines malformed) of a whole read, with or without the C fast path."""
    monkeypatch.setattr(decode, "scan_regions", decode.scan_regions if fast else None)
    src = RunSource(run, use_index=False).load(parallel=False)
    snap = src.snapshot()
    return snap.wall.steps, snap.files[0].malformed


def _all_paths(run: Path, monkeypatch: pytest.MonkeyPatch) -> set[tuple[int, int]]:
    """What every read path makes of a run: fast and pure whole reads, a live read a few
    bytes at a time, a read through the index, a replay to the end."""
    got = {_steps_read(run, monkeypatch, True), _steps_read(run, monkeypatch, False)}
    live = RunSource(run, use_index=False)
    for f in live.feeds.values():
        f.tail.chunk = 97
    for _ in range(10_000):
        live.poll(budget_s=None)
        if not live.behind:
            break
    s = live.snapshot()
    got.add((s.wall.steps, s.files[0].malformed))
    indexed = RunSource(run, use_index=True).load(parallel=False)
    indexed.save_index(force=True)
    again = RunSource(run, use_index=True).load(parallel=False)
    assert again.from_index
    s = again.snapshot()
    got.add((s.wall.steps, s.files[0].malformed))
    rp = ReplaySource(run, playing=False, use_index=False)
    rp.seek(math.inf)
    s2 = rp.build().selected
    assert s2 is not None
    got.add((s2.wall.steps, s2.files[0].malformed))
    return got


# --------------------------------------------------------------------------- item 4


def test_a_negative_step_line_is_refused_and_the_rest_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [_start(), *(_step(i) for i in range(1, 6)), _step(-1), _step(6), _step(7)]
    assert _all_paths(_write(tmp_path, lines), monkeypatch) == {(7, 1)}


def test_a_duplicate_step_key_keeping_a_bad_value_is_one_bad_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dup = _step(4).replace('"step":4', '"step":4,"step":-4')
    lines = [_start(), *(_step(i) for i in range(1, 6)), dup, _step(6), _step(7)]
    assert _all_paths(_write(tmp_path, lines), monkeypatch) == {(7, 1)}


def test_steps_going_back_keep_each_number_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2, 1, 0, -5 after 1..4: 0 and -5 refused; 2 and 1 are newer records of kept numbers
    lines = [_start(), *(_step(i) for i in range(1, 5)), _step(2), _step(1), _step(0), _step(-5)]
    lines += [_step(5)]
    run = _write(tmp_path, lines)
    assert _all_paths(run, monkeypatch) == {(5, 2)}
    src = RunSource(run, use_index=False).load()
    assert src.files()[0].duplicates == 2


def test_newest_record_of_a_step_number_wins(tmp_path: Path) -> None:
    lines = [_start(), _step(1, 10.0), _step(2, 10.0), _step(3, 10.0), _step(2, 40.0)]
    snap = RunSource(_write(tmp_path, lines), use_index=False).load().snapshot()
    assert snap.wall.steps == 3 and snap.wall.max == 40.0 and snap.wall.avg == 20.0


def test_a_step_far_ahead_is_kept_and_supersedes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    far = 10**11
    lines = [_start(), _step(1), _step(2), _step(3), _step(far), _step(4), _step(5)]
    assert _all_paths(_write(tmp_path, lines), monkeypatch) == {(6, 0)}


def test_a_resume_supersedes_earlier_steps_above_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # checkpoint at 5, killed at 8; the resumed process reaches only 7: 6..8 of the first
    # segment are superseded (8 too, although nothing later is numbered 8)
    lines = [_start(), *(_step(i, 10.0) for i in range(1, 9)), _start(5)]
    lines += [_step(6, 30.0), _step(7, 30.0)]
    run = _write(tmp_path, lines)
    assert _all_paths(run, monkeypatch) == {(7, 0)}
    snap = RunSource(run, use_index=False).load().snapshot()
    assert snap.wall.max == 30.0 and snap.wall.avg == pytest.approx((5 * 10 + 2 * 30) / 7)


def test_text_log_steps_below_one_are_refused(tmp_path: Path) -> None:
    from tui.testing import text_log_block

    body = "".join(text_log_block(s, [("Forward", 5.0, [])], 5.0) for s in (1, 2, 0, 3))
    body += "Step 1" + "0" * 40 + "\n"  # a number past the limits: a line not understood
    p = tmp_path / "timing_rank0.log"
    p.write_text(body)
    snap = RunSource(p, use_index=False).load().snapshot()
    assert snap.wall.steps == 3
    assert snap.files[0].malformed == 2


def test_step_set_runs() -> None:
    s = StepSet()
    s.add_increasing(list(range(1, 101)))
    s.add_increasing(list(range(110, 200, 10)))
    s.add(10**11)
    s.add(105)
    assert len(s.runs) == 4
    assert all(x in s for x in (1, 50, 100, 110, 190, 10**11, 105))
    assert not any(x in s for x in (0, 101, 111, 200, 10**11 - 1))
    s.drop_above(150)
    assert 140 in s and 150 in s and 160 not in s and 10**11 not in s and s.high == 150


# --------------------------------------------------------------------------- fuzz

_CTRL = "\x00\x07\x1b[31m\x08\r\x7f\u009b\u202e"
_text = st.text(alphabet=st.sampled_from(list("ab/ é") + list(_CTRL)), min_size=1, max_size=8)
_step_no = st.one_of(
    st.integers(-3, 12),  # small numbers: non-positive ones, repeats, steps going back
    st.sampled_from([10**11, MAX_INT - 1, MAX_INT, -(10**11)]),  # far ahead, at the limits
)


@st.composite
def _events(draw: st.DrawFn) -> list[tuple[str, int, str]]:
    out = []
    for _ in range(draw(st.integers(1, 24))):
        kind = draw(st.sampled_from(["step"] * 6 + ["start", "eval", "end", "version", "bad"]))
        out.append((kind, draw(_step_no), draw(_text)))
    return out


def _expected(events: list[tuple[str, int, str]]) -> int:
    """The steps a reader keeps: numbers 1 <= n < MAX_INT, each the newest record of its
    number, not followed by a run_start resuming below it."""
    kept = 0
    for i, (kind, n, _) in enumerate(events):
        if kind != "step" or not 1 <= n < MAX_INT:
            continue
        later = events[i + 1 :]
        if any(k == "step" and m == n for k, m, _ in later):
            continue
        if any(k == "start" and max(m, 0) < n for k, m, _ in later):
            continue
        kept += 1
    return kept


def _line(kind: str, n: int, s: str) -> str:
    if kind == "step":
        return _step(
            n, regions={s: [4.0, 1], f"{s}/{s}": [1.0, 1]}, scalars={s: 1.0}, memory={s: 1}
        )
    if kind == "version":  # a step whose version string holds them: one malformed line
        return _step(n, v=f"x{s}.0")
    if kind == "start":
        return _start(max(n, 0), host=s, device=s, gpu_name=s, run_id=s, config={s: s})
    if kind == "eval":
        return json.dumps({"v": "1.0", "kind": "eval", "step": max(n, 1), "metrics": {s: 1.0}})
    if kind == "end":
        return json.dumps(
            {"v": "1.0", "kind": "run_end", "status": "failed", "error": {"type": s, "message": s}}
        )
    return "{" + s  # a bad line holding control characters


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(_events())
def test_fuzz_step_numbers_and_control_characters(tmp_path_factory, events) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path_factory.mktemp("truth")
    lines = [_start(host="h\x1b[2J")] + [_line(*e) for e in events]
    lines.append(encode(RunEnd(status="failed", error={"type": "E\x07", "message": "m\x00\x1b"})))
    (run / "rank0.jsonl").write_text("\n".join(x.rstrip("\n") for x in lines) + "\n")
    want = _expected(events)
    mp = pytest.MonkeyPatch()
    try:
        steps = {s for s, _ in _all_paths(run, mp)}
    finally:
        mp.undo()
    assert steps == {want}
    snap = RunSource(run, use_index=False).load().snapshot()
    text = summary_text(snap).plain
    assert not any(c in text for c in "\x00\x07\x1b\x08\r\x7f\u009b")
    json.dumps(summary_dict(snap), allow_nan=False)


def test_step_record_type_refuses_non_positive_numbers() -> None:
    from stagewatch.records import RecordError, parse

    with pytest.raises(RecordError, match="step"):
        parse(_step(0))
    assert isinstance(parse(_step(MAX_INT - 1)), Step)


# --------------------------------------------------------------------------- item 3


def _replay_app(run: Path):  # type: ignore[no-untyped-def]
    from tui.view.app import MonitorApp

    src = ReplaySource(run, playing=False, speed=10.0, use_index=False)
    return src, MonitorApp(src)


def test_keys_do_not_pass_through_the_help_screen_into_the_replay(tmp_path: Path) -> None:
    import asyncio

    from tui.testing import write_run
    from tui.view.widgets.help import HelpScreen

    run = write_run(tmp_path, steps=30, status=None)
    src, app = _replay_app(run)

    async def go() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(100):
                await pilot.pause()
                if app.world is not None:
                    break
            await pilot.press("right", "right")
            for _ in range(100):
                await pilot.pause()
                if src.position == 2:
                    break
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("right", "left", "space", "end", "home", "plus")
            for _ in range(10):
                await pilot.pause()
            assert src.position == 2 and not src.playing and src.speed == 10.0
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, HelpScreen)
            await pilot.press("right")
            for _ in range(100):
                await pilot.pause()
                if src.position == 3:
                    break
            assert src.position == 3
            await asyncio.sleep(0.7)  # past the panels' gap: they show the newest snapshot
            for _ in range(5):
                await pilot.pause()
            head = app.query_one("#header").content.plain
            title = str(app.query_one("#tree-box").border_title)
            assert "step 3 " in head and "whole run (3 steps)" in head, head
            assert "whole run (3 steps)" in title, title

    asyncio.run(go())


# --------------------------------------------------------------------------- item 2


def _run_with_validation(root: Path, name: str, ranks: int = 1, steps: int = 40) -> Path:
    from tui.testing import start_line, step_records

    run = root / name
    run.mkdir(parents=True)
    for r in range(ranks):
        with open(run / f"rank{r}.jsonl", "w") as f:
            f.write(start_line(name, rank=r, world_size=ranks))
            for rec in step_records(steps, rank=r, n_regions=6):
                if rec.step % 10 == 0:  # validation and a checkpoint every 10th step
                    rec.regions["validation"] = (3000.0, 1)
                    rec.regions["checkpoint"] = (800.0, 1)
                    rec.wall_ms += 3800.0
                f.write(encode(rec))
    return run


def test_compare_figures_are_the_summarys(tmp_path: Path) -> None:
    from tui.report.compare import compare_paths, comparison_dict
    from tui.report.summary import open_run

    a = _run_with_validation(tmp_path, "a")
    b = _run_with_validation(tmp_path, "b")
    c = compare_paths([a, b])
    assert c.warnings == ()
    d = summary_dict(open_run(a))
    by_name = {r["name"]: r for r in [*d["regions"], d["unaccounted"]]}
    rows = comparison_dict(c)["regions"]
    assert {r["name"] for r in rows} == set(by_name)
    for r in rows:
        s = by_name[r["name"]]
        assert r["runs"][0]["ms"] == s["avg_ms"] and r["runs"][0]["share"] == s["share"], r
    val = next(r for r in rows if r["name"] == "validation")["runs"][0]
    assert val["share"] < 0.2 and val["ms"] == 3000.0  # not 3000 ms over one step's time
    assert comparison_dict(c)["step"]["runs"][0]["ms"] == d["step_ms"]["avg_ms"]


def test_compare_warns_when_runs_differ_in_shape(tmp_path: Path) -> None:
    from tui.report.compare import compare_paths, comparison_text

    a = _run_with_validation(tmp_path, "a", ranks=1, steps=40)
    b = _run_with_validation(tmp_path, "b", ranks=2, steps=30)
    c = compare_paths([a, b])
    text = comparison_text(c).plain
    assert any("world size: A 1, B 2" in w for w in c.warnings), c.warnings
    assert any("steps: A 40, B 30" in w for w in c.warnings), c.warnings
    assert "warning: the runs differ in world size" in text
    assert "samples/s (2 ranks)" in text


def test_compare_screen_has_help(tmp_path: Path) -> None:
    import asyncio

    from tui.report.compare import compare_paths
    from tui.view.widgets.compare import CompareApp, CompareScreen
    from tui.view.widgets.help import HelpScreen

    c = compare_paths([_run_with_validation(tmp_path, "a"), _run_with_validation(tmp_path, "b")])
    app = CompareApp(c)

    async def go() -> None:
        async with app.run_test(size=(120, 30)) as pilot:
            await pilot.pause()
            for key in ("question_mark", "f1"):
                await pilot.press(key)
                await pilot.pause()
                assert isinstance(app.screen, HelpScreen)
                assert "Close the comparison" in str(app.screen.table.columns[1]._cells)
                await pilot.press("escape")
                await pilot.pause()
                assert isinstance(app.screen, CompareScreen)

    asyncio.run(go())


# --------------------------------------------------------------------------- item 5

_HOSTILE = "x\x00\x07\x1b[31mR\x08\x7f\u009b[2J"
_RAW = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_IN_PATH = "\x07\x1b[31m\u009b"  # what a folder name can hold (no NUL, no /)


def _hostile_run(root: Path, name: str) -> Path:
    run = root / name
    run.mkdir(parents=True)
    body = [_start(host=_HOSTILE, device=_HOSTILE, gpu_name=_HOSTILE, config={_HOSTILE: _HOSTILE})]
    for i in range(1, 6):
        body.append(
            _step(
                i,
                regions={_HOSTILE: [4.0, 1], f"{_HOSTILE}/{_HOSTILE}": [2.0, 1]},
                scalars={_HOSTILE: 1.0},
                memory={_HOSTILE: 5},
            )
        )
    body.append("{" + _HOSTILE)
    body.append(json.dumps({"v": "1.0", "kind": "eval", "step": 5, "metrics": {_HOSTILE: 1.0}}))
    end = {"v": "1.0", "kind": "run_end", "status": "failed"}
    end["error"] = {"type": _HOSTILE, "message": _HOSTILE}  # type: ignore[assignment]
    body.append(json.dumps(end))
    (run / "rank0.jsonl").write_text("\n".join(body) + "\n")
    return run


def test_control_characters_never_reach_the_screen_raw(tmp_path: Path) -> None:
    import asyncio

    from tui.source.live import LiveSource
    from tui.view.app import MonitorApp
    from tui.view.widgets.tree import StageTree

    root = tmp_path / "logs"
    _hostile_run(root, f"20261126-120000-a{_IN_PATH}")
    app = MonitorApp(LiveSource(root, poll=True, interval=0.05, stale_after=1e9))

    def raw_on_screen() -> set[str]:
        return set(_RAW.findall(app.export_screenshot()))

    async def go() -> None:
        async with app.run_test(size=(160, 45)) as pilot:
            for _ in range(200):
                await pilot.pause(0.02)
                if app.world is not None and app.world.selected is not None:
                    break
            await asyncio.sleep(1.1)
            await pilot.pause()
            tree = app.query_one(StageTree)
            tree.move_cursor(tree.nodes_by_name[_HOSTILE])
            await pilot.pause()
            title = app.query_one("#ranks").border_title
            assert title is not None and "\\x1b" in str(title) and not _RAW.search(str(title))
            assert raw_on_screen() == set()
            # a new run whose folder name holds them: the notice names it escaped
            _hostile_run(root, f"20261126-130000-b{_IN_PATH}")
            for _ in range(200):
                await pilot.pause(0.02)
                if app._notifications:
                    break
            notes = [n.message for n in app._notifications]
            assert notes and all(not _RAW.search(str(m)) for m in notes), notes
            assert raw_on_screen() == set()
            await pilot.press("ctrl+p")
            await pilot.pause()
            await pilot.press(*"run")
            await pilot.pause()
            assert raw_on_screen() == set()

    asyncio.run(go())


@pytest.mark.parametrize(
    "argv",
    [
        ["summary", "{run}"],
        ["summary", "--json", "{run}"],
        ["summary", "{root}"],
        ["compare", "--text", "{run}", "{run}"],
        ["export", "--format", "csv", "{run}"],
        ["export", "--format", "chrome", "{run}"],
        ["summary", "{root}/no\x07such"],
    ],
)
def test_control_characters_never_reach_cli_lines_raw(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from tui.cli import main

    root = tmp_path / "logs"
    run = _hostile_run(root, f"20261126-120000-a{_IN_PATH}")
    try:
        main([a.format(run=run, root=root) for a in argv])
    except SystemExit:
        pass
    out, err = capsys.readouterr()
    assert out or err
    assert not _RAW.search(out.replace("\n", "")) and not _RAW.search(err.replace("\n", ""))


# --------------------------------------------------------------------------- item 8


def test_summary_of_a_log_root_is_its_newest_run_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tui.cli import main
    from tui.testing import write_run

    root = tmp_path / "logs"
    write_run(root, "20261126-120000-new-0001", steps=7, t0=2_000_000_000.0)
    write_run(root, "20261126-130000-old-0001", steps=3, t0=1_000_000_000.0)  # started first
    assert main(["summary", str(root)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("20261126-120000-new-0001") and "step 7/" in out
    assert "its newest run" in err and "20261126-120000-new-0001" in err
    assert main(["summary", "--json", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == "20261126-120000-new-0001"


def test_summary_depth_and_top(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tui.cli import main
    from tui.testing import write_run

    run = write_run(tmp_path, steps=5, n_regions=30)
    assert main(["summary", "--json", str(run)]) == 0
    every = json.loads(capsys.readouterr().out)["regions"]
    assert main(["summary", "--json", "--depth", "1", str(run)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in d["regions"]} == {r["name"] for r in every if r["depth"] == 0}
    assert d["regions_left_out"] == len(every) - len(d["regions"]) > 0
    assert main(["summary", "--json", "--top", "3", str(run)]) == 0
    top = json.loads(capsys.readouterr().out)["regions"]
    names = {r["name"] for r in top}
    biggest = sorted(every, key=lambda r: r["share"], reverse=True)[:3]
    assert {r["name"] for r in biggest} <= names
    assert all(r["parent"] is None or r["parent"] in names for r in top)  # the tree reads
    assert main(["summary", "--depth", "2", "--top", "4", str(run)]) == 0
    text = capsys.readouterr().out
    assert "more regions not shown" in text and "block" not in text
    with pytest.raises(SystemExit) as e:
        main(["summary", "--top", "0", str(run)])
    assert e.value.code == 2 and "--top: expected a whole number >= 1" in capsys.readouterr().err


def test_export_message_counts_steps_not_rank_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tui.cli import main
    from tui.testing import write_run

    run = write_run(tmp_path, steps=80, ranks=2, n_regions=3)
    assert main(["export", "--format", "csv", str(run), "-o", str(tmp_path / "x.csv")]) == 0
    err = capsys.readouterr().err
    assert "160 rows from 2 rank(s), 80 steps" in err, err
    assert main(["export", str(run), "-o", str(tmp_path / "x.json")]) == 0
    assert "from 2 rank(s), 80 steps" in capsys.readouterr().err


def test_export_keeps_the_steps_the_reader_keeps(tmp_path: Path) -> None:
    import csv
    import io

    from tui.report.export import write_chrome, write_csv

    lines = [_start(), *(_step(i, 10.0) for i in range(1, 9)), _step(-1), _start(5)]
    lines += [_step(6, 30.0), _step(7, 30.0), _step(3, 50.0), _step(10**11)]
    run = _write(tmp_path, lines)
    snap = RunSource(run, use_index=False).load().snapshot()
    buf = io.StringIO()
    stats = write_csv(run, buf)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert sorted(int(r["step"]) for r in rows) == [1, 2, 3, 4, 5, 6, 7, 10**11]
    assert stats.steps == snap.wall.steps == 8
    assert {r["step"]: float(r["wall_ms"]) for r in rows}["3"] == 50.0  # the newest record
    assert write_chrome(run, io.StringIO()).steps == 8


def test_steps_after_a_far_jump_stay_one_run_each(tmp_path: Path) -> None:
    s = StepSet()
    s.add_increasing([1, 2, 3])
    s.add(10**11)
    for n in range(4, 5000):
        assert n not in s
        s.add(n)
    assert len(s.runs) == 3 and 4999 in s and 5000 not in s


def test_a_text_logs_last_block_repeating_a_step_is_kept_once(tmp_path: Path) -> None:
    from tui.testing import text_log_block

    body = "".join(text_log_block(s, [("Forward", 5.0, [])], 5.0) for s in (1, 2, 3))
    body += "Step 2\nForward : 9.00ms\n"  # the last block, no Total line: a newer step 2
    p = tmp_path / "timing_rank0.log"
    p.write_text(body)
    snap = RunSource(p, use_index=False).load().snapshot()
    assert snap.wall.steps == 3 and snap.wall.max == 9.0
    rp = ReplaySource(p, playing=False, use_index=False)
    rp.seek(math.inf)
    s2 = rp.build().selected
    assert s2 is not None and s2.wall.steps == 3 and s2.wall.max == 9.0


def test_compare_tells_samples_per_step_of_runs_without_a_config(tmp_path: Path) -> None:
    from tui.report.compare import compare_paths
    from tui.testing import write_run

    a = write_run(tmp_path / "a", ranks=2, straggler=1)  # a slow rank: not another batch size
    b = write_run(tmp_path / "b", ranks=2)
    for run in (a, b):
        p = run / "rank0.jsonl"
        p.write_text(p.read_text().replace('"config":{"TRAIN":{"BATCH_SIZE":1}},', ""))
        assert "BATCH_SIZE" not in p.read_text()
    c = compare_paths([a, b])
    assert c.warnings == ()
    assert [r.batch for r in c.runs] == [1.0, 1.0] and c.warnings == ()


def test_replay_header_names_the_span_the_panels_show_while_playing(tmp_path: Path) -> None:
    """The header moves with every snapshot while the panels redraw at most twice a second:
    its span label must still name the steps the tree's figures are of (issue: the header
    said "whole run (26 steps)" over a tree titled 25 steps)."""
    import asyncio
    import re

    from tui.testing import write_run

    run = write_run(tmp_path, steps=200, status=None)
    _src, app = _replay_app(run)
    span = re.compile(r"whole run \((\d+) steps?\)")

    async def go() -> None:
        async with app.run_test(size=(160, 45)) as pilot:
            for _ in range(100):
                await pilot.pause()
                if app.world is not None:
                    break
            await pilot.press("space")  # play, 10 steps/s: the header runs ahead of the panels
            seen = 0
            for _ in range(30):
                await asyncio.sleep(0.05)
                await pilot.pause()
                head = span.search(app.query_one("#header").content.plain)
                title = span.search(str(app.query_one("#tree-box").border_title))
                if head and title:
                    seen += 1
                    assert head.group(1) == title.group(1), (head.group(0), title.group(0))
            assert seen

    asyncio.run(go())
