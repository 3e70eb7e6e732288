"""One optimizer step of the training loop, written to be read top to bottom.

Every part of it is a timed region of the timing core: ``data``, ``h2d``, ``forward``,
``loss``, ``backward``, ``allreduce`` and ``optimizer``. Its micro-batches come from a
:class:`BatchStream`, which crosses epoch boundaries and keeps the data position that a
checkpoint saves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from stagewatch.timing import timed
from trainer.config import Config
from trainer.distributed import GradSyncTimer
from trainer.losses import charbonnier


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start an epoch part-way (resume at a data position)."""

    def __init__(self, dataset: Dataset, *args: Any, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        """Epoch ``epoch``, without its first ``skip`` samples of this rank."""
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


@dataclass
class StepContext:
    """Everything one training step needs."""

    model: nn.Module  # the DDP wrapper when distributed
    optimizer: torch.optim.Optimizer
    scheduler: Any
    cfg: Config
    device: torch.device
    autocast_dtype: torch.dtype | None
    perceptual: nn.Module | None
    grad_sync: GradSyncTimer
    batches: BatchStream
    use_spike: bool


class BatchStream:
    """Micro-batches across epoch boundaries, remembering the data position for resume."""

    def __init__(
        self, loader: DataLoader, sampler: ResumableSampler, epoch: int, consumed: int
    ) -> None:
        self.loader, self.sampler = loader, sampler
        self.epoch, self.consumed = epoch, consumed  # consumed: batches of this epoch
        self.batch_size = loader.batch_size or 1
        self._it: Iterator[dict[str, torch.Tensor]] | None = None

    def next(self) -> dict[str, torch.Tensor]:
        while True:
            if self._it is None:
                self.sampler.set_position(self.epoch, self.consumed * self.batch_size)
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                self.epoch, self.consumed = self.epoch + 1, 0
                continue
            self.consumed += 1
            return batch

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}


# ----------------------------------------------------------------------------- the step


def compute_loss(ctx: StepContext, out: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    lcfg = ctx.cfg.LOSS
    loss = out.new_zeros((), dtype=torch.float32)
    if lcfg.CHARBONNIER.WEIGHT > 0:
        with timed("charbonnier"):
            loss = loss + lcfg.CHARBONNIER.WEIGHT * charbonnier(out, sharp, lcfg.CHARBONNIER.EPS)
    if ctx.perceptual is not None:
        with timed("perceptual"):
            loss = loss + lcfg.VGG_PERCEPTUAL.WEIGHT * ctx.perceptual(out, sharp).float()
    return loss


def train_step(ctx: StepContext) -> tuple[torch.Tensor, float | None]:
    """One optimizer step over ``GRADIENT_ACCUMULATION_STEPS`` micro-batches.

    Returns the mean loss (a device tensor, not synchronised) and the gradient norm.
    """
    tcfg = ctx.cfg.TRAIN
    accum = tcfg.GRADIENT_ACCUMULATION_STEPS
    amp = torch.autocast(
        ctx.device.type,
        dtype=ctx.autocast_dtype or torch.float32,
        enabled=ctx.autocast_dtype is not None,
    )
    total = torch.zeros((), device=ctx.device)
    for micro in range(accum):
        with timed("data"):
            batch = ctx.batches.next()
        with timed("h2d"):
            blurry = batch["blurry"].to(ctx.device, non_blocking=True)
            sharp = batch["sharp"].to(ctx.device, non_blocking=True)
            spikes = batch["spikes"].to(ctx.device, non_blocking=True) if ctx.use_spike else None
        # DDP: only the last micro-batch synchronises gradients
        last = micro == accum - 1
        no_sync = (
            ctx.model.no_sync()
            if isinstance(ctx.model, DDP) and not last
            else contextlib.nullcontext()
        )
        with no_sync:
            with timed("forward"), amp:
                out = ctx.model(blurry, spikes)
            with timed("loss"), amp:
                loss = compute_loss(ctx, out, sharp) / accum
            ctx.grad_sync.begin()  # "backward", then "allreduce" for what stays exposed
            loss.backward()
            ctx.grad_sync.end()
        total += loss.detach()
    with timed("optimizer"):
        grad_norm = None
        if tcfg.MAX_GRAD_NORM > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), tcfg.MAX_GRAD_NORM)
        ctx.optimizer.step()
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.scheduler.step()
    return total, grad_norm
