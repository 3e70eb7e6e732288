"""``trainer bench``: a measured what-if table over configuration sweeps.

Each combination of the sweeps (their cartesian product, optionally crossed with explicit
``--case`` rows) runs in its own process as an ordinary training run::

    python -m trainer train --cfg BASE --set <bench settings> --set <combination>
        --set TRAIN.MAX_STEPS=<warmup + steps> --set LOG.RUN_NAME=<name> --log-dir DIR

so its memory figures are its own, an out-of-memory error is a result rather than a crash of
the benchmark, and every combination is a normal run the monitor can open. The results are
read back from each run's JSONL (``stagewatch.records.decode``):

- step time: median step wall time of the steps after the warm-up, minus any
  ``validation``/``checkpoint`` region in them (the end-of-run validation and checkpoint land
  in the last step);
- samples/s: samples per step / median step time (one process);
- peak memory: max over every step of ``memory.peak`` (CUDA: peak allocated) or ``rss`` (CPU);
- epoch and total time: optimizer steps per epoch for the configured dataset size (samples
  per epoch split over ``--world-size`` ranks, ``drop_last`` like the trainer) × step time,
  and × ``TRAIN.EPOCHS``; a projection that assumes each rank keeps the measured speed;
- OOM: the run ended ``failed`` with an out-of-memory error; any other failure is
  ``failed: <message>``;
- predicted peak: ``trainer plan``'s simulation of the row's step on the meta device, for
  the device the row runs on (CUDA: the bf16/fp32 kernels of the GPU; CPU: tensors only,
  while the measured CPU figure is the whole process's resident set). A row predicted not
  to fit (CUDA: total memory minus ``trainer.plan.RESERVE_BYTES``; CPU: available host
  memory) is reported as such and not run, unless ``force``.

The first combination is the baseline of the ratio columns.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stagewatch.errors import ConfigError, UsageError
from trainer.bench_report import fmt_bytes
from trainer.bench_results import FAILED, OK, SKIPPED, BenchReport, Result, analyse_run
from trainer.bench_sweeps import Assignment, label

#: settings every bench run gets (before the sweep's, which may override them): no mid-run
#: validation or checkpoints, one clip in the final validation, no console panel
BENCH_SETTINGS = (
    "TRAIN.VAL.EVERY=0",
    "TRAIN.VAL.MAX_CLIPS=1",
    "TRAIN.CHECKPOINT.EVERY=0",
    "LOG.TIMING_CONSOLE=false",
)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """Dataset size and schedule of one combination, for the epoch/total projection."""

    samples_per_epoch: int
    samples_source: str
    epochs: int
    batch_size: int
    grad_accum: int
    world_size: int

    @property
    def steps_per_epoch(self) -> int:
        return (self.samples_per_epoch // self.world_size) // self.batch_size // self.grad_accum

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.grad_accum


def make_plan(
    cfg_path: str,
    overrides: Sequence[str],
    world_size: int = 1,
    epoch_samples: int | None = None,
    epochs: int | None = None,
) -> Plan:
    """Load the combination's config (ConfigError names a bad key) and size its epochs."""
    from trainer.config import load_config

    cfg = load_config(cfg_path, list(overrides))
    if epoch_samples is not None:
        n, src = epoch_samples, "--epoch-samples"
    elif cfg.DATA.TYPE == "synthetic":
        n, src = cfg.DATA.SYNTHETIC.TRAIN_CLIPS, "DATA.SYNTHETIC.TRAIN_CLIPS"
    else:
        from trainer.data import build_datasets

        n, src = len(build_datasets(cfg.DATA, cfg.MODEL.SPIKE.BINS)[0]), f"clips in {cfg.DATA.ROOT}"
    return Plan(
        n,
        src,
        epochs or cfg.TRAIN.EPOCHS,
        cfg.TRAIN.BATCH_SIZE,
        cfg.TRAIN.GRADIENT_ACCUMULATION_STEPS,
        world_size,
    )


# --------------------------------------------------------------------------- predicted peak


def _device_and_capacity(cfg: Any) -> tuple[str, int | None]:
    """The device a row will train on and the memory its step must fit in."""
    import torch

    from trainer.plan import RESERVE_BYTES

    want = cfg.TRAIN.DEVICE
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            return "cuda", None
        return "cuda", torch.cuda.get_device_properties(0).total_memory - RESERVE_BYTES
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return "cpu", int(line.split()[1]) * 1024
    except OSError:
        pass
    return "cpu", None


def predict_peak(cfg_path: str, overrides: Sequence[str]) -> tuple[int | None, int | None, str]:
    """(predicted peak bytes, capacity bytes, message) of one row, from ``trainer plan``."""
    from trainer.config import load_config

    try:
        cfg = load_config(cfg_path, list(overrides))
        device, cap = _device_and_capacity(cfg)
        arch = "sm90"
        if device == "cuda":
            import torch

            from stagewatch.gpus import lookup

            spec = lookup(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
            arch = spec.arch if spec is not None else arch
        from trainer.plan import simulate

        plan = simulate(cfg, device=device, arch=arch, count_saved=False)
    except Exception as e:  # a prediction gap must not stop the measurement
        return None, None, f"no prediction ({type(e).__name__}: {e})"
    return plan.peak, cap, ""


# --------------------------------------------------------------------------- a row's process


def train_command(cfg: str, overrides: Sequence[str], log_dir: str) -> list[str]:
    cmd = [sys.executable, "-m", "trainer", "train", "--cfg", cfg]
    for o in overrides:
        cmd += ["--set", o]
    return [*cmd, "--log-dir", log_dir]


def _find_run(log_dir: str, name: str) -> str | None:
    pat = re.compile(r"^\d{8}-\d{6}-" + re.escape(name) + r"-[0-9a-f]{4}$")
    try:
        hits = sorted(n for n in os.listdir(log_dir) if pat.match(n))
    except OSError:
        return None
    return os.path.join(log_dir, hits[-1]) if hits else None


def _stop(proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """SIGTERM (the trainer finishes the step and writes run_end), then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _last_line(path: str | None) -> str:
    """The last meaningful line of a process log (its error, usually)."""
    if not path or not os.path.exists(path):
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 8192))
        lines = [x.strip() for x in f.read().decode("utf-8", "replace").splitlines() if x.strip()]
    return lines[-1][:300] if lines else ""


# --------------------------------------------------------------------------- running


def run_bench(
    cfg: str,
    combos: Sequence[tuple[Assignment, ...]],
    *,
    steps: int = 5,
    warmup: int = 2,
    log_dir: str = "runs/logs",
    out: str | None = None,
    extra: Sequence[str] = (),
    world_size: int = 1,
    epoch_samples: int | None = None,
    epochs: int | None = None,
    timeout: float | None = None,
    command: Callable[[str, Sequence[str], str], list[str]] = train_command,
    echo: Callable[[str], None] = print,
    predict: bool = True,
    force: bool = False,
) -> BenchReport:
    """Run every combination in its own process and read the results back.

    ``predict``: put ``trainer plan``'s predicted peak beside each row's measured one; rows
    predicted not to fit are not run unless ``force``.
    """
    if steps < 1 or warmup < 0:
        raise UsageError("--steps must be >= 1 and --warmup >= 0")
    if not combos:
        raise UsageError("nothing to run: give --sweep KEY=v1,v2 and/or --case")
    report = BenchReport(cfg, steps, warmup, world_size, log_dir, out)
    tag = secrets.token_hex(2)
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(cfg).stem)[:18]
    total = warmup + steps
    plans = _plan_rows(cfg, combos, extra, world_size, epoch_samples, epochs)
    report.plan_source = plans[0][1].samples_source
    logs = Path(out or tempfile.mkdtemp(prefix="stagewatch-bench-")) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    os.makedirs(log_dir, exist_ok=True)
    for i, (combo, (user, plan)) in enumerate(zip(combos, plans, strict=True)):
        name = f"{base}-bench{tag}-{i + 1}"
        res = Result(i, tuple(combo), name, log_file=str(logs / f"{name}.log"))
        report.results.append(res)
        echo(f"[{i + 1}/{len(combos)}] {res.label} ...")
        if predict and _predicted_not_to_fit(res, cfg, user, force):
            echo(f"      {res.outcome}")
            continue
        ckpt = tempfile.mkdtemp(prefix="stagewatch-bench-ckpt-")
        sets = _row_settings(user, plan, total, name, ckpt)
        t0 = time.monotonic()
        try:
            rc = _run_process(command(cfg, sets, log_dir), res.log_file, timeout, report)
        finally:
            shutil.rmtree(ckpt, ignore_errors=True)
        res.wall_s = time.monotonic() - t0
        _settle(res, log_dir, warmup, rc, timeout)
        if res.status == OK and res.step_ms:
            _project(res, plan, res.step_ms)
        echo(_row_line(res))
        if report.interrupted:
            break
    _compare_to_baseline(report.results)
    return report


def _plan_rows(
    cfg: str,
    combos: Sequence[tuple[Assignment, ...]],
    extra: Sequence[str],
    world_size: int,
    epoch_samples: int | None,
    epochs: int | None,
) -> list[tuple[list[str], Plan]]:
    """(the row's own settings, its plan) of every combination: all configs are checked
    before any row runs."""
    plans = []
    for combo in combos:
        user = [*extra, *(f"{k}={v}" for k, v in combo)]
        try:
            plan = make_plan(cfg, [*BENCH_SETTINGS, *user], world_size, epoch_samples, epochs)
        except ConfigError as e:
            raise UsageError(f"{label(combo)}: {e}") from None
        plans.append((user, plan))
    return plans


def _row_settings(user: Sequence[str], plan: Plan, total: int, name: str, ckpt: str) -> list[str]:
    """The ``--set`` overrides of a row's training process."""
    sets = [
        *BENCH_SETTINGS,
        f"TRAIN.CHECKPOINT.DIR={ckpt}",
        *user,
        f"TRAIN.MAX_STEPS={total}",
        f"LOG.RUN_NAME={name}",
    ]
    if plan.steps_per_epoch * plan.epochs < total:  # the run itself needs enough epochs
        sets.append(f"TRAIN.EPOCHS={math.ceil(total / max(1, plan.steps_per_epoch))}")
    return sets


def _predicted_not_to_fit(res: Result, cfg: str, user: Sequence[str], force: bool) -> bool:
    """Put the predicted peak on ``res``; True (and ``res`` skipped) if the row is not to run."""
    res.mem_predicted, res.mem_capacity, res.predict_message = predict_peak(
        cfg, [*BENCH_SETTINGS, *user]
    )
    if (
        res.mem_predicted is None
        or res.mem_capacity is None
        or res.mem_predicted <= res.mem_capacity
        or force
    ):
        return False
    res.status = SKIPPED
    res.message = (
        f"predicted peak {fmt_bytes(res.mem_predicted)} > "
        f"{fmt_bytes(res.mem_capacity)} usable (--force runs it)"
    )
    return True


def _run_process(
    argv: list[str], log_file: str, timeout: float | None, report: BenchReport
) -> int | None:
    """Run a row's process, its output to ``log_file``. Its exit status (None: timed out);
    Ctrl-C stops it and marks ``report`` interrupted."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_file, "wb") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            return None
        except KeyboardInterrupt:
            _stop(proc)
            report.interrupted = True
            return proc.returncode


def _settle(res: Result, log_dir: str, warmup: int, rc: int | None, timeout: float | None) -> None:
    """A row's figures from its run's records, and its status from them and ``rc``."""
    res.run_dir = _find_run(log_dir, res.name)
    res.run_id = os.path.basename(res.run_dir) if res.run_dir else None
    if res.run_dir:
        figs = analyse_run(res.run_dir, warmup)
        for k, v in figs.items():
            setattr(res, k, v)
    if rc is None:
        res.status, res.message = FAILED, f"timed out after {timeout:g} s"
    elif res.status == OK and rc != 0:
        res.status, res.message = FAILED, f"exit status {rc}: {_last_line(res.log_file)}"
    elif not res.run_dir:
        why = _last_line(res.log_file)
        if rc < 0:
            why = f"killed by {signal.Signals(-rc).name}" + (
                " (out of host memory?)" if rc == -9 else ""
            )
        res.status, res.message = FAILED, why or f"exit status {rc}, no run written"


def _project(res: Result, plan: Plan, step_ms: float) -> None:
    """Samples/s, epoch and total time of a row measured at ``step_ms`` a step (see the module
    docstring)."""
    res.samples_per_step = res.samples_per_step or plan.samples_per_step
    res.samples_per_s = res.samples_per_step * 1000.0 / step_ms
    res.steps_per_epoch, res.epochs = plan.steps_per_epoch, plan.epochs
    res.epoch_s = plan.steps_per_epoch * step_ms / 1000.0
    res.total_s = res.epoch_s * plan.epochs


def _row_line(res: Result) -> str:
    """The progress line of a finished row."""
    return (
        f"      {res.outcome}"
        + (
            f": step {res.step_ms:.1f} ms, {res.samples_per_s:.3g} samples/s"
            if res.status == OK and res.step_ms and res.samples_per_s
            else ""
        )
        + f" ({res.wall_s:.0f} s)"
    )


def _compare_to_baseline(results: list[Result]) -> None:
    """The ratio columns: every measured row against the first."""
    base_res = results[0] if results else None
    for r in results:
        if base_res and base_res.status == OK and r.status == OK and base_res.step_ms and r.step_ms:
            r.step_ratio = r.step_ms / base_res.step_ms
            if base_res.samples_per_s and r.samples_per_s:
                r.throughput_ratio = r.samples_per_s / base_res.samples_per_s
