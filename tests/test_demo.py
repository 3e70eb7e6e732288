"""``trainer demo`` without a terminal (CI): trains in the background, prints the summary.

The training is replaced by a small stand-in that writes a real run through the timing core,
so the orchestration (start, wait for the run, follow the output, stop, summary) is tested in
seconds; the terminal path (monitor, quit, clean stop) is exercised by hand in tmux.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from stagewatch.errors import UsageError
from trainer.commands import demo

TRAIN_COMMAND = demo.train_command  # the real one (the fixture below replaces it)

FAKE = textwrap.dedent(
    """
    import signal, sys, time
    from stagewatch.timing import TimingLogger, set_global_timing_logger, timed
    root, steps, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "crash":
        print("ConfigError: DATA.CROP_SIZE: bad", flush=True)
        sys.exit(2)
    stop = []
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    log = TimingLogger(root, enable_console=False, enable_file=False, run_name="vrt_spike_tiny",
                       config={"TRAIN": {"BATCH_SIZE": 2}}, total_steps=steps, samples_per_step=2)
    set_global_timing_logger(log)
    log.mark_step_start()
    for s in range(1, steps + 1):
        with timed("forward"):
            time.sleep(0.01)
        with timed("backward"):
            time.sleep(0.02)
        log.step(samples=2, scalars={"loss": 1.0 / s})
        print(f"step {s}/{steps}", flush=True)
        if stop:
            log.close("interrupted")
            sys.exit(130)
    log.close("completed")
    """
)


def _args(tmp: Path, **kw: object) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    a = p.parse_args(["--log-dir", str(tmp / "runs" / "demo"), "--no-monitor"])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


@pytest.fixture()
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE)
    mode: dict[str, object] = {"m": "ok"}

    def command(
        cfg: str, root: Path, steps: int | None, threads: int = 1, minutes: float | None = None
    ) -> list[str]:
        mode["minutes"] = minutes
        return [sys.executable, str(script), str(root), str(steps or 50), mode["m"]]

    monkeypatch.setattr(demo, "train_command", command)
    return mode


def test_no_terminal_trains_then_prints_the_summary(tmp_path: Path, fake, capfd) -> None:  # type: ignore[no-untyped-def]
    assert demo.run(_args(tmp_path)) == 0
    out, err = capfd.readouterr()  # the summary comes from the `tui` command's own process
    assert "finished  step 5/5" in out and "backward" in out  # `tui summary` of the run
    assert "step 5/5" in err and "run completed" in err  # the training's own output, followed
    assert (tmp_path / "runs" / "demo-train.log").read_text().count("step ") == 5


def test_training_that_dies_early_is_reported(tmp_path: Path, fake, capsys) -> None:  # type: ignore[no-untyped-def]
    fake["m"] = "crash"
    assert demo.run(_args(tmp_path)) == 2
    assert "ConfigError: DATA.CROP_SIZE: bad" in capsys.readouterr().err


def test_stop_is_clean(tmp_path: Path, fake) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "runs" / "demo"
    root.mkdir(parents=True)
    proc = demo._start("cfg.yaml", root, 10_000, tmp_path / "train.log")
    run = demo._wait_for_run(proc, root, set(), tmp_path / "train.log")
    assert run is not None
    time.sleep(0.3)
    t0 = time.monotonic()
    demo._stop(proc)
    assert time.monotonic() - t0 < 10 and proc.returncode == 130
    assert demo._end_status(run) == "interrupted"


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--steps"):
        demo.run(_args(tmp_path, steps=0))
    with pytest.raises(UsageError, match="config not found"):
        demo.run(_args(tmp_path, cfg=str(tmp_path / "nope.yaml")))
    r = subprocess.run(
        [sys.executable, "-m", "trainer", "demo", "--steps", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_a_training_that_ends_between_two_looks_is_still_found(
    tmp_path: Path, fake, monkeypatch, capfd
) -> None:  # type: ignore[no-untyped-def]
    # the race of a loaded machine: the 5 fast steps are done before the first look sees
    # the run; the demo must still find it and print the summary
    started: list[subprocess.Popen[bytes]] = []
    real_start = demo._start

    def start(*a, **kw):  # type: ignore[no-untyped-def]
        p = real_start(*a, **kw)
        started.append(p)
        return p

    def sleep(_s: float) -> None:
        if started:
            started[-1].wait(60)  # the training ends while the demo sleeps

    monkeypatch.setattr(demo, "_start", start)
    monkeypatch.setattr(
        demo,
        "_runs",
        lambda root, real=demo._runs: (
            real(root) if started and started[-1].poll() is not None else set()
        ),
    )
    monkeypatch.setattr(demo, "time", types.SimpleNamespace(sleep=sleep, monotonic=time.monotonic))
    assert demo.run(_args(tmp_path)) == 0
    out, err = capfd.readouterr()
    assert "finished  step 5/5" in out and "stopped before writing a run" not in err


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_in_the_demo_stops_the_training_interrupted(
    tmp_path: Path, fake, monkeypatch, capsys, how
) -> None:  # type: ignore[no-untyped-def]
    def follow(proc: subprocess.Popen[bytes], log_file: Path) -> None:
        while "step 2/" not in (log_file.read_text() if log_file.exists() else ""):
            time.sleep(0.05)
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)  # the demo's handler turns it into a clean stop
            time.sleep(5)
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_follow", follow)
    before = signal.getsignal(signal.SIGTERM)
    assert demo.run(_args(tmp_path, steps=10_000)) == 0
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored
    err = capsys.readouterr().err
    assert "run interrupted" in err
    runs = list((tmp_path / "runs" / "demo").iterdir())
    assert len(runs) == 1 and demo._end_status(runs[0]) == "interrupted"


def test_hints_work_in_a_fresh_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    monkeypatch.setenv("PATH", "/nonexistent")  # a shell where the environment is not activated
    cmd = demo.tui_command()
    script = Path(sys.executable).parent / "tui"
    if script.exists():
        assert cmd != "tui" and os.path.samefile(cmd, script)
    else:
        assert cmd == "tui"
    assert demo.train_command("c.yaml", Path("r"), 3)[-4:] == [
        "--set",
        "TRAIN.THREADS=1",
        "--set",
        "TRAIN.MAX_STEPS=3",
    ]


def test_on_a_terminal_the_demo_trains_for_minutes_not_150_steps(
    tmp_path: Path, fake, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    # issue 20: the tiny demo's 150 steps ended in ~15 s, before anyone looked; on a terminal
    # it now trains about 3 minutes (or until q), validating and checkpointing on the way
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    seen: list[tuple[str, ...]] = []
    monkeypatch.setattr(demo, "_monitor", lambda *a: seen.append(a) or 0)  # q at once
    a = _args(tmp_path, no_monitor=False)
    assert demo.run(a) == 0
    assert fake["minutes"] == demo.DEMO_MINUTES == 3.0 and seen[0][0] == "watch"
    cmd = TRAIN_COMMAND("c.yaml", tmp_path, None, 1, 3.0)
    sets = [cmd[i + 1] for i, x in enumerate(cmd) if x == "--set"]
    assert "TRAIN.MAX_MINUTES=3" in sets
    assert f"TRAIN.MAX_STEPS={demo.DEMO_STEPS}" in sets  # the clock ends it, not the config's 150
    # --steps given: those steps, no time limit; no terminal: 5 steps, no time limit
    assert "TRAIN.MAX_MINUTES" not in " ".join(TRAIN_COMMAND("c", tmp_path, 7, 1, None))
    with pytest.raises(UsageError, match="--minutes"):
        demo.run(_args(tmp_path, minutes=0.0))


@pytest.mark.parametrize("width", [20, 40, 80, 200])
def test_the_startup_spinner_fits_the_terminal_so_it_redraws_in_place(width: int) -> None:
    # at 80 columns the old line (~100 cells) wrapped and every redraw printed a new copy
    line = demo.spinner_line("|", 12.3, width)
    assert line.startswith("\r\x1b[K") and "\n" not in line
    visible = line[len("\r\x1b[K") :]
    assert len(visible) <= width - 1
    assert visible.startswith("| starting the tiny training (12 s"[: width - 2])
    if width >= 200:
        assert visible.endswith("synthetic clips)")
