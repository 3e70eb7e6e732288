"""Timing core under hostile use: threads, partial files, bad values, open regions, exits.

Each test is a regression test for a defect of issue 12 (it failed before the fix).
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

from stagewatch import records as R
from stagewatch.timing import TimingLogger, set_global_timing_logger, timed
from stagewatch.timing.jsonl import TimingWarning
from tui.source.decode import parse_line

ROOT = Path(__file__).resolve().parent.parent


def make(tmp_path: Path, **kw) -> TimingLogger:
    kw.setdefault("enable_console", False)
    kw.setdefault("enable_file", False)
    kw.setdefault("collect_memory", False)
    kw.setdefault("handle_sigterm", False)
    return TimingLogger(tmp_path, **kw)


def lines_of(lg: TimingLogger) -> list[str]:
    assert lg.run_dir is not None
    return (Path(lg.run_dir) / R.rank_file_name(lg.rank)).read_text().splitlines()


def records(lg: TimingLogger) -> list[R.Record]:
    return [R.decode(x) for x in lines_of(lg)]


def caught(fn) -> list[str]:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fn()
    return [str(x.message) for x in w if issubclass(x.category, TimingWarning)]


# --------------------------------------------------------------------------- threads


def test_log_eval_from_another_thread_loses_nothing(tmp_path):
    lg = make(tmp_path, file_flush_interval=1)  # a flush per step: the most chances to race
    n = 3000
    go = threading.Event()

    def evals() -> None:
        go.wait()
        for i in range(n):
            lg.log_eval(i, {"psnr": 1.0})

    t = threading.Thread(target=evals)
    t.start()
    go.set()
    steps = 0
    while t.is_alive() or steps < n:
        with lg.region("forward"):
            pass
        lg.step()
        steps += 1
    t.join()
    lg.close()
    recs = records(lg)
    assert len([r for r in recs if isinstance(r, R.Eval)]) == n
    assert [r.step for r in recs if isinstance(r, R.Step)] == list(range(1, steps + 1))


def test_two_threads_stepping_get_distinct_numbers_and_lose_no_step(tmp_path):
    lg = make(tmp_path, file_flush_interval=3)
    n = 2000
    barrier = threading.Barrier(2)

    def loop() -> None:
        barrier.wait()
        for _ in range(n):
            with lg.region("work"):
                pass
            lg.step(samples=1)

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lg.close()
    numbers = [r.step for r in records(lg) if isinstance(r, R.Step)]
    assert numbers == list(range(1, 2 * n + 1))
    end = records(lg)[-1]
    assert isinstance(end, R.RunEnd) and end.steps == 2 * n


# --------------------------------------------------------------------------- files


def test_appending_after_a_partial_line_starts_a_new_line(tmp_path):
    run = tmp_path / "resumed"
    run.mkdir()
    partial = '{"v":"1.0","kind":"step","step":56,"epo'
    (run / "rank0.jsonl").write_text(
        R.encode(R.RunStart(run_id="resumed", rank=0, world_size=1, time=1.0)) + partial
    )
    lg = make(tmp_path, run_id="resumed", start_step=50)
    lg.step()
    lg.close()
    lines = lines_of(lg)
    assert lines[1] == partial  # the partial line stays one (malformed) line
    rest = [R.decode(x) for x in lines[2:]]
    assert isinstance(rest[0], R.RunStart) and rest[0].start_step == 50
    assert isinstance(rest[1], R.Step) and rest[1].step == 51


# --------------------------------------------------------------------------- bad values


def test_hostile_values_never_raise_and_each_warns(tmp_path):
    cfg = {
        "lr": math.nan,
        "big": math.inf,
        3: "int key",
        ("a", 1): "tuple key",
        "deep": {"x": 10**400},
        "ok": 1.5,
    }
    msgs = caught(lambda: make(tmp_path, run_id="bad", config=cfg, total_steps=10**400))
    assert any("config" in m for m in msgs) and any("total_steps" in m for m in msgs)
    lg = make(tmp_path, run_id="bad2")
    set_global_timing_logger(lg)
    try:

        def hostile() -> None:
            with timed(None):  # type: ignore[arg-type]
                pass
            with timed(["unhashable"]):  # type: ignore[arg-type]
                pass
            with lg.region(42):  # type: ignore[arg-type]
                pass
            lg.end(lg.begin(None))  # type: ignore[arg-type]
            lg.log(b"bytes", 1.0)  # type: ignore[arg-type]
            lg.log("huge", 1e12)  # as long as 31 years: refused like NaN
            lg.step(
                scalars={"x": 10**400, "y": 1e305, 7: 1.0, "loss": 0.5, "nan": math.nan},
                memory={"rss": 10**30, "ok": 5},
                samples="many",
                epoch=math.inf,
            )
            lg.log_eval("last", {"psnr": 10**400, "ssim": 0.9})
            lg.log_eval(10**40, {"psnr": 1.0})

        msgs = caught(hostile)
    finally:
        set_global_timing_logger(None)
    lg.close()
    assert msgs and len(msgs) == len(set(msgs))
    assert any("region name must be a string" in m for m in msgs)
    start = records(make(tmp_path, run_id="bad"))[0]
    assert isinstance(start, R.RunStart)
    assert start.config == {
        "lr": None,
        "big": None,
        "3": "int key",
        "('a', 1)": "tuple key",
        "deep": {"x": None},
        "ok": 1.5,
    }
    assert start.total_steps is None
    recs = records(lg)
    step = next(r for r in recs if isinstance(r, R.Step))
    assert step.regions == {} and step.scalars == {"loss": 0.5}  # nan is written as null
    assert step.memory == {"ok": 5} and step.samples == 0 and step.epoch == 0
    evals = [r for r in recs if isinstance(r, R.Eval)]
    assert [(e.step, e.metrics) for e in evals] == [(1, {"ssim": 0.9}), (1, {"psnr": 1.0})]


def test_every_value_the_writer_accepts_the_reader_accepts(tmp_path):
    lg = make(tmp_path)
    big = R.MAX_MS * 0.99
    # the writer checks the limits when it writes (a flush point, here close), not in step()
    with pytest.warns(TimingWarning) as warned:
        lg.log("near_limit", big)  # accepted: must be read back
        lg.log("a" * (R.MAX_NAME_CHARS + 1), 1.0)  # name too long: dropped by the writer
        lg.step(scalars={"s": R.MAX_ABS_NUMBER * 0.5, "t": -1e299})
        lg.log("x", big)
        lg.log("y", big)  # together beyond the per-step limit: left out by the writer
        lg.step(memory={"peak": R.MAX_BYTES_VALUE - 1})
        lg.log_eval(2, {"m": 1e299})
        lg.close()
    said = " ".join(str(w.message) for w in warned)
    assert "beyond the record limits" in said and "sum to more than" in said
    rows = [parse_line(x) for x in lines_of(lg)]  # the monitor's parser: raises if it refuses
    steps = [r for r in rows if hasattr(r, "regions")]
    assert [tuple(s.regions) for s in steps] == [("near_limit",), ()]


def test_huge_config_is_left_out_but_the_run_is_recorded(tmp_path):
    msgs = caught(
        lambda: make(
            tmp_path, run_id="huge", config={"blob": "x" * (R.MAX_LINE_BYTES + 10)}
        ).close()
    )
    lines = (tmp_path / "huge" / "rank0.jsonl").read_text().splitlines()
    assert all(len(x) <= R.MAX_LINE_BYTES for x in lines)
    start = R.decode(lines[0])
    assert isinstance(start, R.RunStart) and start.config == {}
    assert any("too large" in m for m in msgs)


# --------------------------------------------------------------------------- open regions


def test_region_open_across_step_is_closed_there_once(tmp_path):
    lg = make(tmp_path)
    set_global_timing_logger(lg)
    try:

        def body() -> None:
            outer = timed("epoch")
            outer.__enter__()  # never closed before step(): a leak or a region around steps
            time.sleep(0.002)
            lg.step()
            with timed("forward"):
                time.sleep(0.001)
            lg.step()
            outer.__exit__(None, None, None)  # late exit: already charged, ignored
            lg.step()

        msgs = caught(body)
    finally:
        set_global_timing_logger(None)
    lg.close()
    steps = [r for r in records(lg) if isinstance(r, R.Step)]
    assert list(steps[0].regions) == ["epoch"]
    assert list(steps[1].regions) == ["forward"]  # not renamed "epoch/forward"
    assert steps[2].regions == {}
    for s in steps:
        assert all(ms <= s.wall_ms for ms, _ in s.regions.values())  # never over 100%
    assert len([m for m in msgs if "still open" in m]) == 1


# --------------------------------------------------------------------------- exits


def test_system_exit_in_a_with_block_ends_interrupted(tmp_path):
    with (
        pytest.raises(SystemExit),
        TimingLogger(tmp_path, run_id="exit", enable_console=False, handle_sigterm=False) as lg,
    ):
        lg.step()
        sys.exit(0)
    end = R.decode((tmp_path / "exit" / "rank0.jsonl").read_text().splitlines()[-1])
    assert isinstance(end, R.RunEnd) and end.status == "interrupted"


def test_own_sigterm_handler_calling_sys_exit_ends_interrupted(tmp_path):
    code = textwrap.dedent(
        f"""
        import signal, sys, time
        from stagewatch.timing import TimingLogger
        signal.signal(signal.SIGTERM, lambda s, f: sys.exit(0))  # the user's own handler
        lg = TimingLogger({str(tmp_path)!r}, enable_console=False, run_id="own")
        print("ready", flush=True)
        while True:
            with lg.region("forward"):
                time.sleep(0.001)
            lg.step()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    lines = (tmp_path / "own" / "rank0.jsonl").read_text().splitlines()
    end = json.loads(lines[-1])
    assert end["kind"] == "run_end" and end["status"] == "interrupted", err


def test_resume_before_the_last_written_step_says_which_steps_run_again(tmp_path):
    lg = make(tmp_path, run_id="again")
    for _ in range(56):
        lg.step()
    lg.flush()  # killed here (no close): the checkpoint was at 50
    msgs = caught(lambda: make(tmp_path, run_id="again", start_step=50).close())
    assert any("resuming at step 50: steps 51-56" in m for m in msgs), msgs
    starts = [r for r in records(lg) if isinstance(r, R.RunStart)]
    assert [s.start_step for s in starts] == [0, 50]


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_fork_while_another_thread_holds_the_locks_does_not_hang_the_child(tmp_path):
    import os

    lg = make(tmp_path, run_id="fork")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lg._io, lg._lock:
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: a DataLoader worker timing a region
        try:
            with lg.region("decode"):
                pass
            lg.step()
        finally:
            os._exit(0)
    release.set()
    t.join()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on a lock copied while held")
    assert os.waitstatus_to_exitcode(status) == 0
    lg.close()
