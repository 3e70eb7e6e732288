"""``trainer demo``: the tiny CPU training in the background with the monitor on it.

On a terminal: starts ``trainer train --cfg configs/deblur/vrt_spike_tiny.yaml`` (synthetic
data, CPU) in the background with its output in a log file, waits for its run folder, then
opens ``tui watch`` on the log root. It trains for ``--minutes`` (default 3, a time limit:
``TRAIN.MAX_MINUTES``), validating and checkpointing every 50 steps on the way, unless
``--steps`` is given. Quitting the monitor (``q``, Ctrl-C), Ctrl-C or SIGTERM
to the demo, stops the training cleanly: SIGINT, so it finishes the current step, writes a
checkpoint and ends its run ``interrupted``; a second SIGINT (after a grace period, or at
once on a second Ctrl-C) stops it at once, still ``interrupted``; SIGKILL last. The training
uses one torch thread (``--threads``): more only slow a small busy machine down.

Without a terminal (CI, pipes), or with ``--no-monitor``: trains a few steps in the
foreground and prints the run's summary (``tui summary``) instead of opening the screen.

``--synthetic`` (or ``--size``): no model and no torch: a loop shaped like a training step
(data, staged forward with a loop over blocks, loss, backward, optimizer) doing real CPU work
on small matrices, timed by the timing core in the foreground with its console panel.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from stagewatch.errors import UsageError
from stagewatch.records import RecordError, RunEnd, decode
from stagewatch.runs import run_folders
from stagewatch.timing import TimingLogger, log_timing, set_global_timing_logger, timed

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CFG = REPO / "configs" / "deblur" / "vrt_spike_tiny.yaml"
DEFAULT_ROOT = "runs/demo"
DEMO_MINUTES = 3.0  # on a terminal the demo trains this long, unless `q` comes first
# steps of a time-limited demo: more than 3 minutes take here (~0.1 s a step on 2 cores), so
# the clock ends it, while the learning rate's cosine still decays over a sane length
DEMO_STEPS = 3000
GRACE_S = 120.0  # a tiny step takes seconds; under heavy load tens of seconds
STAGES = ("stage1", "stage2", "stage3", "stage8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cfg",
        default=str(DEFAULT_CFG),
        metavar="FILE",
        help="training config (default: the tiny CPU config)",
    )
    parser.add_argument(
        "--log-dir",
        default=DEFAULT_ROOT,
        metavar="DIR",
        help=f"log root the run is written to and watched (default {DEFAULT_ROOT})",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps (default: the config's TRAIN.MAX_STEPS on a terminal, 5 without)",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help=f"train this long (TRAIN.MAX_MINUTES; default {DEMO_MINUTES:g} on a terminal "
        "when --steps is not given, so validations and checkpoints happen on screen; q stops "
        "it sooner)",
    )
    parser.add_argument(
        "--no-monitor",
        action="store_true",
        help="train in the foreground and print the summary (the default without a terminal)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch CPU threads of the training (TRAIN.THREADS; default 1)",
    )
    synth = parser.add_argument_group("torch-free synthetic workload (no model)")
    synth.add_argument(
        "--synthetic",
        action="store_true",
        help="time a CPU loop shaped like a training step instead of the model (no torch)",
    )
    synth.add_argument(
        "--size",
        type=int,
        default=None,
        help="matrix size of the synthetic work (default 24; implies --synthetic)",
    )
    synth.add_argument("--run-name", default="demo", help="name part of the synthetic run's id")
    synth.add_argument("--no-console", action="store_true", help="no live panel/lines (synthetic)")
    synth.add_argument("--seed", type=int, default=0)


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the demo process dies (Linux), so no training is orphaned."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def train_command(
    cfg: str, root: Path, steps: int | None, threads: int = 1, minutes: float | None = None
) -> list[str]:
    """The background training (the console panel off: its output goes to a file);
    ``minutes``: a time limit (TRAIN.MAX_MINUTES), the steps unbounded unless given."""
    cmd = [
        sys.executable,
        "-m",
        "trainer",
        "train",
        "--cfg",
        cfg,
        "--log-dir",
        str(root),
        "--set",
        "LOG.TIMING_CONSOLE=false",
        "--set",
        f"TRAIN.THREADS={threads}",
    ]
    if minutes is not None:
        cmd += ["--set", f"TRAIN.MAX_MINUTES={minutes:g}"]
        if steps is None:  # the clock ends it: validations and checkpoints go on till then
            cmd += ["--set", f"TRAIN.MAX_STEPS={DEMO_STEPS}", "--set", f"TRAIN.EPOCHS={DEMO_STEPS}"]
    if steps is not None:
        cmd += ["--set", f"TRAIN.MAX_STEPS={steps}"]
    return cmd


def tui_command() -> str:
    """How to call ``tui`` from a fresh shell: the environment's script when ``tui`` on the
    PATH is not it (the environment is not activated), as a path relative to here if short."""
    script = Path(sys.executable).parent / "tui"
    if not script.exists() or shutil.which("tui") == str(script):
        return "tui"
    with contextlib.suppress(ValueError):
        rel = os.path.relpath(script)
        if not rel.startswith(".."):
            return rel if os.sep in rel else f".{os.sep}{rel}"
    return str(script)


def _start(
    cfg: str,
    root: Path,
    steps: int | None,
    log_file: Path,
    threads: int = 1,
    minutes: float | None = None,
) -> subprocess.Popen[bytes]:
    cmd = train_command(cfg, root, steps, threads, minutes)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "wb") as out:
        # its own session: keys typed in the monitor never reach it as signals; we send them
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if os.name == "posix" else None,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def _runs(root: Path) -> set[str]:
    return {p.name for p in run_folders(root)}


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _width() -> int:
    return shutil.get_terminal_size((80, 24)).columns


def spinner_line(mark: str, elapsed: float, width: int) -> str:
    """The start-up line, redrawn in place: cut to the terminal's width (a line that wraps
    cannot be redrawn by ``\r``: each redraw would print another copy)."""
    text = (
        f"{mark} starting the tiny training ({elapsed:.0f} s: importing torch, building the "
        "model and the synthetic clips)"
    )
    room = max(1, width - 1)  # the last column would wrap on some terminals
    if len(text) > room:
        text = text[: max(0, room - 1)] + "…"
    return f"\r\x1b[K{text}"


def _wait_for_run(
    proc: subprocess.Popen[bytes], root: Path, before: set[str], log_file: Path
) -> Path | None:
    """The new run folder once its first record is written; None if the training died first."""
    t0 = time.monotonic()
    spin = "|/-\\"
    i = 0
    while True:
        # poll before looking, so a training that wrote its run and exited between two looks
        # (a fast one) is still found by the last look
        done = proc.poll() is not None
        for name in sorted(_runs(root) - before, reverse=True):
            f = root / name / "rank0.jsonl"
            if f.exists() and f.stat().st_size > 0:
                if sys.stderr.isatty():
                    sys.stderr.write("\r\x1b[K")
                return root / name
        if done:
            break
        if sys.stderr.isatty():
            sys.stderr.write(spinner_line(spin[i % 4], time.monotonic() - t0, _width()))
            sys.stderr.flush()
        i += 1
        time.sleep(0.25)
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
    return None


def _follow(proc: subprocess.Popen[bytes], log_file: Path) -> None:
    """Copy the training's output to stderr until it exits (CI logs show progress)."""
    pos = 0
    while True:
        done = proc.poll() is not None
        try:
            with open(log_file, "rb") as f:
                f.seek(pos)
                data = f.read()
        except OSError:
            data = b""
        if data:
            pos += len(data)
            sys.stderr.write(data.decode("utf-8", "replace"))
            sys.stderr.flush()
        if done:
            return
        time.sleep(0.5)


def _exited(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        proc.wait(seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def _stop(proc: subprocess.Popen[bytes], grace: float = GRACE_S) -> None:
    """SIGINT (finish the step, checkpoint, run_end interrupted), again, then SIGKILL.

    A Ctrl-C (or SIGTERM) while waiting skips to the second SIGINT: stop now, still cleanly."""
    if proc.poll() is not None:
        return
    print(
        "demo: stopping the training: it finishes its current step and writes a checkpoint "
        "(Ctrl-C again: stop now) ...",
        file=sys.stderr,
        flush=True,
    )
    proc.send_signal(signal.SIGINT)
    try:
        if _exited(proc, grace):
            return
        print("demo: still busy; stopping it now", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("demo: stopping it now", file=sys.stderr, flush=True)
    if proc.poll() is None:
        proc.send_signal(
            signal.SIGINT
        )  # asked twice: the trainer stops at once (run_end interrupted)
    try:
        if _exited(proc, 15):
            return
    except KeyboardInterrupt:
        pass
    proc.kill()
    proc.wait()


def _end_status(run: Path) -> str | None:
    try:
        with open(run / "rank0.jsonl", "rb") as f:
            f.seek(max(0, os.path.getsize(run / "rank0.jsonl") - 4096))
            rec = decode(f.read().splitlines()[-1])
    except (OSError, RecordError, IndexError):
        return None
    return rec.status if type(rec) is RunEnd else None


def _monitor(*args: str) -> int:
    """Run the monitor's console command (``tui``) in the foreground; its exit status.

    A separate program, not an import: the trainer and the monitor are installed apart."""
    script = Path(sys.executable).parent / "tui"
    cmd = str(script) if script.exists() else shutil.which("tui")
    if cmd is None:
        print(
            "demo: the monitor (`tui`) is not installed here: pip install stagewatch",
            file=sys.stderr,
        )
        return 2
    sys.stdout.flush()
    return subprocess.call([cmd, *args])


def run(args: argparse.Namespace) -> int:
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.minutes is not None and not 0 < args.minutes <= 10_000:
        raise UsageError(f"--minutes must be above 0 (and at most 10000), got {args.minutes:g}")
    if args.synthetic or args.size is not None:
        if args.steps is None:
            args.steps = 60
        if args.size is None:
            args.size = 24
        return run_synthetic(args)
    if not os.path.isfile(args.cfg):
        raise UsageError(
            f"config not found: {args.cfg} (run the demo from a clone of the repository, "
            "or give --cfg)"
        )
    return run_training(args)


def run_training(args: argparse.Namespace) -> int:
    """The tiny config trained in the background, the monitor on it (or, without a
    terminal, its output followed and the summary printed at the end)."""
    tty = sys.stdin.isatty() and sys.stdout.isatty() and not args.no_monitor
    steps = args.steps if args.steps is not None or tty else 5
    minutes = args.minutes
    if minutes is None and tty and args.steps is None:
        minutes = DEMO_MINUTES
    root = Path(args.log_dir)
    root.mkdir(parents=True, exist_ok=True)
    log_file = root.parent / f"{root.name}-train.log"
    before = _runs(root)
    proc = _start(args.cfg, root, steps, log_file, args.threads, minutes)
    how_long = f" for {minutes:g} min (q stops it sooner)" if minutes is not None else ""
    print(
        f"demo: training {Path(args.cfg).name} on CPU in the background{how_long} "
        f"(pid {proc.pid}); its output goes to {log_file}",
        file=sys.stderr,
        flush=True,
    )
    # SIGINT too: Python's default raises KeyboardInterrupt only if nobody replaced it
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def _on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # unwinds to the finally below, which stops the training

    for s in old:
        signal.signal(s, _on_signal)
    run_dir = None
    try:
        run_dir = _wait_for_run(proc, root, before, log_file)
        if run_dir is None:
            print(
                "demo: the training stopped before writing a run "
                f"(exit status {proc.returncode}):\n"
                f"{_tail(log_file)}",
                file=sys.stderr,
            )
            return proc.returncode or 1
        if tty:
            _monitor("watch", str(root))
        else:
            print(
                f"demo: run {run_dir.name}: training {steps} steps (no terminal: printing the "
                "summary at the end; run it in a terminal for the live monitor)",
                file=sys.stderr,
                flush=True,
            )
            _follow(proc, log_file)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(proc)
        for s, h in old.items():
            signal.signal(s, h)
    if run_dir is None:
        return 130
    status = _end_status(run_dir) or "no run_end (stopped hard)"
    if proc.returncode not in (0, None) and status == "failed":
        print(f"demo: the training failed:\n{_tail(log_file)}", file=sys.stderr)
    if not tty:
        _monitor("summary", str(run_dir))
    tui = tui_command()
    print(
        f"\ndemo: run {status}. See it again with `{tui} replay {run_dir}` or "
        f"`{tui} summary {run_dir}`; training output in {log_file}",
        file=sys.stderr,
    )
    return 0 if status in ("completed", "interrupted") else 1


# --------------------------------------------------------------------------- synthetic


def _matmul(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    cols = list(zip(*b, strict=True))
    return [[math.fsum(x * y for x, y in zip(row, col, strict=True)) for col in cols] for row in a]


def _block(x: list[list[float]], w: list[list[float]]) -> list[list[float]]:
    y = _matmul(x, w)
    return [[math.tanh(v) for v in row] for row in y]


def run_synthetic(args: argparse.Namespace) -> int:
    """The torch-free workload: the timing core on matrix blocks, in the foreground."""
    if not 4 <= args.size <= 256:
        raise UsageError(f"--size must be between 4 and 256, got {args.size}")
    rng = random.Random(args.seed)
    n = args.size

    def rand_matrix() -> list[list[float]]:
        return [[rng.uniform(-0.3, 0.3) for _ in range(n)] for _ in range(n)]

    weights = {s: rand_matrix() for s in STAGES}
    blocks = {s: (1 + 2 * i) for i, s in enumerate(STAGES)}  # stage8 is the heavy one

    log = TimingLogger(
        args.log_dir,
        enable_console=not args.no_console,
        enable_file=True,
        console_update_interval=10,
        file_flush_interval=10,
        run_name=args.run_name,
        total_steps=args.steps,
        samples_per_step=1,
        config={"demo": {"steps": args.steps, "size": n, "seed": args.seed}},
    )
    set_global_timing_logger(log)
    print(f"demo: writing run {log.run_id} to {log.run_dir}")
    status, error = "completed", None
    try:
        log.mark_step_start()
        for step in range(args.steps):
            with timed("data"):
                x = rand_matrix()
            with timed("forward"):
                h = x
                for stage in STAGES:
                    with timed(stage):
                        for _ in range(blocks[stage]):
                            with timed("block"):
                                h = _block(h, weights[stage])
                with timed("loss"):
                    loss = sum(v * v for row in h for v in row) / (n * n)
            with timed("backward"):
                for stage in reversed(STAGES):
                    h = _block(h, weights[stage])
            with timed("optimizer"):
                lr = 1e-3
                for w in weights.values():
                    w[0][0] -= lr * loss
            # a value measured elsewhere (e.g. by a framework) enters the same step
            log_timing("allreduce", 0.05 + 0.02 * rng.random())
            log.step(samples=1, epoch=step // 20, scalars={"loss": loss, "lr": lr})
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException as e:
        status, error = "failed", e
        raise
    finally:
        log.close(status, error)
        set_global_timing_logger(None)
    log.print_summary()
    print(f"demo: records in {log.run_dir}")
    return 0
