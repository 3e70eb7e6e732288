"""A tiny LightningModule fit with StagewatchCallback, for the callback tests.

Run as a script (``python tests/_lightning_job.py LOG_ROOT``) it fits under Lightning's own
``strategy="ddp"`` on two CPU processes (gloo): Lightning starts the second process by
running this script again.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from stagewatch.integrations.lightning import StagewatchCallback

BATCH = 4
LR = 0.01


class TinyModule(L.LightningModule):
    """``block`` runs twice per forward: one module called twice per step."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(8, 16)
        self.block = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU())
        self.out = torch.nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(self.block(self.inp(x))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=LR)


def loader(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n, 8, generator=g), torch.randn(n, 1, generator=g))
    return DataLoader(ds, batch_size=BATCH)


def fit(
    log_root: str,
    *,
    max_steps: int = 3,
    accumulate: int = 1,
    val_every: int | None = None,
    callback: StagewatchCallback | None = None,
    accelerator: str = "cpu",
    **trainer_kwargs: Any,
) -> L.Trainer:
    cb = callback or StagewatchCallback(log_root, run_name="tiny", enable_console=False)
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator=accelerator,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accumulate_grad_batches=accumulate,
        val_check_interval=val_every,
        limit_val_batches=2 if val_every else 0,
        num_sanity_val_steps=0,
        callbacks=[cb],
        **trainer_kwargs,
    )
    torch.manual_seed(0)
    trainer.fit(TinyModule(), loader(), loader(16) if val_every else None)
    return trainer


if __name__ == "__main__":
    fit(sys.argv[1], strategy="ddp", devices=2, max_steps=3)
