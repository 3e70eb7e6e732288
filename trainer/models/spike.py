"""The spike branch: 3-D encoder, temporal self attention per scale, fusion into VRT."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.models import _timing
from trainer.models.config import SpikeConfig

NUM_SCALES = 4


class _Res3D(nn.Module):
    """conv-ReLU-conv + identity, ReLU."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(ch, ch, 3, 1, 1)
        self.conv2 = nn.Conv3d(ch, ch, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class SpikeEncoder3D(nn.Module):
    """[B,T,K,H,W] spike bins -> four feature maps [B,W,T,H/2^i,W/2^i], i = 0..3."""

    def __init__(self, scfg: SpikeConfig) -> None:
        super().__init__()
        w = scfg.WIDTH
        scales = []
        for i in range(NUM_SCALES):
            conv = nn.Conv3d(scfg.BINS, w, 3, 1, 1) if i == 0 else nn.Conv3d(w, w, 3, (1, 2, 2), 1)
            scales.append(
                nn.Sequential(conv, nn.ReLU(), *(_Res3D(w) for _ in range(scfg.RES_BLOCKS)))
            )
        self.scales = nn.ModuleList(scales)

    def forward(self, spikes: Tensor) -> tuple[Tensor, ...]:
        x = spikes.permute(0, 2, 1, 3, 4)  # [B,K,T,H,W]
        out = []
        for s in self.scales:
            x = s(x)
            out.append(x)
        return tuple(out)


class MultiHeadAttention(nn.Module):
    """Multi-head attention over short sequences through SDPA (keys may be another width)."""

    def __init__(self, dim: int, heads: int, kdim: int | None = None) -> None:
        super().__init__()
        kdim = kdim or dim
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(kdim, dim)
        self.v = nn.Linear(kdim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, q: Tensor, kv: Tensor) -> Tensor:
        n, t, c = q.shape
        h = self.heads

        def split(x: Tensor) -> Tensor:
            return x.view(n, -1, h, c // h).transpose(1, 2)

        o = F.scaled_dot_product_attention(split(self.q(q)), split(self.k(kv)), split(self.v(kv)))
        return self.out(o.transpose(1, 2).reshape(n, t, c))


def _mlp(dim: int, ratio: float) -> nn.Sequential:
    hidden = int(dim * ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def _chunks(n_pixels: int, t: int, budget: int) -> list[tuple[int, int]]:
    step = max(1, budget // max(t, 1))
    return [(i, min(i + step, n_pixels)) for i in range(0, n_pixels, step)]


class SpikeTemporalSA(nn.Module):
    """Per-pixel self attention along time (pre-norm MHA + MLP), in chunks of pixels."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, chunk_tokens: int) -> None:
        super().__init__()
        self.chunk_tokens = chunk_tokens
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, mlp_ratio)
        self.last_chunks = 0

    def _block(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y)
        return x + self.mlp(self.norm2(x))

    def forward(self, feat: Tensor) -> Tensor:
        """feat [B,C,T,h,w] -> same shape."""
        b, c, t, h, w = feat.shape
        tok = feat.permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)
        parts = []
        chunks = _chunks(tok.shape[0], t, self.chunk_tokens)
        for a, z in chunks:
            with _timing.region("chunk"):
                parts.append(self._block(tok[a:z]))
        self.last_chunks = len(chunks)
        out = torch.cat(parts) if len(parts) > 1 else parts[0]
        return out.view(b, h, w, t, c).permute(0, 4, 3, 1, 2)


class SpikeTSA(nn.Module):
    """One :class:`SpikeTemporalSA` per encoder scale."""

    def __init__(self, scfg: SpikeConfig) -> None:
        super().__init__()
        self.scales = nn.ModuleList(
            SpikeTemporalSA(scfg.WIDTH, scfg.TSA_HEADS, scfg.TSA_MLP_RATIO, scfg.TSA_CHUNK_TOKENS)
            for _ in range(NUM_SCALES)
        )

    def forward(self, *feats: Tensor) -> tuple[Tensor, ...]:
        out = []
        for m, f in zip(self.scales, feats, strict=True):
            out.append(m(f))
        return tuple(out)


class TemporalFusion(nn.Module):
    """Temporal cross attention: RGB features query the spike features of the same pixel
    along T; X = RGB + attn; X += FFN(LN X)."""

    def __init__(
        self, dim: int, spike_dim: int, heads: int, mlp_ratio: float, chunk_tokens: int
    ) -> None:
        super().__init__()
        self.chunk_tokens = chunk_tokens
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(spike_dim)
        self.attn = MultiHeadAttention(dim, heads, kdim=spike_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = _mlp(dim, mlp_ratio)

    def _block(self, q: Tensor, kv: Tensor) -> Tensor:
        x = q + self.attn(self.norm_q(q), self.norm_kv(kv))
        return x + self.ffn(self.norm2(x))

    def forward(self, x: Tensor, spike: Tensor) -> Tensor:
        """x [B,T,h,w,C] (RGB features), spike [B,Cs,T,h,w] -> [B,T,h,w,C]."""
        b, t, h, w, c = x.shape
        if spike.shape[2:] != (t, h, w):
            raise ValueError(
                f"spike features {tuple(spike.shape)} do not match RGB features {tuple(x.shape)}"
            )
        q = x.permute(0, 2, 3, 1, 4).reshape(b * h * w, t, c)
        kv = spike.permute(0, 3, 4, 2, 1).reshape(b * h * w, t, spike.shape[1])
        parts = [self._block(q[a:z], kv[a:z]) for a, z in _chunks(q.shape[0], t, self.chunk_tokens)]
        out = torch.cat(parts) if len(parts) > 1 else parts[0]
        return out.view(b, h, w, t, c).permute(0, 3, 1, 2, 4)
