"""VRT (video restoration transformer), deblurring setting, written from MODEL.md.

Features travel channels-last, ``[B, T, H, W, C]``. Stages 1-7 are: reshape, a group of
mutual+self attention blocks on frame pairs, a group of self attention blocks on the clip
window, then flow-guided deformable parallel warping. Stage 8 reconstructs at full
resolution. Attention runs through ``F.scaled_dot_product_attention`` with the relative
position bias and the shifted-window mask as one additive float mask.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from trainer.models import _timing
from trainer.models.config import NUM_ALIGN_STAGES, ModelConfig, VRTConfig
from trainer.models.ops import (
    GEGLU,
    DropPath,
    deform_conv2d,
    flow_warp,
    flow_warp_nearest4,
    fp32_region,
    sine_position_encoding,
)
from trainer.models.spynet import SpyNet

Window = tuple[int, int, int]

#: additive mask value between tokens of different shifted-window regions
_MASKED = -100.0


# ------------------------------------------------------------------ window helpers


@functools.lru_cache(maxsize=64)
def _rel_index(win: Window, table_win: Window, device: str) -> Tensor:
    """[N·N] rows of the bias table for every token pair of a ``win`` window."""
    return _rel_index_tensor(win, table_win, torch.device(device))


def _rel_index_tensor(win: Window, table_win: Window, device: torch.device | None) -> Tensor:
    """Uncached :func:`_rel_index` on ``device`` (None: the default device, e.g. meta)."""
    d, h, w = (torch.arange(n, device=device) for n in win)
    coords = torch.stack(torch.meshgrid(d, h, w, indexing="ij")).flatten(1)  # [3, N]
    rel = coords[:, :, None] - coords[:, None, :]
    td, th, tw = table_win
    idx = (rel[0] + td - 1) * (2 * th - 1) * (2 * tw - 1) + (rel[1] + th - 1) * (2 * tw - 1)
    idx = idx + rel[2] + tw - 1
    return idx.flatten()


@functools.lru_cache(maxsize=16)
def _shift_mask(size: Window, win: Window, shift: Window, device: str) -> Tensor:
    """[nW, N, N] additive mask keeping attention inside each region of a rolled window
    (the dense reference; the model uses the per-pattern masks of :class:`ShiftMask`)."""
    dev = torch.device(device)
    labels = torch.zeros(size, device=dev)
    cnt = 0
    spans = [
        ((0, -wi), (-wi, -si), (-si, None)) if si else ((0, None),)
        for wi, si in zip(win, shift, strict=True)
    ]
    for d0, d1 in spans[0]:
        for h0, h1 in spans[1]:
            for w0, w1 in spans[2]:
                labels[d0:d1, h0:h1, w0:w1] = cnt
                cnt += 1
    lab = _partition(labels[None, ..., None], win).squeeze(-1)[0]  # [nW, N]
    return (lab[:, None, :] != lab[:, :, None]).float() * _MASKED


def _pattern_masks(win: Window, shift: Window, device: torch.device | None) -> Tensor:
    """[G, N, N] additive masks, one per boundary pattern of a shifted window.

    After the roll, only the last window along a shifted dimension holds two regions (split
    at ``win - shift``). A window's pattern is the set of dimensions in which it is such a
    last window: codes 1..2^k-1 over the k shifted dimensions (0, the interior, needs no
    mask). The masks depend on window and shift only, so each block builds them once.
    """
    dims = [i for i, s in enumerate(shift) if s]
    grids = torch.meshgrid(*(torch.arange(n, device=device) for n in win), indexing="ij")
    split = [(g.flatten() >= win[i] - shift[i]) for i, g in enumerate(grids)]  # [N] each
    masks = []
    for code in range(1, 2 ** len(dims)):
        differ = torch.zeros(len(split[0]), len(split[0]), dtype=torch.bool, device=device)
        for bit, i in enumerate(dims):
            if code >> bit & 1:
                differ |= split[i][:, None] != split[i][None, :]
        masks.append(differ.float() * _MASKED)
    n = len(split[0])
    return torch.stack(masks) if masks else torch.zeros(0, n, n, device=device)


@dataclass(frozen=True)
class ShiftMask:
    """Shifted windows regrouped by mask pattern, so that no per-window mask is built.

    The windows of all samples, flattened to ``B·nW``, are reordered by ``perm`` into
    contiguous groups: the interior windows (position bias alone), then one group per
    boundary pattern, whose mask ``masks[g - 1]`` broadcasts over the group. Attention
    runs on ``[1, B·nW, ...]`` tensors in this order; ``inverse`` restores the original.
    """

    masks: Tensor  # [G, N, N] additive, one per boundary pattern
    counts: tuple[int, ...]  # windows per group: interior, then one per pattern
    perm: Tensor  # [B·nW] window order of the groups
    inverse: Tensor  # [B·nW]: regrouped[:, inverse] is the original order


@functools.lru_cache(maxsize=64)
def _window_groups(
    size: Window, win: Window, shift: Window, batch: int, device: str
) -> tuple[tuple[int, ...], Tensor, Tensor]:
    """(windows per pattern group, perm, inverse) of :class:`ShiftMask` (built on CPU)."""
    cpu = torch.device("cpu")
    dims = [i for i, s in enumerate(shift) if s]
    n_win = [s // w for s, w in zip(size, win, strict=True)]
    ids = torch.meshgrid(*(torch.arange(n, device=cpu) for n in n_win), indexing="ij")
    code = torch.zeros(ids[0].shape, dtype=torch.long, device=cpu)
    for bit, i in enumerate(dims):
        code += (ids[i] == n_win[i] - 1).long() << bit
    code = code.flatten().repeat(batch)  # [B·nW], sample-major like the windows
    perm = torch.argsort(code, stable=True)
    counts = tuple(int(c) for c in torch.bincount(code, minlength=2 ** len(dims)))
    inverse = torch.argsort(perm)
    dev = torch.device(device)
    return counts, perm.to(dev), inverse.to(dev)


def _masked_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
    sm: ShiftMask | None,
    half: slice | None = None,
) -> Tensor:
    """Window attention with an optional [heads, Nq, Nk] bias and shift mask; ``half``
    selects the within-frame quadrant of the mask (mutual attention). With a shift mask,
    q/k/v are ``[1, B·nW, ...]`` in the grouped window order of ``sm``."""
    base = None if bias is None else bias[None]
    if sm is None:
        return _sdpa(q, k, v, base)
    masks = sm.masks if half is None else sm.masks[:, half, half]
    parts, start = [], 0
    for g, cnt in enumerate(sm.counts):
        if cnt:
            m = base
            if g:
                pat = masks[g - 1][None, None]  # [1, 1, Nq, Nk]: broadcasts over the group
                m = pat if base is None else base + pat
            sl = slice(start, start + cnt)
            parts.append(_sdpa(q[:, sl], k[:, sl], v[:, sl], m))
        start += cnt
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def _partition(x: Tensor, win: Window) -> Tensor:
    """[B,D,H,W,C] -> [B, nW, N, C], tokens of a window in (d, h, w) order."""
    b, d, h, w, c = x.shape
    wd, wh, ww = win
    x = x.view(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, wd * wh * ww, c)


def _unpartition(x: Tensor, win: Window, size: Window) -> Tensor:
    b, _, _, c = x.shape
    d, h, w = size
    wd, wh, ww = win
    x = x.view(b, d // wd, h // wh, w // ww, wd, wh, ww, c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, c)


#: head sizes the fused SDPA kernels take with a bias in bf16/fp16 (sm80+): multiples of 8
_HEAD_ALIGN = 8
#: pad q/k/v heads to a multiple of 8: None = only where it buys a fused kernel (CUDA, 16-bit
#: floats); True/False force it (tests run the padded path on CPU)
PAD_HEADS: bool | None = None
#: the fused backward writes a dense [windows, heads, Nq, Nk] gradient for a broadcast bias
#: that needs one; windows go in chunks so that this transient stays below this many bytes
BIAS_GRAD_CHUNK_BYTES = 256 * 2**20


def _pad_heads(q: Tensor) -> bool:
    if q.shape[-1] % _HEAD_ALIGN == 0:
        return False
    if PAD_HEADS is not None:
        return PAD_HEADS
    return q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """SDPA on 4-D tensors; a head size that no fused kernel takes with a bias (e.g. 20) is
    zero-padded to a multiple of 8 with the scale of the true size: q·k, the softmax and
    the first ``d`` output channels are unchanged, the padded ones are sliced off."""
    d = q.shape[-1]
    if _pad_heads(q):
        p = (-d) % _HEAD_ALIGN
        q, k, v = (F.pad(t, (0, p)) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=d**-0.5)
        return out[..., :d]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _attend_chunked(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """:func:`_attend` over chunks of windows when a broadcast bias needs a gradient (#6)."""
    if mask is not None and mask.requires_grad and mask.shape[0] == 1:
        per = mask[0].numel() * mask.element_size()
        step = max(1, BIAS_GRAD_CHUNK_BYTES // per)
        if q.shape[0] > step:
            return torch.cat(
                [
                    _attend(q[i : i + step], k[i : i + step], v[i : i + step], mask)
                    for i in range(0, q.shape[0], step)
                ]
            )
    return _attend(q, k, v, mask)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Attention over windows: q/k/v [B, nW, heads, N, hd], mask [1|nW, heads, Nq, Nk].

    Calls SDPA on 4-D tensors (what the fused kernels take). A per-window mask cannot
    broadcast over B·nW, so batches > 1 then go one sample at a time.
    """
    b, nw = q.shape[:2]
    if mask is not None:
        mask = mask.to(q.dtype)
    if mask is None or mask.shape[0] == 1 or b == 1:

        def flat(t: Tensor) -> Tensor:
            return t.reshape(b * nw, *t.shape[2:])

        out = _attend_chunked(flat(q), flat(k), flat(v), mask)
        return out.view(b, nw, *out.shape[1:])
    return torch.stack([_attend(q[i], k[i], v[i], mask) for i in range(b)])


# ------------------------------------------------------------------ attention blocks


class WindowAttention(nn.Module):
    """Window self attention with a 3-D relative position bias; optionally mutual attention
    between the two frames of a 2-frame window (concatenated, projected 2C -> C)."""

    def __init__(self, dim: int, window: Window, heads: int, qkv_bias: bool, mutual: bool) -> None:
        super().__init__()
        self.dim, self.heads, self.window, self.mutual = dim, heads, window, mutual
        wd, wh, ww = window
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.qkv_self = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(2 * dim if mutual else dim, dim)
        if mutual:
            self.qkv_mut = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        # built at construction (a buffer moves with the model; compiled code reads it)
        self.register_buffer("rel_index", _rel_index_tensor(window, window, None), persistent=False)

    def rel_index_for(self, win: Window, device: torch.device) -> Tensor:
        """Bias-table rows of a ``win`` window (the buffer, unless the clip is smaller)."""
        return self.rel_index if win == self.window else _rel_index(win, self.window, str(device))

    def _qkv(self, lin: nn.Linear, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, nw, n, c = x.shape
        qkv = lin(x).view(b, nw, n, 3, self.heads, c // self.heads).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv.unbind(0)  # one backward stack instead of three select fills
        return q, k, v

    def forward(
        self, x: Tensor, win: Window, mask: ShiftMask | None, rel_index: Tensor | None = None
    ) -> Tensor:
        """x [B, nW, N, C] (N = tokens of window ``win``); mask for shifted windows;
        ``rel_index`` the bias rows of ``win`` (default: looked up)."""
        b, nw, n, c = x.shape
        q, k, v = self._qkv(self.qkv_self, x)
        idx = self.rel_index_for(win, x.device) if rel_index is None else rel_index
        bias = self.relative_position_bias_table[idx].view(n, n, self.heads)
        bias = bias.permute(2, 0, 1).contiguous()  # fused SDPA kernels want a dense mask
        out = _masked_sdpa(q, k, v, bias, mask).transpose(2, 3).reshape(b, nw, n, c)
        if not self.mutual:
            return self.proj(out)
        half = n // 2
        pe = _sine_cached(win[1], win[2], c, str(x.device)).to(x.dtype)
        q, k, v = self._qkv(self.qkv_mut, x + pe.repeat(2, 1))
        # within-frame (spatial) part of the shift mask: the same for both frames
        f1, f2 = slice(0, half), slice(half, None)
        # as in the reference: frame-2 queries over frame-1 keys/values fill the frame-1
        # token positions, frame-1 queries over frame-2 the frame-2 positions
        a1 = _masked_sdpa(q[..., f2, :], k[..., f1, :], v[..., f1, :], None, mask, f1)
        a2 = _masked_sdpa(q[..., f1, :], k[..., f2, :], v[..., f2, :], None, mask, f1)
        mut = torch.cat((a1, a2), dim=3).transpose(2, 3).reshape(b, nw, n, c)
        return self.proj(torch.cat((mut, out), dim=-1))


@functools.lru_cache(maxsize=16)
def _sine_cached(h: int, w: int, dim: int, device: str) -> Tensor:
    return sine_position_encoding(h, w, dim, torch.device(device))


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
            with _timing.absolute(self.timing_logger, self.recompute_region):
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


# ------------------------------------------------------------------ parallel warping


class DeformAlign(nn.Module):
    """Flow-guided modulated deformable conv (3×3): offsets = max_offset·tanh(net) + flow."""

    def __init__(self, dim: int, groups: int, max_offset: float) -> None:
        super().__init__()
        self.groups, self.max_offset = groups, max_offset
        k = 9
        self.conv_offset = nn.Sequential(
            nn.Conv2d(2 * dim + 2, dim, 3, 1, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(dim, dim, 3, 1, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(dim, dim, 3, 1, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(dim, 3 * k * groups, 3, 1, 1),
        )
        nn.init.zeros_(self.conv_offset[-1].weight)
        nn.init.zeros_(self.conv_offset[-1].bias)
        self.weight = nn.Parameter(torch.empty(dim, dim, 3, 3))
        self.bias = nn.Parameter(torch.zeros(dim))
        bound = 1.0 / (dim * k) ** 0.5
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, nbr: Tensor, warped: Tensor, cur: Tensor, flow: Tensor) -> Tensor:
        """nbr/warped/cur [N,C,H,W], flow [N,2,H,W] (neighbour -> current) -> aligned nbr."""
        out = self.conv_offset(torch.cat((warped, cur, flow.to(cur.dtype)), 1))
        with fp32_region(nbr):
            out = out.float()
            n = out.shape[1] // 3
            offset = self.max_offset * torch.tanh(out[:, : 2 * n])
            offset = offset + flow.float().flip(1).repeat(1, n, 1, 1)
            mask = torch.sigmoid(out[:, 2 * n :])
            return deform_conv2d(nbr, offset, mask, self.weight, self.bias, self.groups)


# ------------------------------------------------------------------ stages


class AlignStage(nn.Module):
    """Stages 1-7: reshape, mutual group, self group, parallel warping."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        reshape: str,
        max_offset: float,
        vcfg: VRTConfig,
        drop_paths: list[float],
    ) -> None:
        super().__init__()
        self.reshape = reshape
        if reshape == "none":
            self.reshape_norm = nn.LayerNorm(dim)
        elif reshape == "down":
            self.reshape_norm = nn.LayerNorm(4 * dim)
            self.reshape_proj = nn.Linear(4 * dim, dim)
        else:
            self.reshape_norm = nn.LayerNorm(dim // 4)
            self.reshape_proj = nn.Linear(dim // 4, dim)
        _, wh, ww = vcfg.WINDOW_SIZE
        n1 = int(depth * vcfg.MUTUAL_RATIO)
        self.groups = nn.ModuleList()
        if n1:
            self.groups.append(TMSAGroup(dim, n1, heads, (2, wh, ww), True, vcfg, drop_paths[:n1]))
        if depth - n1:
            # the reference hands group 2 the stage's rates from the start, not the rest
            self.groups.append(
                TMSAGroup(
                    dim,
                    depth - n1,
                    heads,
                    tuple(vcfg.WINDOW_SIZE),
                    False,
                    vcfg,
                    drop_paths[: depth - n1],
                )
            )
        self.pa_deform = DeformAlign(dim, vcfg.DEFORMABLE_GROUPS, max_offset)
        self.pa_fuse = GEGLU(3 * dim, 3 * dim, dim)
        self.ckpt_align = vcfg.USE_CHECKPOINT_ALIGN
        self.recompute_region: str | None = None  # as TMSA's: set while timing is on
        self.timing_logger: Any = None

    def _reshape(self, x: Tensor) -> Tensor:
        b, t, h, w, c = x.shape
        if self.reshape == "down":
            # channels of a 2×2 neighbourhood in (column, row, channel) order, as the reference
            x = x.view(b, t, h // 2, 2, w // 2, 2, c).permute(0, 1, 2, 4, 5, 3, 6)
            return self.reshape_proj(self.reshape_norm(x.reshape(b, t, h // 2, w // 2, 4 * c)))
        if self.reshape == "up":
            x = x.view(b, t, h, w, 2, 2, c // 4).permute(0, 1, 2, 5, 3, 4, 6)
            return self.reshape_proj(self.reshape_norm(x.reshape(b, t, 2 * h, 2 * w, c // 4)))
        return self.reshape_norm(x)

    def forward(self, x: Tensor, flow_b: Tensor, flow_f: Tensor) -> Tensor:
        """x [B,T,H,W,C] at the previous resolution; flows [B,T-1,2,H',W'] at this one."""
        x = self._reshape(x)
        for g in self.groups:
            x = g(x)
        if self.ckpt_align and torch.is_grad_enabled():
            # the deformable alignment saves ~9x its input in fp32: recompute it instead
            return checkpoint(
                self._charged_warp, x, flow_b, flow_f, use_reentrant=False, preserve_rng_state=False
            )
        return self._parallel_warp(x, flow_b, flow_f)

    def _charged_warp(self, x: Tensor, flow_b: Tensor, flow_f: Tensor) -> Tensor:
        if self.recompute_region is not None and _timing.in_backward():
            with _timing.absolute(self.timing_logger, self.recompute_region):
                return self._parallel_warp(x, flow_b, flow_f)
        return self._parallel_warp(x, flow_b, flow_f)

    def _parallel_warp(self, x: Tensor, flow_b: Tensor, flow_f: Tensor) -> Tensor:
        b, t, h, w, c = x.shape
        xc = x.permute(0, 1, 4, 2, 3)  # [B,T,C,H,W]

        def align(nbr: Tensor, cur: Tensor, flow: Tensor) -> Tensor:
            nbr = nbr.reshape(b * (t - 1), c, h, w)
            cur = cur.reshape(b * (t - 1), c, h, w)
            flow = flow.reshape(b * (t - 1), 2, h, w)
            out = self.pa_deform(nbr, flow_warp(nbr, flow), cur, flow)
            return out.view(b, t - 1, c, h, w).to(x.dtype)

        zero = xc.new_zeros(b, 1, c, h, w)
        back = torch.cat((align(xc[:, 1:], xc[:, :-1], flow_b), zero), 1)  # from frame i+1
        fwd = torch.cat((zero, align(xc[:, :-1], xc[:, 1:], flow_f)), 1)  # from frame i-1
        y = torch.cat((xc, back, fwd), 2).permute(0, 1, 3, 4, 2)
        return self.pa_fuse(y)


class ReconStage(nn.Module):
    """Stage 8: LayerNorm + Linear to the reconstruction width, then residual groups."""

    def __init__(self, in_dim: int, vcfg: VRTConfig, drop_paths: list[float]) -> None:
        super().__init__()
        dims, depths, heads = vcfg.EMBED_DIMS, vcfg.DEPTHS, vcfg.NUM_HEADS
        dim = dims[NUM_ALIGN_STAGES]
        self.reshape_norm = nn.LayerNorm(in_dim)
        self.reshape_proj = nn.Linear(in_dim, dim)
        _, wh, ww = vcfg.WINDOW_SIZE
        self.groups = nn.ModuleList()
        off = 0
        for j in range(NUM_ALIGN_STAGES, len(depths)):
            win = (1, wh, ww) if j in vcfg.INDEP_RECONSTS else tuple(vcfg.WINDOW_SIZE)
            self.groups.append(
                TMSAGroup(
                    dim, depths[j], heads[j], win, False, vcfg, drop_paths[off : off + depths[j]]
                )
            )
            off += depths[j]

    def forward(self, x: Tensor) -> Tensor:
        x = self.reshape_proj(self.reshape_norm(x))
        for g in self.groups:
            x = g(x)
        return x


# ------------------------------------------------------------------ flow, input, head


class FlowNet(nn.Module):
    """SpyNet on neighbouring frames, both directions, at scales 1, 1/2, 1/4, 1/8."""

    def __init__(self) -> None:
        super().__init__()
        self.spynet = SpyNet()

    def forward(self, rgb: Tensor) -> tuple[Tensor, ...]:
        """rgb [B,T,3,H,W] -> (backward flows ×4 scales, forward flows ×4 scales), each
        [B,T-1,2,h,w]; backward flow i maps frame i+1 onto frame i, forward the reverse."""
        b, t, c, h, w = rgb.shape
        a = rgb[:, :-1].reshape(-1, c, h, w)
        z = rgb[:, 1:].reshape(-1, c, h, w)
        flows = self.spynet(torch.cat((a, z)), torch.cat((z, a)))
        out_b, out_f = [], []
        for f in flows:
            fb, ff = f.view(2, b, t - 1, 2, *f.shape[2:]).unbind(0)
            out_b.append(fb)
            out_f.append(ff)
        return (*out_b, *out_f)


class InputAlign(nn.Module):
    """Image pre-alignment (4 nearest samples of each flow-warped neighbour) + first conv."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_first = nn.Conv3d(27, dim, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, rgb: Tensor, flow_b: Tensor, flow_f: Tensor) -> Tensor:
        b, t, c, h, w = rgb.shape
        n = b * (t - 1)
        back = flow_warp_nearest4(rgb[:, 1:].reshape(n, c, h, w), flow_b.reshape(n, 2, h, w))
        fwd = flow_warp_nearest4(rgb[:, :-1].reshape(n, c, h, w), flow_f.reshape(n, 2, h, w))
        zero = rgb.new_zeros(b, 1, 4 * c, h, w)
        back = torch.cat((back.view(b, t - 1, 4 * c, h, w), zero), 1)
        fwd = torch.cat((zero, fwd.view(b, t - 1, 4 * c, h, w)), 1)
        x = torch.cat((rgb, back, fwd), 2).transpose(1, 2)  # [B,27,T,H,W]
        return self.conv_first(x).permute(0, 2, 3, 4, 1)  # [B,T,H,W,C]


class Head(nn.Module):
    """LayerNorm, Linear back to the stage width, + first-conv features, conv to RGB,
    + input (global residual)."""

    def __init__(self, recon_dim: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(recon_dim)
        self.conv_after_body = nn.Linear(recon_dim, dim)
        self.conv_last = nn.Conv3d(dim, 3, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, x: Tensor, first: Tensor, rgb: Tensor) -> Tensor:
        x = self.conv_after_body(self.norm(x)) + first
        out = self.conv_last(x.permute(0, 4, 1, 2, 3)).transpose(1, 2)  # [B,T,3,H,W]
        return out.to(rgb.dtype) + rgb


class VRT(nn.Module):
    """The VRT core; with ``fusions`` (spike branch) its stages 1-4 outputs are fused with
    the spike features passed as extra forward arguments."""

    def __init__(self, cfg: ModelConfig, fusions: nn.ModuleList | None = None) -> None:
        super().__init__()
        v = cfg.VRT
        dim = v.EMBED_DIMS[0]
        nb = sum(v.DEPTHS)
        dpr = [x.item() for x in torch.linspace(0, v.DROP_PATH_RATE, nb, device="cpu")]
        self.flow = FlowNet()
        if cfg.FLOW_WEIGHTS:
            self.flow.spynet.load_weights(cfg.FLOW_WEIGHTS)
        self.prealign = InputAlign(dim)
        reshapes = ["none", "down", "down", "down", "up", "up", "up"]
        scales = [1, 2, 4, 8, 4, 2, 1]
        self.stages = nn.ModuleList()
        off = 0
        for i in range(NUM_ALIGN_STAGES):
            self.stages.append(
                AlignStage(
                    dim,
                    v.DEPTHS[i],
                    v.NUM_HEADS[i],
                    reshapes[i],
                    v.MAX_RESIDUE_MAGNITUDE / scales[i],
                    v,
                    dpr[off : off + v.DEPTHS[i]],
                )
            )
            off += v.DEPTHS[i]
        self.stages.append(ReconStage(dim, v, dpr[off:]))
        self.fusions = fusions if fusions is not None else nn.ModuleList()
        self.head = Head(v.EMBED_DIMS[NUM_ALIGN_STAGES], dim)
        self._flow_scale = [0, 1, 2, 3, 2, 1, 0]

    def forward(self, rgb: Tensor, *spike_feats: Tensor) -> Tensor:
        region = _timing.region
        with region("flow"):
            flows = self.flow(rgb)
        fb, ff = flows[:4], flows[4:]
        with region("prealign"):
            first = self.prealign(rgb, fb[0], ff[0])
        x = first
        skips: list[Tensor] = []
        for i, stage in enumerate(self.stages[:NUM_ALIGN_STAGES]):
            s = self._flow_scale[i]
            if i == 5:
                x = x + skips[2]
            elif i == 6:
                x = x + skips[1]
            with region(f"stage{i + 1}"):
                x = stage(x, fb[s], ff[s])
            if i < 4:
                if len(self.fusions):
                    with region(f"fusion{i + 1}"):
                        x = self.fusions[i](x, spike_feats[i])
                skips.append(x)
        x = x + skips[0]
        with region("stage8"):
            x = self.stages[NUM_ALIGN_STAGES](x)
        with region("head"):
            return self.head(x, first, rgb)
