"""Pure-PyTorch building blocks: flow warping, modulated deformable conv, stochastic depth."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GEGLU",
    "DropPath",
    "deform_conv2d",
    "flow_warp",
    "flow_warp_nearest4",
    "fp32_region",
    "sine_position_encoding",
]


def fp32_region(t: Tensor) -> contextlib.AbstractContextManager[object]:
    """Autocast off for ``t``'s device type (a no-op on devices without autocast, e.g. meta)."""
    if t.device.type in ("cuda", "cpu", "xpu", "mps"):
        return torch.autocast(t.device.type, enabled=False)
    return contextlib.nullcontext()


def _grid(flow: Tensor) -> Tensor:
    """Normalised sampling grid (align_corners=False convention) for pixel + flow."""
    _n, _, h, w = flow.shape
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype).view(1, h, 1)
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, 1, w)
    px = xs + flow[:, 0]
    py = ys + flow[:, 1]
    return torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), dim=-1)


def flow_warp(x: Tensor, flow: Tensor, padding_mode: str = "zeros") -> Tensor:
    """Warp ``x`` [N,C,H,W] by ``flow`` [N,2,H,W] (dx, dy in pixels): bilinear, zeros outside
    (``padding_mode="border"``: the nearest edge pixel outside, as SpyNet's internal warp).

    Computed in fp32 whatever the autocast state; returns x's dtype.
    """
    with fp32_region(x):
        out = F.grid_sample(
            x.float(),
            _grid(flow.float()),
            mode="bilinear",
            padding_mode=padding_mode,
            align_corners=False,
        )
    return out.to(x.dtype)


def flow_warp_nearest4(x: Tensor, flow: Tensor) -> Tensor:
    """The four integer neighbours of each flow target, concatenated in the reference's
    order: (floor x, floor y), (floor x, ceil y), (ceil x, floor y), (ceil x, ceil y).

    Returns [N, 4C, H, W]; samples outside the image are zero.
    """
    _n, _c, h, w = x.shape
    with fp32_region(x):
        xf, ff = x.float(), flow.float()
        ys = torch.arange(h, device=x.device, dtype=torch.float32).view(1, h, 1)
        xs = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, w)
        px, py = xs + ff[:, 0], ys + ff[:, 1]
        outs = []
        for fx in (torch.floor, torch.ceil):
            for fy in (torch.floor, torch.ceil):
                gx, gy = fx(px), fy(py)
                grid = torch.stack(((2 * gx + 1) / w - 1, (2 * gy + 1) / h - 1), dim=-1)
                outs.append(
                    F.grid_sample(
                        xf, grid, mode="nearest", padding_mode="zeros", align_corners=False
                    )
                )
        out = torch.cat(outs, dim=1)
    return out.to(x.dtype)


def deform_conv2d(
    x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor | None, groups: int
) -> Tensor:
    """Modulated deformable convolution (stride 1, 'same' padding, dilation 1).

    x [B,C,H,W]; weight [O,C,kh,kw]; offset [B, 2·G·kh·kw, H, W] laid out as
    (group, kernel position, (dy, dx)); mask [B, G·kh·kw, H, W] as (group, kernel position).
    Each kernel tap of each deformable group samples x bilinearly at
    (h + i - kh//2 + dy, w + j - kw//2 + dx), zeros outside, times the mask; the samples are
    contracted with the weight. Runs in fp32 (also under autocast); returns fp32.
    Memory: holds kh·kw copies of x.
    """
    with fp32_region(x):
        x, offset, mask = x.float(), offset.float(), mask.float()
        weight = weight.float()
        b, c, h, w = x.shape
        o, _, kh, kw = weight.shape
        k = kh * kw
        g = groups
        off = offset.view(b, g, k, 2, h, w)
        ky = torch.arange(kh, device=x.device, dtype=x.dtype) - kh // 2
        kx = torch.arange(kw, device=x.device, dtype=x.dtype) - kw // 2
        ky = ky.view(kh, 1).expand(kh, kw).reshape(1, 1, k, 1, 1)
        kx = kx.view(1, kw).expand(kh, kw).reshape(1, 1, k, 1, 1)
        ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, 1, h, 1)
        xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, 1, w)
        py = ys + ky + off[:, :, :, 0]
        px = xs + kx + off[:, :, :, 1]
        grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), dim=-1)
        grid = grid.view(b * g, k * h, w, 2)
        samp = F.grid_sample(
            x.reshape(b * g, c // g, h, w),
            grid,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        samp = samp.view(b, g, c // g, k, h, w) * mask.view(b, g, 1, k, h, w)
        out = torch.matmul(weight.reshape(o, c * k), samp.reshape(b, c * k, h * w))
        out = out.view(b, o, h, w)
        if bias is not None:
            out = out + bias.float().view(1, o, 1, 1)
    return out


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GEGLU(nn.Module):
    """fc2(GELU(fc11 x) · fc12 x): the gated feed-forward used throughout VRT."""

    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__()
        self.fc11 = nn.Linear(dim, hidden)
        self.fc12 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc11(x)) * self.fc12(x))


def sine_position_encoding(h: int, w: int, dim: int, device: torch.device | None) -> Tensor:
    """Fixed 2-D sine/cosine encoding [h·w, dim] of normalised positions: dim/2 channels for
    y then dim/2 for x, each interleaved per frequency (sin f0, cos f0, sin f1, cos f1, ...)
    as in the reference. Frequency j of an axis with n channels is 10000^(2j/n)."""
    half = dim // 2
    eps = 1e-6
    ys = (torch.arange(1, h + 1, device=device, dtype=torch.float32) / (h + eps)) * 2 * math.pi
    xs = (torch.arange(1, w + 1, device=device, dtype=torch.float32) / (w + eps)) * 2 * math.pi

    def axis(pos: Tensor, n: int) -> Tensor:  # [len] -> [len, n]
        i = torch.arange(n, device=device, dtype=torch.float32)
        e = pos[:, None] / 10000.0 ** (2 * (i // 2) / half)
        return torch.where(i.remainder(2) == 0, e.sin(), e.cos())

    ey, ex = axis(ys, half), axis(xs, dim - half)
    pe = torch.cat((ey[:, None, :].expand(h, w, -1), ex[None, :, :].expand(h, w, -1)), dim=2)
    return pe.reshape(h * w, dim)
