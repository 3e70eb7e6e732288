"""A run's checkpoints: where a run starts (a new run, or the checkpoint it resumes from) and
the state it saves, so that a resumed run continues exactly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from stagewatch.errors import UsageError
from trainer import checkpoint as ckpt
from trainer.config import Config
from trainer.distributed import DistInfo, gather_objects
from trainer.train_setup import seed_all
from trainer.train_step import StepContext


@dataclass(frozen=True)
class StartPoint:
    """Where a run starts: step 0 of a new run, or a checkpoint's step and data position."""

    step: int = 0
    epoch: int = 0
    consumed: int = 0  # batches of ``epoch`` already trained on
    run_id: str | None = None  # None: a new run, whose id is still to be made


def restore(
    cfg: Config,
    resume: str | None,
    log_dir: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    info: DistInfo,
    total_steps: int,
) -> StartPoint:
    """Load the checkpoint that ``resume`` (else ``TRAIN.RESUME``) names into the model,
    optimizer and schedule, with this rank's RNG state; without one, seed the ranks apart."""
    tcfg = cfg.TRAIN
    path = ckpt.resolve_resume(resume or tcfg.RESUME, log_dir, cfg.name, tcfg.CHECKPOINT.DIR)
    if path is None:
        seed_all(tcfg.SEED * 1009 + info.rank)  # ranks differ in augmentation from here
        return StartPoint()
    state = ckpt.load_checkpoint(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    step, run_id = int(state["step"]), state["run_id"]
    epoch, consumed = state["data"]["epoch"], state["data"]["consumed"]
    rngs = state.get("rng") or []
    if len(rngs) == info.world_size:
        ckpt.set_rng_state(rngs[info.rank])
    if step >= total_steps:
        raise UsageError(
            f"{path}: already at step {step} of {total_steps}; nothing to resume "
            "(raise TRAIN.MAX_STEPS or TRAIN.EPOCHS)"
        )
    return StartPoint(step, epoch, consumed, run_id)


def save(
    ctx: StepContext, model: nn.Module, at: int, run_id: str, info: DistInfo, folder: str
) -> str | None:
    """Checkpoint step ``at`` (``model`` unwrapped): every rank gives its RNG state, rank 0
    writes the file. Its path on rank 0, None on the others."""
    rngs = gather_objects(ckpt.rng_state(), info)
    if not info.is_main:
        return None
    state = {
        "model": model.state_dict(),
        "optimizer": ctx.optimizer.state_dict(),
        "scheduler": ctx.scheduler.state_dict(),
        "step": at,
        "run_id": run_id,
        "data": ctx.batches.position(),
        "rng": rngs,
        "config": ctx.cfg.raw,
        "world_size": info.world_size,
    }
    return ckpt.save_checkpoint(folder, at, state, ctx.cfg.TRAIN.CHECKPOINT.KEEP_LAST)
