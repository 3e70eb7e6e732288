"""The record writer behind step(): deferred processing, the text log's cached formatter, the
background thread's bounded queue (drops counted in the records and shown by the monitor),
and flushing at fork and at SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from stagewatch import records as R
from stagewatch.timing import TimingLogger, TimingWarning
from stagewatch.timing.sinks import Sink
from stagewatch.timing.stats import RegionStats
from stagewatch.timing.text_log import StepFormatter, format_step
from tui.report.summary import open_run, summary_dict, summary_text
from tui.source.decode import decode_batch

ROOT = Path(__file__).resolve().parent.parent


def make(tmp_path: Path, **kw) -> TimingLogger:  # type: ignore[no-untyped-def]
    kw.setdefault("enable_console", False)
    kw.setdefault("collect_memory", False)
    kw.setdefault("handle_sigterm", False)
    return TimingLogger(tmp_path, **kw)


def jsonl(lg: TimingLogger) -> list[R.Record]:
    assert lg.run_dir is not None
    path = Path(lg.run_dir) / R.rank_file_name(lg.rank)
    return [R.decode(x) for x in path.read_text().splitlines()]


def steps(lg: TimingLogger, n: int) -> None:
    for _ in range(n):
        with lg.region("forward"), lg.region("vrt"):
            pass
        lg.step()


REGION_SETS = [
    {"forward": (30.0, 1), "forward/vrt": (20.0, 1), "backward": (50.0, 3), "data": (5.0, 1)},
    {"net/block": (15.0, 2)},  # an untimed parent
    {"a": (1.0, 1)},  # one region
    {},  # none
    {"100% done": (2.0, 1), "x/50%": (1.0, 1)},  # '%' in names is not a format
    {"a": (60.0, 1), "b": (70.0, 1)},  # overlapping top-level regions (e.g. threads)
]


@pytest.mark.parametrize("regions", REGION_SETS)
def test_cached_formatter_writes_what_format_step_writes(regions):
    stats = RegionStats()
    fmt = StepFormatter(stats)
    for step, wall in ((1, 100.0), (2, 120.0), (3, 0.0)):
        stats.add_step(regions)
        un = R.unaccounted_ms(wall, regions)

        def avg(name: str) -> float | None:
            s = stats.get(name)
            return s.avg if s is not None else None

        # the same values every step: the running order is this step's order
        want = format_step(step, wall, regions, avg)
        assert fmt.format(step, wall, regions, un) == want
        # ... and from the writer's lists of the values (in the record's order)
        parts = (tuple(regions), [v[0] for v in regions.values()], [v[1] for v in regions.values()])
        assert fmt.format(step, wall, regions, un, parts) == want


def test_the_jsonl_sink_rounds_in_place_after_every_other_output(tmp_path, monkeypatch):
    """The JSONL sink rounds a record's values where they are: it is handed each record
    last, so the text log, the panel and the statistics see the values as measured."""
    import io

    from stagewatch.timing.sinks import JsonlSink

    lg = make(tmp_path, enable_console=True, console_stream=io.StringIO(), run_id="r")
    sinks = lg._writer.sinks
    assert isinstance(sinks[-1], JsonlSink) and len(sinks) == 3
    x = 0.12504999  # 0.1250 written: "0.12" from it, "0.13" from x
    for _ in range(3):
        lg.log("a", x)
        lg.step()
    lg.close()
    step = next(r for r in jsonl(lg) if isinstance(r, R.Step))
    assert step.regions["a"][0] == 0.125
    text = (Path(lg.run_dir) / R.text_log_name(0)).read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("a ")]
    assert len(lines) == 3 and all(ln.split(":")[1].startswith("      0.13ms") for ln in lines)
    assert lg.get_summary()["a"]["total"] == 3 * x


def test_the_writer_fast_path_keeps_what_the_general_path_keeps(tmp_path, monkeypatch):
    """Statistics and unaccounted time are the same whether a record takes the cached
    region-set path or the general one (a name beyond the limits, left out)."""
    import itertools
    import random

    from stagewatch.timing import regions as regions_mod

    rnd = random.Random(3)
    sets = [("a", "a/b", "c"), ("c", "a"), ("a", "a/b", "c", "d/e")]
    out = {}
    for name, bad_every in (("fast", 0), ("mixed", 3)):
        ticks = itertools.count()
        monkeypatch.setattr(regions_mod, "_perf", lambda t=ticks: next(t) * 0.00731)
        lg = make(tmp_path, run_id=name, file_flush_interval=5)
        lg._writer._warn_once = lambda *a: None
        for i in range(40):
            for r in sets[i % 3]:
                lg.log(r, rnd.uniform(0.0, 9.0) if r != "c" else 1.5)
            if bad_every and i % bad_every == 0:
                lg._cur["z" * (R.MAX_NAME_CHARS + 1)] = [1.0, 1]  # beyond the limits: left out
            if bad_every and i % bad_every == 1:
                lg._cur[f"nan{i}"] = [float("nan"), 1]  # a value beyond them: left out
            lg.step()
        out[name] = (lg.get_summary(), lg.get_step_summary())
        lg.close()
        rnd = random.Random(3)
    for k in set(out["fast"][0]) | set(out["mixed"][0]):
        assert out["fast"][0].get(k) == out["mixed"][0].get(k), k
    assert out["fast"][1] == out["mixed"][1]


def test_cached_formatter_names_without_statistics_take_the_long_way():
    stats = RegionStats(max_names=1)  # "b" is folded into "(other)": no average of its own
    fmt = StepFormatter(stats)
    regions = {"a": (1.0, 1), "b": (2.0, 1)}
    stats.add_step(regions)
    block = fmt.format(1, 10.0, regions, 7.0)
    assert block == format_step(1, 10.0, regions, lambda n: stats.get(n) and stats.get(n).avg)
    assert "[avg:" not in block.splitlines()[3]  # b's line (largest first)


def test_step_only_queues_and_the_flush_writes(tmp_path):
    lg = make(tmp_path, file_flush_interval=1000)
    steps(lg, 5)
    assert len(lg._writer) == 5  # queued: nothing formatted or encoded yet
    assert lg.get_summary()["forward"]["count"] == 5  # summaries see every step
    lg.flush()
    assert len(lg._writer) == 0
    assert [r.step for r in jsonl(lg) if isinstance(r, R.Step)] == [1, 2, 3, 4, 5]
    text = (Path(lg.run_dir) / R.text_log_name(0)).read_text()
    assert text.count("\nStep ") == 5
    lg.close()


def test_background_writer_loses_nothing(tmp_path):
    lg = make(tmp_path, background_writer=True, file_flush_interval=7)
    assert lg._writer.background
    steps(lg, 300)
    lg.log_eval(300, {"psnr": 30.0})
    lg.close()
    recs = jsonl(lg)
    assert [r.step for r in recs if isinstance(r, R.Step)] == list(range(1, 301))
    assert isinstance(recs[-2], R.Eval) and isinstance(recs[-1], R.RunEnd)
    assert not any(getattr(r, "dropped", None) for r in recs)
    assert (Path(lg.run_dir) / R.text_log_name(0)).read_text().count("\nStep ") == 300


def test_full_queue_drops_counts_in_the_next_record_and_warns_once(tmp_path):
    lg = make(tmp_path, background_writer=True, writer_queue=4, enable_file=False, run_id="d")
    w = lg._writer
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with w._lock:  # the writer is stuck (a slow disk): the loop must not wait for it
            steps(lg, 10)
            assert len(w) == 4 and w.dropped == 6
        lg.flush()
        steps(lg, 1)
        lg.close()
    msgs = [str(c.message) for c in caught if issubclass(c.category, TimingWarning)]
    assert len(msgs) == 1 and "dropped" in msgs[0]
    recs = jsonl(lg)
    got = [(r.step, r.dropped or None) for r in recs if isinstance(r, R.Step)]
    assert got == [(1, None), (2, None), (3, None), (4, None), (11, 6)]
    assert isinstance(recs[-1], R.RunEnd) and recs[-1].steps == 11
    # the monitor says so
    snap = open_run(lg.run_dir)
    assert [f.dropped for f in snap.files] == [6]
    assert summary_dict(snap)["files"][0]["dropped"] == 6
    assert "records the writer dropped in" in summary_text(snap).plain
    # on both decode paths
    lines = (Path(lg.run_dir) / "rank0.jsonl").read_bytes().splitlines()
    assert decode_batch(lines, 0, None, blocks=False).dropped == 6


def test_drops_just_before_the_end_are_counted_in_run_end(tmp_path):
    lg = make(tmp_path, background_writer=True, writer_queue=2, enable_file=False)
    with pytest.warns(TimingWarning, match="records are dropped"), lg._writer._lock:
        steps(lg, 5)
    lg.close()
    end = jsonl(lg)[-1]
    assert isinstance(end, R.RunEnd) and end.dropped == 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("background", [False, True])
def test_fork_writes_what_is_queued_first(tmp_path, background):
    lg = make(tmp_path, file_flush_interval=1000, background_writer=background, run_id="f")
    steps(lg, 3)
    assert [type(r) for r in jsonl(lg)] == [R.RunStart]  # queued only
    pid = os.fork()
    if pid == 0:
        try:  # the child has no writer thread: it processes inline, and never writes
            steps(lg, 2)
            lg.flush()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert [r.step for r in jsonl(lg) if isinstance(r, R.Step)] == [1, 2, 3]
    steps(lg, 1)
    lg.close()
    assert [r.step for r in jsonl(lg) if isinstance(r, R.Step)] == [1, 2, 3, 4]


def test_sigterm_writes_the_background_writers_queue(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys, time
        from stagewatch.timing import TimingLogger
        lg = TimingLogger({str(tmp_path)!r}, enable_console=False, file_flush_interval=1000,
                          run_id="term", background_writer=True)
        for _ in range(25):
            with lg.region("forward"):
                pass
            lg.step()
        print("ready", flush=True)
        time.sleep(30)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == -signal.SIGTERM
    recs = [R.decode(x) for x in (tmp_path / "term" / "rank0.jsonl").read_text().splitlines()]
    assert [r.step for r in recs if isinstance(r, R.Step)] == list(range(1, 26))
    assert isinstance(recs[-1], R.RunEnd) and recs[-1].status == "interrupted"


def test_a_signal_during_a_batch_waits_for_the_batch(tmp_path):
    calls: list[int] = []
    prev = signal.signal(signal.SIGTERM, lambda s, f: calls.append(len(lg._writer)))
    try:
        lg = TimingLogger(
            tmp_path,
            enable_console=False,
            enable_file=False,
            collect_memory=False,
            file_flush_interval=1000,
            run_id="sig",
        )
        hook = lg._sigterm
        assert hook is not None

        class Interrupting(Sink):
            def step(self, rec: R.Step, unaccounted_ms: float) -> None:
                if rec.step == 3:  # SIGTERM lands in the middle of the batch
                    hook(signal.SIGTERM, None)
                    assert calls == []  # not yet: the batch goes on first

        w = lg._writer
        w.sinks = (*w.sinks, Interrupting())
        steps(lg, 6)
        lg.flush()
        assert calls == [0]  # the trainer's handler ran once, after the batch
        lg.close()
    finally:
        signal.signal(signal.SIGTERM, prev)
    assert [r.step for r in jsonl(lg) if isinstance(r, R.Step)] == [1, 2, 3, 4, 5, 6]


def test_hotpath_benchmark_child_measures(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_hotpath", ROOT / "benchmarks" / "bench_hotpath.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.child(text=True, steps=60, background=False)
    assert res["median_us"] > 0 and res["p99_us"] >= res["p90_us"] >= 0
    assert res["cpu_us"] == res["cpu_us"] and res["dropped"] == 0
    parts = mod.breakdown(40)
    assert set(parts) == {"step", "core", "jsonl", "text", "float_ns"} and parts["text"] > 0
    res_all: dict = {o: {s: [res] for s in mod.SIDES} for o, _ in mod.OUTPUTS}
    res_all["parts"] = {"after": [parts]}
    md = mod.report(res_all, "base", 1, 60, 0.0)
    assert md.count("| JSONL") == 6 and "the text log" in md


def test_cached_order_follows_the_running_averages(monkeypatch):
    import stagewatch.timing.text_log as T

    monkeypatch.setattr(T, "REORDER_STEPS", 3)
    stats = RegionStats()
    fmt = StepFormatter(stats)

    def first_line(regions: dict) -> str:
        stats.add_step(regions)
        return fmt.format(1, 100.0, regions, 0.0).splitlines()[3]

    assert first_line({"a": (10.0, 1), "b": (1.0, 1)}).startswith("a ")
    for _ in range(2):  # b is now larger, but the order is kept for a few steps
        assert first_line({"a": (1.0, 1), "b": (90.0, 1)}).startswith("a ")
    assert first_line({"a": (1.0, 1), "b": (90.0, 1)}).startswith("b ")  # b's average leads
