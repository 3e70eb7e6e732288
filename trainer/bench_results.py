"""What ``trainer bench`` measured: a :class:`Result` per row, read back from the records of
the row's run by :func:`analyse_run` (the figures are defined in :mod:`trainer.bench`)."""

from __future__ import annotations

import os
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from stagewatch.records import RecordError, RunEnd, RunStart, Step, decode
from stagewatch.runs import rank_files
from trainer.bench_sweeps import Assignment, label

OK, OOM, FAILED, SKIPPED = "ok", "oom", "failed", "skipped"
_OOM_TYPES = ("OutOfMemoryError", "MemoryError")
_OOM_TEXT = re.compile(r"out of memory|CUBLAS_STATUS_ALLOC_FAILED|cudaErrorMemoryAllocation", re.I)
EXCLUDED_REGIONS = ("validation", "checkpoint")


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
    """Figures of one bench run (rank 0's file), as :mod:`trainer.bench` defines them."""
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
                message=f"{end.error_type}: {_first_line(end.error_message)}",
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


def _first_line(message: str | None) -> str:
    return message.splitlines()[0] if message else ""
