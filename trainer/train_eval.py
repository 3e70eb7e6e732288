"""Validation during training: PSNR and SSIM of the model output, and of the blurry input
for comparison, over the validation clips of all ranks."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from trainer.distributed import DistInfo, all_reduce_sum
from trainer.metrics import psnr, ssim


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    use_spike: bool,
    info: DistInfo,
) -> dict[str, float]:
    """PSNR/SSIM of the model output and of the blurry input, over this rank's share,
    summed across ranks (each clip counted once)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    amp = torch.autocast(
        device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
    )
    for batch in loader:
        blurry = batch["blurry"].to(device)
        sharp = batch["sharp"].to(device)
        spikes = batch["spikes"].to(device) if use_spike else None
        with amp:
            out = model(blurry, spikes)
        out = out.float().clamp(0, 1)
        n = blurry.shape[0] * blurry.shape[1]  # frames
        sums += torch.stack(
            [
                psnr(out, sharp).sum(),
                ssim(out, sharp).sum(),
                psnr(blurry, sharp).sum(),
                ssim(blurry, sharp).sum(),
                torch.tensor(float(n), device=device),
            ]
        ).double()
    all_reduce_sum(sums, info)
    model.train(was_training)
    n = max(sums[4].item(), 1.0)
    m = (sums[:4] / n).tolist()
    return {
        "psnr": m[0],
        "ssim": m[1],
        "psnr_blurry": m[2],
        "ssim_blurry": m[3],
        "psnr_gain": m[0] - m[2],
    }
