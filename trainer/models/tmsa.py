"""Temporal mutual self attention (TMSA) blocks, and the groups of them that VRT's stages run.

A block is ``x += attn(LN x); x += GEGLU(LN x)`` on channels-last ``[B, T, H, W, C]``
features, its attention over (shifted) windows (:mod:`trainer.models.attention`). Each path
can be checkpointed and regionally compiled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from trainer.models import _timing
from trainer.models.attention import (
    ShiftMask,
    Window,
    WindowAttention,
    _partition,
    _pattern_masks,
    _unpartition,
    _window_groups,
)
from trainer.models.config import VRTConfig
from trainer.models.ops import GEGLU, DropPath


class TMSA(nn.Module):
    """Temporal mutual self attention block: x += attn(LN x); x += GEGLU(LN x).

    The attention and the MLP paths are each optionally checkpointed (non-reentrant), with
    the residual adds outside. While timing is on, ``recompute_region`` names the backward
    region that the re-run forward work of a checkpoint is charged to.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        window: Window,
        shift: Window,
        mutual: bool,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
        ckpt_attn: bool,
        ckpt_ffn: bool,
    ) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.ckpt_attn, self.ckpt_ffn = ckpt_attn, ckpt_ffn
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads, qkv_bias, mutual)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = GEGLU(dim, int(dim * mlp_ratio))
        self.recompute_region: str | None = None
        self.timing_logger: Any = None
        # shift masks of the configured window, built once (a smaller clip builds its own)
        self.register_buffer(
            "shift_masks",
            _pattern_masks(window, shift, None) if any(shift) else None,
            persistent=False,
        )
        self._attn_compiled: Callable[..., Tensor] | None = None
        self._ffn_compiled: Callable[[Tensor], Tensor] | None = None

    def compile_paths(self, **kwargs: Any) -> None:
        """Regional ``torch.compile`` of the attention and MLP paths (kwargs go to it).

        The mask layout, the checkpoint and the timing regions stay outside the compiled
        code; parameters and buffers are unchanged (state dicts load either way).
        """
        self._attn_compiled = torch.compile(self._attn_windows, **kwargs)
        self._ffn_compiled = torch.compile(self._ffn_path, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self._run(self._attn_path, x, self.ckpt_attn))
        return x + self.drop_path(self._run(self._ffn_compiled or self._ffn_path, x, self.ckpt_ffn))

    def _run(self, fn: Callable[[Tensor], Tensor], x: Tensor, ckpt: bool) -> Tensor:
        if ckpt and torch.is_grad_enabled():
            # no RNG runs inside (DropPath is outside): nothing to stash and restore
            return checkpoint(self._charged, fn, x, use_reentrant=False, preserve_rng_state=False)
        return fn(x)

    def _charged(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        if self.recompute_region is not None and _timing.in_backward():
            with _timing.recompute(self.timing_logger, self.recompute_region):
                return fn(x)
        return fn(x)

    def _ffn_path(self, x: Tensor) -> Tensor:
        return self.mlp(self.norm2(x))

    def _attn_path(self, x: Tensor) -> Tensor:
        b, d, h, w, _c = x.shape
        win = tuple(min(wi, si) for wi, si in zip(self.window, (d, h, w), strict=True))
        shift = tuple(
            0 if si <= wi else sh
            for wi, si, sh in zip(self.window, (d, h, w), self.shift, strict=True)
        )
        mask = None
        if any(shift):
            size = tuple(s + (-s) % wi for s, wi in zip((d, h, w), win, strict=True))
            counts, perm, inverse = _window_groups(size, win, shift, b, str(x.device))
            masks = (
                self.shift_masks
                if win == self.window and shift == self.shift
                else _pattern_masks(win, shift, x.device)
            )
            mask = ShiftMask(masks, counts, perm, inverse)
        idx = self.attn.rel_index_for(win, x.device)  # looked up outside compiled code
        return (self._attn_compiled or self._attn_windows)(x, win, shift, mask, idx)

    def _attn_windows(
        self, x: Tensor, win: Window, shift: Window, mask: ShiftMask | None, idx: Tensor
    ) -> Tensor:
        b, d, h, w, c = x.shape
        y = self.norm1(x)
        pd, ph, pw = ((-s) % wi for s, wi in zip((d, h, w), win, strict=True))
        if pd or ph or pw:
            y = F.pad(y, (0, 0, 0, pw, 0, ph, 0, pd))
        size = (d + pd, h + ph, w + pw)
        if mask is not None:
            y = torch.roll(y, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        yw = _partition(y, win)
        if mask is not None:  # all samples' windows, grouped by mask pattern
            nw, n = yw.shape[1:3]
            yw = yw.reshape(1, b * nw, n, c).index_select(1, mask.perm)
            yw = self.attn(yw, win, mask, idx).index_select(1, mask.inverse)
            yw = yw.view(b, nw, n, c)
        else:
            yw = self.attn(yw, win, None, idx)
        y = _unpartition(yw, win, size)
        if mask is not None:
            y = torch.roll(y, shifts=shift, dims=(1, 2, 3))
        if pd or ph or pw:
            y = y[:, :d, :h, :w]
        return y


class TMSAGroup(nn.Module):
    """Blocks of one window size (odd blocks shifted by half a window), then Linear and a
    residual add around the whole group."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        window: Window,
        mutual: bool,
        vcfg: VRTConfig,
        drop_paths: list[float],
    ) -> None:
        super().__init__()
        shift = tuple(wi // 2 for wi in window)
        self.blocks = nn.ModuleList(
            TMSA(
                dim,
                heads,
                window,
                (0, 0, 0) if i % 2 == 0 else shift,
                mutual,
                vcfg.MLP_RATIO,
                vcfg.QKV_BIAS,
                drop_paths[i],
                vcfg.USE_CHECKPOINT_ATTN,
                vcfg.USE_CHECKPOINT_FFN,
            )
            for i in range(depth)
        )
        self.linear = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for blk in self.blocks:
            y = blk(y)
        return x + self.linear(y)
