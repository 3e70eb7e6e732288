"""Capacity planning: FLOPs and memory of one training step, simulated on the meta device.

:func:`simulate` builds the configured model on PyTorch's ``meta`` device (shapes, no
data) and runs one micro-batch forward, loss and backward under three interceptors:

- a ``TorchFunctionMode`` that emulates CUDA autocast (Linear, conv, matmul and SDPA in
  bf16; LayerNorm, softmax, interpolation and the other fp32-listed ops in fp32; the
  model's ``fp32_region`` switches it off) and replaces ``F.scaled_dot_product_attention``
  by the aten kernel the GPU would pick (:func:`choose_sdpa_kernel`), so autograd saves what
  that kernel saves;
- a ``TorchDispatchMode`` that counts FLOPs (``torch.utils.flop_counter``'s formulas) and
  tracks every storage an op creates until it dies: the live-bytes curve and its peak;
- ``saved_tensors_hooks`` that count the bytes autograd keeps for backward, once per storage.

Work is charged to the region names the trainer's timing produces (``forward/vrt/stage1``,
``backward/vrt/stage1``, ``backward/vrt/stage1/recompute``...): the model's own backward
instrumentation (:mod:`trainer.models.instrument`) opens and closes the backward regions,
so a region here is the same span as a measured one.

The step's peak = parameters + optimizer state + gradients held from earlier micro-batches
+ the simulated peak of live tensors (activations, transients and the gradients as they
appear) + the input batch.
"""

from __future__ import annotations

from typing import Any

from trainer.config import Config
from trainer.gpus import GIB, GpuSpec
from trainer.plan.counting import count_flops
from trainer.plan.optimizer_memory import (
    BNB_BLOCKSIZE,
    BNB_MIN_8BIT_SIZE,
    optimizer_state_bytes,
    optimizer_transient_bytes,
)
from trainer.plan.report import Plan, RegionPlan, format_plan
from trainer.plan.run_start import region_flops_for_run_start
from trainer.plan.sdpa import KERNELS, SdpaCall, choose_sdpa_kernel, run_sdpa_kernel
from trainer.plan.simulation import Shape, config_shape, precision_of, simulate

__all__ = [
    "BNB_BLOCKSIZE",
    "BNB_MIN_8BIT_SIZE",
    "KERNELS",
    "MAX_SEARCH_BATCH",
    "RESERVE_BYTES",
    "Plan",
    "RegionPlan",
    "SdpaCall",
    "Shape",
    "choose_sdpa_kernel",
    "config_shape",
    "count_flops",
    "fit",
    "format_plan",
    "optimizer_state_bytes",
    "optimizer_transient_bytes",
    "precision_of",
    "region_flops_for_run_start",
    "run_sdpa_kernel",
    "simulate",
]

#: device memory the plan keeps free for the CUDA context, cuBLAS/cuDNN workspaces and
#: allocator fragmentation when it says whether a step fits
RESERVE_BYTES = 2 * GIB

#: the largest batch the fit search simulates (the per-sample loops of shifted-window
#: attention make bigger batches slow to simulate; beyond it the answer is extrapolated)
MAX_SEARCH_BATCH = 64


# --------------------------------------------------------------------------- fitting


def fit(
    cfg: Config,
    gpu: GpuSpec,
    plan: Plan,
    device: str = "cuda",
    settings: tuple[bool, ...] = (False, True),
) -> dict[str, Any]:
    """Does ``plan`` fit ``gpu``; the largest batch per checkpointing setting.

    "Checkpointing" here is the TMSA attention and FFN paths together; the alignment's
    (``USE_CHECKPOINT_ALIGN``) stays as configured. Memory is close to linear in the batch: the batch-independent part (parameters,
    gradients, optimizer state) is known, so one simulation at batch 1 gives the per-sample
    slope. The largest batch under ``gpu.memory - RESERVE_BYTES`` is extrapolated and
    simulated once to confirm; when that misses, the line through the two simulated
    batches gives the next guess (at most three simulations per setting).
    """
    cap = gpu.memory - RESERVE_BYTES
    rows = []
    for ck in settings:
        cache: dict[int, int] = {}
        if plan.checkpointing["attention"] == ck and plan.checkpointing["ffn"] == ck:
            cache[plan.batch] = plan.peak

        def peak_at(bs: int, ck: bool = ck, cache: dict[int, int] = cache) -> int:
            if bs not in cache:
                cache[bs] = simulate(
                    cfg, device=device, arch=gpu.arch, batch=bs, checkpointing=ck, count_saved=False
                ).peak
            return cache[bs]

        fixed = (
            plan.memory["parameters"] + plan.memory["optimizer_state"] + plan.memory["gradients"]
        )
        p1 = peak_at(1)
        slope = float(max(p1 - fixed, 1))
        best, notes, capped = 0, [], False
        if p1 <= cap:
            guess = 1 + int((cap - p1) // slope)
            if guess > MAX_SEARCH_BATCH:
                notes.append(f"extrapolated {guess}; simulated up to {MAX_SEARCH_BATCH}")
                guess, capped = MAX_SEARCH_BATCH, True
            for _ in range(2):
                if guess in cache:
                    break
                pk = peak_at(guess)
                if pk <= cap and (guess + 1) in cache:
                    break
                slope = max((pk - p1) / (guess - 1), 1.0) if guess > 1 else slope
                nxt = min(1 + int((cap - p1) // slope), MAX_SEARCH_BATCH)
                if nxt == guess:
                    break
                guess = nxt
            best = max(b for b, q in cache.items() if q <= cap)
            if best + 1 not in cache and best < MAX_SEARCH_BATCH:
                notes.append(f"batch {best + 1} extrapolated, not simulated")
        rows.append(
            {
                "checkpointing": ck,
                "max_batch": best,
                "at_least": capped and best == MAX_SEARCH_BATCH,
                "peak_batch1": p1,
                "per_sample": int(slope),
                "peak_at_max": cache.get(best),
                "simulated": sorted(cache),
                "notes": notes,
            }
        )
    return {
        "gpu": gpu.name,
        "memory": gpu.memory,
        "reserve": RESERVE_BYTES,
        "usable": cap,
        "fits": plan.peak <= cap,
        "headroom": cap - plan.peak,
        "max_batch": rows,
    }
