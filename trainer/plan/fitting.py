"""The batch search of ``trainer plan --gpu``: does the step fit a GPU, and the largest batch
per checkpointing setting."""

from __future__ import annotations

from typing import Any

from stagewatch.gpus import GIB, GpuSpec
from trainer.config import Config
from trainer.plan.report import Plan
from trainer.plan.simulation import simulate

#: device memory the plan keeps free for the CUDA context, cuBLAS/cuDNN workspaces and
#: allocator fragmentation when it says whether a step fits
RESERVE_BYTES = 2 * GIB

#: the largest batch the fit search simulates (the per-sample loops of shifted-window
#: attention make bigger batches slow to simulate; beyond it the answer is extrapolated)
MAX_SEARCH_BATCH = 64


def fit(
    cfg: Config,
    gpu: GpuSpec,
    plan: Plan,
    device: str = "cuda",
    settings: tuple[bool, ...] = (False, True),
) -> dict[str, Any]:
    """Does ``plan`` fit ``gpu``; the largest batch per checkpointing setting.

    "Checkpointing" here is the TMSA attention and FFN paths together; the alignment's
    (``USE_CHECKPOINT_ALIGN``) stays as configured. Memory is close to linear in the batch:
    the batch-independent part (parameters, gradients, optimizer state) is known, so one
    simulation at batch 1 gives the per-sample slope. The largest batch under
    ``gpu.memory - RESERVE_BYTES`` is extrapolated and simulated once to confirm; when that
    misses, the line through the two simulated batches gives the next guess (at most three
    simulations per setting).
    """
    cap = gpu.memory - RESERVE_BYTES
    rows = [_largest_batch(cfg, gpu, plan, device, ck, cap) for ck in settings]
    return {
        "gpu": gpu.name,
        "memory": gpu.memory,
        "reserve": RESERVE_BYTES,
        "usable": cap,
        "fits": plan.peak <= cap,
        "headroom": cap - plan.peak,
        "max_batch": rows,
    }


class _Peaks:
    """Predicted peaks by batch size under one checkpointing setting, each simulated once."""

    def __init__(self, cfg: Config, device: str, arch: str, checkpointing: bool) -> None:
        self.cfg, self.device, self.arch, self.checkpointing = cfg, device, arch, checkpointing
        self.known: dict[int, int] = {}

    def at(self, batch: int) -> int:
        if batch not in self.known:
            self.known[batch] = simulate(
                self.cfg,
                device=self.device,
                arch=self.arch,
                batch=batch,
                checkpointing=self.checkpointing,
                count_saved=False,
            ).peak
        return self.known[batch]


def _largest_batch(
    cfg: Config, gpu: GpuSpec, plan: Plan, device: str, ck: bool, cap: int
) -> dict[str, Any]:
    """One row of :func:`fit`: the largest batch whose peak stays under ``cap`` with
    checkpointing ``ck``, and how it was found."""
    peaks = _Peaks(cfg, device, gpu.arch, ck)
    if plan.checkpointing["attention"] == ck and plan.checkpointing["ffn"] == ck:
        peaks.known[plan.batch] = plan.peak
    fixed = plan.memory["parameters"] + plan.memory["optimizer_state"] + plan.memory["gradients"]
    p1 = peaks.at(1)
    slope = float(max(p1 - fixed, 1))
    best, notes, capped = 0, [], False
    if p1 <= cap:
        guess = 1 + int((cap - p1) // slope)
        if guess > MAX_SEARCH_BATCH:
            notes.append(f"extrapolated {guess}; simulated up to {MAX_SEARCH_BATCH}")
            guess, capped = MAX_SEARCH_BATCH, True
        slope = _confirm(peaks, guess, p1, slope, cap)
        best = max(b for b, q in peaks.known.items() if q <= cap)
        if best + 1 not in peaks.known and best < MAX_SEARCH_BATCH:
            notes.append(f"batch {best + 1} extrapolated, not simulated")
    return {
        "checkpointing": ck,
        "align": bool(plan.checkpointing.get("align", False)),  # as configured, in every row
        "max_batch": best,
        "at_least": capped and best == MAX_SEARCH_BATCH,
        "peak_batch1": p1,
        "per_sample": int(slope),
        "peak_at_max": peaks.known.get(best),
        "simulated": sorted(peaks.known),
        "notes": notes,
    }


def _confirm(peaks: _Peaks, guess: int, p1: int, slope: float, cap: int) -> float:
    """Simulate the extrapolated largest batch ``guess``; when it misses, the line through
    batch 1 and it gives one more guess. The per-sample slope of the last line."""
    for _ in range(2):
        if guess in peaks.known:
            break
        pk = peaks.at(guess)
        if pk <= cap and (guess + 1) in peaks.known:
            break
        slope = max((pk - p1) / (guess - 1), 1.0) if guess > 1 else slope
        nxt = min(1 + int((cap - p1) // slope), MAX_SEARCH_BATCH)
        if nxt == guess:
            break
        guess = nxt
    return slope
