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

import itertools
import json
import math
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stagewatch.errors import ConfigError, UsageError
from stagewatch.records import RecordError, RunEnd, RunStart, Step, decode
from stagewatch.runs import rank_files

OK, OOM, FAILED, SKIPPED = "ok", "oom", "failed", "skipped"
#: settings every bench run gets (before the sweep's, which may override them): no mid-run
#: validation or checkpoints, one clip in the final validation, no console panel
BENCH_SETTINGS = (
    "TRAIN.VAL.EVERY=0",
    "TRAIN.VAL.MAX_CLIPS=1",
    "TRAIN.CHECKPOINT.EVERY=0",
    "LOG.TIMING_CONSOLE=false",
)
_OOM_TYPES = ("OutOfMemoryError", "MemoryError")
_OOM_TEXT = re.compile(r"out of memory|CUBLAS_STATUS_ALLOC_FAILED|cudaErrorMemoryAllocation", re.I)
EXCLUDED_REGIONS = ("validation", "checkpoint")

Assignment = tuple[str, str]  # ("TRAIN.BATCH_SIZE", "2")


# --------------------------------------------------------------------------- sweeps


@dataclass(frozen=True)
class Sweep:
    key: str
    values: tuple[str, ...]


def parse_sweep(text: str) -> Sweep:
    """``"KEY.PATH=v1,v2"`` -> Sweep (values stay strings; the trainer parses them as YAML)."""
    key, sep, vals = text.partition("=")
    key = key.strip()
    values = tuple(v.strip() for v in vals.split(","))
    if not sep or not key or any(not p for p in key.split(".")) or not any(values) or "" in values:
        raise UsageError(
            f"--sweep {text!r}: expected KEY.PATH=v1,v2,... (e.g. TRAIN.BATCH_SIZE=1,2,3)"
        )
    return Sweep(key, values)


def parse_case(text: str) -> tuple[Assignment, ...]:
    """``"K1=v1 K2=v2"`` (space separated; empty = the base config) -> assignments."""
    out = []
    for item in text.split():
        key, sep, val = item.partition("=")
        if not sep or not key or any(not p for p in key.split(".")):
            raise UsageError(f"--case {text!r}: expected space-separated KEY.PATH=VALUE items")
        out.append((key, val))
    return tuple(out)


def combinations(
    sweeps: Sequence[Sweep], cases: Sequence[tuple[Assignment, ...]] = ()
) -> list[tuple[Assignment, ...]]:
    """Every case × every combination of sweep values, in order (first = baseline)."""
    keys = [s.key for s in sweeps]
    if len(set(keys)) != len(keys):
        raise UsageError(
            "a key is swept twice: " + ", ".join(sorted({k for k in keys if keys.count(k) > 1}))
        )
    grid = [
        tuple(zip(keys, vals, strict=True))
        for vals in itertools.product(*(s.values for s in sweeps))
    ]
    if not cases:
        return grid
    return [tuple(case) + g for case in cases for g in grid]


def label(assignments: Sequence[Assignment]) -> str:
    return " ".join(f"{k}={v}" for k, v in assignments) or "(base config)"


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


# --------------------------------------------------------------------------- results


@dataclass
class Result:
    index: int
    settings: tuple[Assignment, ...]
    name: str
    status: str = FAILED
    message: str = ""
    run_id: str | None = None
    run_dir: str | None = None
    log_file: str | None = None
    device: str | None = None
    gpu_name: str | None = None
    steps_measured: int = 0
    step_ms: float | None = None  # median after warm-up, validation/checkpoint excluded
    step_ms_mean: float | None = None
    samples_per_step: int | None = None
    samples_per_s: float | None = None
    mem_peak: int | None = None
    mem_reserved: int | None = None
    epoch_s: float | None = None
    total_s: float | None = None
    steps_per_epoch: int | None = None
    epochs: int | None = None
    step_ratio: float | None = None  # vs the baseline row
    throughput_ratio: float | None = None
    wall_s: float = 0.0  # the whole process, set-up included
    mem_predicted: int | None = None  # trainer plan's predicted peak (bytes)
    mem_capacity: int | None = None  # what the prediction was checked against
    predict_message: str = ""  # why there is no prediction

    @property
    def label(self) -> str:
        return label(self.settings)

    @property
    def outcome(self) -> str:
        if self.status == OK:
            return "ok"
        if self.status == OOM:
            return "OOM"
        if self.status == SKIPPED:
            return f"not run: {self.message}"
        return f"failed: {self.message}" if self.message else "failed"


def is_oom(error_type: str | None, message: str | None) -> bool:
    return (error_type or "") in _OOM_TYPES or bool(_OOM_TEXT.search(message or ""))


def analyse_run(run_dir: str | os.PathLike[str], warmup: int) -> dict[str, Any]:
    """Figures of one bench run (rank 0's file): see the module docstring."""
    files = rank_files(run_dir)
    if not files:
        return {"status": FAILED, "message": f"no rank files in {run_dir}"}
    walls: list[float] = []
    samples: list[int] = []
    peak = reserved = None
    start: RunStart | None = None
    end: RunEnd | None = None
    with open(files[0][1], "rb") as f:
        for line in f:
            try:
                rec = decode(line)
            except RecordError:
                continue
            if isinstance(rec, RunStart):
                start = start or rec
            elif isinstance(rec, RunEnd):
                end = rec
            elif isinstance(rec, Step):
                m = rec.memory or {}
                p = m.get("peak", m.get("rss"))
                if p is not None:
                    peak = p if peak is None else max(peak, p)
                if m.get("reserved") is not None:
                    reserved = m["reserved"] if reserved is None else max(reserved, m["reserved"])
                if rec.step > (start.start_step if start else 0) + warmup:
                    excl = sum(rec.regions[r][0] for r in EXCLUDED_REGIONS if r in rec.regions)
                    walls.append(max(0.0, rec.wall_ms - excl))
                    samples.append(rec.samples)
    out: dict[str, Any] = {
        "mem_peak": peak,
        "mem_reserved": reserved,
        "steps_measured": len(walls),
        "device": start.device if start else None,
        "gpu_name": start.gpu_name if start else None,
    }
    if end is not None and end.status == "failed":
        if is_oom(end.error_type, end.error_message):
            out.update(
                status=OOM,
                message=f"{end.error_type}: {(end.error_message or '').splitlines()[0] if end.error_message else ''}",
            )
        else:
            msg = (end.error_message or "").strip().splitlines()
            out.update(
                status=FAILED,
                message=f"{end.error_type or 'error'}: {msg[0] if msg else ''}".strip(),
            )
        return out
    if end is not None and end.status == "interrupted":
        out.update(status=FAILED, message="interrupted")
        return out
    if not walls:
        out.update(
            status=FAILED, message=f"no step after the {warmup} warm-up step(s) was recorded"
        )
        return out
    out.update(
        status=OK,
        step_ms=statistics.median(walls),
        step_ms_mean=statistics.fmean(walls),
        samples_per_step=int(statistics.median(samples)),
    )
    return out


def _last_line(path: str | None) -> str:
    """The last meaningful line of a process log (its error, usually)."""
    if not path or not os.path.exists(path):
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 8192))
        lines = [x.strip() for x in f.read().decode("utf-8", "replace").splitlines() if x.strip()]
    return lines[-1][:300] if lines else ""


# --------------------------------------------------------------------------- running


@dataclass
class BenchReport:
    cfg: str
    steps: int
    warmup: int
    world_size: int
    log_dir: str
    out: str | None
    results: list[Result] = field(default_factory=list)
    plan_source: str = ""
    started: float = field(default_factory=time.time)
    interrupted: bool = False


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
    plans: list[tuple[list[str], Plan]] = []
    for combo in combos:  # check every combination's config before running any
        user = [*extra, *(f"{k}={v}" for k, v in combo)]
        try:
            plan = make_plan(cfg, [*BENCH_SETTINGS, *user], world_size, epoch_samples, epochs)
        except ConfigError as e:
            raise UsageError(f"{label(combo)}: {e}") from None
        plans.append((user, plan))
    report.plan_source = plans[0][1].samples_source
    logs = Path(out or tempfile.mkdtemp(prefix="stagewatch-bench-")) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    os.makedirs(log_dir, exist_ok=True)
    for i, (combo, (user, plan)) in enumerate(zip(combos, plans, strict=True)):
        name = f"{base}-bench{tag}-{i + 1}"
        res = Result(i, tuple(combo), name, log_file=str(logs / f"{name}.log"))
        report.results.append(res)
        ckpt = tempfile.mkdtemp(prefix="stagewatch-bench-ckpt-")
        sets = [
            *BENCH_SETTINGS,
            f"TRAIN.CHECKPOINT.DIR={ckpt}",
            *user,
            f"TRAIN.MAX_STEPS={total}",
            f"LOG.RUN_NAME={name}",
        ]
        if plan.steps_per_epoch * plan.epochs < total:  # the run itself needs enough epochs
            sets.append(f"TRAIN.EPOCHS={math.ceil(total / max(1, plan.steps_per_epoch))}")
        echo(f"[{i + 1}/{len(combos)}] {res.label} ...")
        if predict:
            res.mem_predicted, res.mem_capacity, res.predict_message = predict_peak(
                cfg, [*BENCH_SETTINGS, *user]
            )
            if (
                res.mem_predicted is not None
                and res.mem_capacity is not None
                and res.mem_predicted > res.mem_capacity
                and not force
            ):
                res.status = SKIPPED
                res.message = (
                    f"predicted peak {fmt_bytes(res.mem_predicted)} > "
                    f"{fmt_bytes(res.mem_capacity)} usable (--force runs it)"
                )
                echo(f"      {res.outcome}")
                continue
        t0 = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            with open(res.log_file, "wb") as logf:
                proc = subprocess.Popen(
                    command(cfg, sets, log_dir), stdout=logf, stderr=subprocess.STDOUT, env=env
                )
                try:
                    rc = proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    _stop(proc)
                    rc = None
                except KeyboardInterrupt:
                    _stop(proc)
                    report.interrupted = True
                    rc = proc.returncode
        finally:
            shutil.rmtree(ckpt, ignore_errors=True)
        res.wall_s = time.monotonic() - t0
        res.run_dir = _find_run(log_dir, name)
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
            if rc is not None and rc < 0:
                why = f"killed by {signal.Signals(-rc).name}" + (
                    " (out of host memory?)" if rc == -9 else ""
                )
            res.status, res.message = FAILED, why or f"exit status {rc}, no run written"
        if res.status == OK and res.step_ms:
            res.samples_per_step = res.samples_per_step or plan.samples_per_step
            res.samples_per_s = res.samples_per_step * 1000.0 / res.step_ms
            res.steps_per_epoch, res.epochs = plan.steps_per_epoch, plan.epochs
            res.epoch_s = plan.steps_per_epoch * res.step_ms / 1000.0
            res.total_s = res.epoch_s * plan.epochs
        echo(
            f"      {res.outcome}"
            + (
                f": step {res.step_ms:.1f} ms, {res.samples_per_s:.3g} samples/s"
                if res.status == OK and res.step_ms and res.samples_per_s
                else ""
            )
            + f" ({res.wall_s:.0f} s)"
        )
        if report.interrupted:
            break
    base_res = report.results[0] if report.results else None
    for r in report.results:
        if base_res and base_res.status == OK and r.status == OK and base_res.step_ms and r.step_ms:
            r.step_ratio = r.step_ms / base_res.step_ms
            if base_res.samples_per_s and r.samples_per_s:
                r.throughput_ratio = r.samples_per_s / base_res.samples_per_s
    return report


# --------------------------------------------------------------------------- output


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit, div in (("GiB", 1024**3), ("MiB", 1024**2)):
        if n >= div:
            return f"{n / div:.2f} {unit}" if unit == "GiB" else f"{n / div:.0f} {unit}"
    return f"{n / 1024:.0f} KiB"


def fmt_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "—"
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


def fmt_step(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


def markdown(report: BenchReport) -> str:
    """The table, like the original document's, with measured figures only."""
    first = next((r for r in report.results if r.device), None)
    dev = (first.gpu_name or first.device) if first else "?"
    epochs = next((r.epochs for r in report.results if r.epochs), None)
    lines = [
        f"`trainer bench --cfg {report.cfg}`: {report.steps} measured step(s) after {report.warmup} "
        f"warm-up step(s) per row, each row its own process on {dev}. Step = median step wall time "
        f"(validation/checkpoint excluded); samples/s = samples per step / step; epoch and total "
        f"times project the step time over the configured dataset ({report.plan_source}"
        + (
            f", {report.world_size} ranks assumed to scale linearly"
            if report.world_size > 1
            else ""
        )
        + "). Ratios are vs the first row. Predicted = `trainer plan`'s simulated peak of the "
        "row's step (on CPU tensors only; the measured CPU figure is the process's resident set).",
        "",
        f"| # | config | peak memory | predicted | step | samples/s | epoch | {epochs or 'all'} epochs "
        "| vs baseline | run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.results:
        if r.status == OK:
            vs = (
                f"{r.step_ratio:.2f}× time, {r.throughput_ratio:.2f}× throughput"
                if r.step_ratio is not None and r.throughput_ratio is not None
                else "—"
            )
            cells = [
                fmt_bytes(r.mem_peak),
                fmt_step(r.step_ms),
                f"{r.samples_per_s:.3g}" if r.samples_per_s else "—",
                fmt_seconds(r.epoch_s),
                fmt_seconds(r.total_s),
                vs,
            ]
        else:
            out = r.outcome.replace("|", "\\|")
            cells = [fmt_bytes(r.mem_peak) if r.status == OOM else "—", out, "—", "—", "—", "—"]
        cells.insert(1, fmt_bytes(r.mem_predicted))
        cfg_cell = r.label.replace("|", "\\|")
        lines.append(
            f"| {r.index + 1} | {cfg_cell} | " + " | ".join(cells) + f" | {r.run_id or '—'} |"
        )
    if report.interrupted:
        lines += ["", "Interrupted: rows after the last one were not run."]
    return "\n".join(lines) + "\n"


def report_dict(report: BenchReport) -> dict[str, Any]:
    rows = []
    for r in report.results:
        d = asdict(r)
        d["settings"] = {k: v for k, v in r.settings}
        d["label"] = r.label
        d["outcome"] = r.outcome
        rows.append(d)
    return {
        "schema": 1,
        "cfg": report.cfg,
        "steps": report.steps,
        "warmup": report.warmup,
        "world_size": report.world_size,
        "log_dir": report.log_dir,
        "samples_source": report.plan_source,
        "started": report.started,
        "interrupted": report.interrupted,
        "rows": rows,
    }


def write_outputs(report: BenchReport) -> tuple[str, str] | None:
    """``bench.md`` and ``bench.json`` in ``report.out`` (None when there is no --out)."""
    if not report.out:
        return None
    os.makedirs(report.out, exist_ok=True)
    md, js = os.path.join(report.out, "bench.md"), os.path.join(report.out, "bench.json")
    with open(md, "w", encoding="utf-8") as f:
        f.write(markdown(report))
    with open(js, "w", encoding="utf-8") as f:
        json.dump(report_dict(report), f, indent=2, allow_nan=False)
        f.write("\n")
    return md, js
