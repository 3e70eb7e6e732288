"""Robustness of the writers: IO errors, kill -9, SIGTERM, interpreter exit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

import stagewatch.timing.logger as L
from stagewatch import records as R
from stagewatch.timing import (
    TimingLogger,
    TimingWarning,
    lifecycle,
    set_global_timing_logger,
    timed,
)
from stagewatch.timing.jsonl import LineFile

ROOT = Path(__file__).resolve().parent.parent


def run_steps(lg: TimingLogger, n: int) -> None:
    for _ in range(n):
        with lg.region("forward"):
            pass
        lg.step()


def timing_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, TimingWarning)]


def test_unwritable_log_root_warns_once_and_training_goes_on(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log root should be")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        lg = TimingLogger(
            blocker / "logs",
            enable_console=False,
            enable_file=False,
            file_flush_interval=1,
            handle_sigterm=False,
        )
        set_global_timing_logger(lg)
        run_steps(lg, 20)
        lg.close()
    msgs = timing_warnings(rec)
    assert len(msgs) == 1 and "cannot write" in msgs[0] and "rank0.jsonl" in msgs[0]
    assert lg.get_summary()["forward"]["count"] == 20  # statistics still work


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_permission_denied_folder(tmp_path):
    root = tmp_path / "logs"
    root.mkdir()
    root.chmod(0)
    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            lg = TimingLogger(root, enable_console=False, enable_file=False, handle_sigterm=False)
            run_steps(lg, 5)
            lg.close()
    finally:
        root.chmod(0o755)
    assert len(timing_warnings(rec)) == 1


def test_folder_removed_mid_run(tmp_path):
    lg = TimingLogger(tmp_path, enable_console=False, file_flush_interval=1, handle_sigterm=False)
    run_steps(lg, 3)
    shutil.rmtree(lg.run_dir)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        run_steps(lg, 50)
        lg.close()
    msgs = timing_warnings(rec)
    # one warning per file (records and text log), never one per step
    assert len(msgs) == 2, msgs
    assert all("removed" in m for m in msgs)
    assert not Path(lg.run_dir).exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_warns_once():
    f = LineFile("/dev/full")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for i in range(10):
            f.write(f"line {i}\n")
            f.flush()
        f.close()
    msgs = timing_warnings(rec)
    assert len(msgs) == 1 and "No space left" in msgs[0]
    assert f.disabled


WRITER = textwrap.dedent(
    """
    import sys, time
    from stagewatch.timing import TimingLogger, set_global_timing_logger, timed, log_timing
    lg = TimingLogger(sys.argv[1], enable_console=False, file_flush_interval=int(sys.argv[2]),
                      run_id="victim")
    set_global_timing_logger(lg)
    n = int(sys.argv[3])
    for i in range(n if n > 0 else 10**9):
        with timed("forward"):
            for k in range(40):
                log_timing(f"forward/block{k:02d}/with_a_long_name_to_make_lines_long", 0.5)
        lg.step(scalars={"loss": 1.0 / (i + 1)})
    print("ready", flush=True)
    time.sleep(60)
    """
)


def start_writer(tmp_path: Path, flush: int, steps: int) -> subprocess.Popen[str]:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "logs"), str(flush), str(steps)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_leaves_only_valid_complete_lines(tmp_path):
    proc = start_writer(tmp_path, flush=1, steps=0)
    path = tmp_path / "logs" / "victim" / "rank0.jsonl"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 200_000:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # tail: b"" or a partial last line
    assert len(complete) > 10
    for line in complete:
        R.decode(line)  # every complete line is a valid record
    if tail:
        with pytest.raises(R.RecordError):
            R.decode(tail)
    steps = [json.loads(x)["step"] for x in complete[1:]]
    assert steps == list(range(1, len(steps) + 1))


def test_sigterm_flushes_and_still_terminates(tmp_path):
    proc = start_writer(tmp_path, flush=1000, steps=25)  # nothing flushed by interval
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=20)
    assert rc == -signal.SIGTERM  # default behaviour kept: the process dies by SIGTERM
    path = tmp_path / "logs" / "victim" / "rank0.jsonl"
    recs = [R.decode(x) for x in path.read_text().splitlines()]
    assert [r.step for r in recs if isinstance(r, R.Step)] == list(range(1, 26))
    assert isinstance(recs[-1], R.RunEnd) and recs[-1].status == "interrupted"


def test_sigterm_chains_a_previous_handler(tmp_path):
    code = textwrap.dedent(
        f"""
        import signal, sys, time
        from stagewatch.timing import TimingLogger
        stop = []
        signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))  # the trainer's own
        lg = TimingLogger({str(tmp_path)!r}, enable_console=False, file_flush_interval=1000,
                          run_id="chained")
        print("ready", flush=True)
        while not stop:
            with lg.region("forward"):
                time.sleep(0.001)
            lg.step()
        n = lg.step_count
        lg.close("interrupted")
        print(n, flush=True)
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
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    n = int(out.split()[-1])
    recs = [R.decode(x) for x in (tmp_path / "chained" / "rank0.jsonl").read_text().splitlines()]
    assert len([r for r in recs if isinstance(r, R.Step)]) == n > 0
    assert recs[-1].status == "interrupted"


@pytest.mark.parametrize(
    "tail, status, error",
    [
        ("pass", "completed", None),
        ("raise ValueError('bad batch')", "failed", "ValueError"),
        ("raise KeyboardInterrupt", "interrupted", None),
    ],
)
def test_interpreter_exit_flushes_and_ends_the_run(tmp_path, tail, status, error):
    code = (
        "from stagewatch.timing import TimingLogger\n"
        f"lg = TimingLogger({str(tmp_path)!r}, enable_console=False, file_flush_interval=1000,"
        " run_id='atexit')\n"
        "for _ in range(7):\n"
        "    with lg.region('forward'): pass\n"
        "    lg.step()\n"
        f"{tail}\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    recs = [R.decode(x) for x in (tmp_path / "atexit" / "rank0.jsonl").read_text().splitlines()]
    assert len([r for r in recs if isinstance(r, R.Step)]) == 7
    end = recs[-1]
    assert isinstance(end, R.RunEnd) and (end.status, end.error_type) == (status, error)


@pytest.mark.parametrize("world", [2, 1])
def test_a_distributed_process_lets_its_threads_take_the_gil_at_exit(tmp_path, world):
    # A collective's worker thread that asks for the GIL once the interpreter finalizes
    # aborts the process (pytorch/pytorch#179291). Stand-in: a thread woken by the last
    # atexit handler before ours, which needs the GIL to record that it ran.
    code = textwrap.dedent(
        f"""
        import atexit, pathlib, threading
        from stagewatch.timing import TimingLogger, lifecycle
        lg = TimingLogger({str(tmp_path)!r}, enable_console=False, rank=0, world_size={world})
        go = threading.Event()
        def worker():
            go.wait()
            pathlib.Path({str(tmp_path / "ran")!r}).write_text("ran")
        threading.Thread(target=worker, daemon=True).start()
        atexit.register(go.set)
        print(lifecycle._distributed)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == str(world > 1)
    if world > 1:
        assert (tmp_path / "ran").read_text() == "ran"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_children_never_write_to_the_parents_run(tmp_path):
    lg = TimingLogger(tmp_path, enable_console=False, file_flush_interval=1000, run_id="fork")
    run_steps(lg, 3)  # buffered, not yet written
    pid = os.fork()
    if pid == 0:  # a DataLoader-like worker: flushes, exits through atexit, gets SIGTERM
        try:
            run_steps(lg, 2)
            lg.flush()
            lifecycle._close_all_at_exit()
            lg._sigterm(signal.SIGTERM, None)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    run_steps(lg, 1)
    lg.close()
    recs = [R.decode(x) for x in (tmp_path / "fork" / "rank0.jsonl").read_text().splitlines()]
    assert [type(r).__name__ for r in recs] == ["RunStart"] + ["Step"] * 4 + ["RunEnd"]
    assert [r.step for r in recs[1:5]] == [1, 2, 3, 4]


def test_flush_interval_and_time_based_flush(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "FLUSH_SECONDS", 1e9)  # however slow this machine is today
    lg = TimingLogger(
        tmp_path,
        enable_console=False,
        enable_file=False,
        file_flush_interval=5,
        handle_sigterm=False,
    )
    path = Path(lg.run_dir) / "rank0.jsonl"

    def lines() -> int:
        return len(path.read_text().splitlines())

    assert lines() == 1  # run_start is on disk at once
    run_steps(lg, 4)
    assert lines() == 1
    run_steps(lg, 1)
    assert lines() == 6
    monkeypatch.setattr(L, "FLUSH_SECONDS", 0.0)  # a slow run: flushed by time
    run_steps(lg, 1)
    assert lines() == 7
    lg.close()
    with timed("after-close"):
        pass
