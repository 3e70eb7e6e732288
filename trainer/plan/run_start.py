"""The FLOPs the trainer records in ``run_start`` (``config.FLOPS``), from one simulated
step, so that the monitor can show achieved TFLOP/s and MFU per region."""

from __future__ import annotations

from typing import Any

import torch

from trainer.config import Config
from trainer.plan.simulation import simulate


def region_flops_for_run_start(
    cfg: Config, device: str, flow_frozen: bool = False
) -> dict[str, Any]:
    """The ``config.FLOPS`` entry of ``run_start``: FLOPs per optimizer step by region name
    (inclusive, as the step records' times are), counted once on the meta device, for the
    state the run starts in (``flow_frozen``: TRAIN.FREEZE_FLOW_STEPS not yet over)."""
    arch = "cpu" if device == "cpu" else "sm90"
    if device == "cuda":
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
        from stagewatch.gpus import lookup

        spec = lookup(name)
        arch = spec.arch if spec is not None else arch
    from stagewatch.timing import get_global_timing_logger, set_global_timing_logger

    prev = get_global_timing_logger()
    set_global_timing_logger(None)  # the meta model must not time itself into the run's log
    try:
        with torch.random.fork_rng(devices=[]):  # leave the run's random stream alone
            p = simulate(
                cfg,
                device="cpu" if device == "cpu" else "cuda",
                arch=arch,
                count_saved=False,
                flow_frozen=flow_frozen,
            )
    finally:
        set_global_timing_logger(prev)
    tf32 = (
        device == "cuda" and p.precision == "fp32" and bool(torch.backends.cuda.matmul.allow_tf32)
    )
    # floats: a step's count passes the record format's integer limit (1e12) at full size
    return {
        "PRECISION": p.precision,
        "TF32": tf32,
        "MICRO_BATCHES": p.micro_batches,
        "BATCH": p.batch,
        "FLOW_FROZEN": flow_frozen,
        "STEP": float(p.totals()["step_flops"]),
        "REGIONS": {k: float(v) for k, v in p.step_flops().items()},
    }
