"""Image quality metrics on ``[..., 3, H, W]`` tensors in [0, 1]: PSNR and SSIM (per frame)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor, max_val: float = 1.0) -> torch.Tensor:
    """PSNR in dB of each image (all dims but the last three), inputs clamped to [0, max]."""
    p = pred.float().clamp(0, max_val)
    t = target.float().clamp(0, max_val)
    mse = (p - t).pow(2).flatten(-3).mean(-1).clamp_min(1e-12)
    return 10.0 * torch.log10(max_val * max_val / mse)


def _gauss(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    max_val: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """SSIM of each image (Gaussian window, valid region, averaged over channels)."""
    shape = pred.shape[:-3]
    c, h, w = pred.shape[-3:]
    p = pred.float().clamp(0, max_val).reshape(-1, c, h, w)
    t = target.float().clamp(0, max_val).reshape(-1, c, h, w)
    win = min(window, h, w)
    g = _gauss(win, sigma, p.device)
    k = (g[:, None] * g[None, :]).expand(c, 1, win, win).contiguous()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, k, groups=c)

    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    mp, mt = blur(p), blur(t)
    vp = blur(p * p) - mp * mp
    vt = blur(t * t) - mt * mt
    cov = blur(p * t) - mp * mt
    s = ((2 * mp * mt + c1) * (2 * cov + c2)) / ((mp * mp + mt * mt + c1) * (vp + vt + c2))
    return s.flatten(1).mean(1).reshape(shape)
