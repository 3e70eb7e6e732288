"""Window attention of VRT's TMSA blocks: windows, shifted-window masks and the SDPA paths.

A clip's channels-last tokens ``[B, D, H, W, C]`` are cut into 3-D windows. Attention runs
through ``F.scaled_dot_product_attention`` with the relative position bias and the
shifted-window mask as one additive float mask: shifted windows are regrouped by mask
pattern (:class:`ShiftMask`), head sizes that no fused kernel takes are zero-padded
(:data:`PAD_HEADS`), and a broadcast bias that needs a gradient goes in chunks of windows
(:data:`BIAS_GRAD_CHUNK_BYTES`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.models.ops import sine_position_encoding

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


# ------------------------------------------------------------------ SDPA paths


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


# ------------------------------------------------------------------ window attention


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
        # the mutual attention's position encoding of a full window, likewise: regionally
        # compiled code must not call the lru_cache of _sine_cached (Dynamo traces through
        # the cache and warns of "potential silent incorrectness")
        pe = sine_position_encoding(wh, ww, dim, None) if mutual else None
        self.register_buffer("pe", pe, persistent=False)

    def rel_index_for(self, win: Window, device: torch.device) -> Tensor:
        """Bias-table rows of a ``win`` window (the buffer, unless the clip is smaller)."""
        return self.rel_index if win == self.window else _rel_index(win, self.window, str(device))

    def pe_for(self, win: Window, device: torch.device) -> Tensor:
        """The mutual attention's position encoding of a ``win`` window: the buffer, unless
        the clip is smaller (then computed; cached outside compiled code)."""
        if self.pe is not None and (win[1], win[2]) == (self.window[1], self.window[2]):
            return self.pe
        if torch.compiler.is_compiling():
            return sine_position_encoding(win[1], win[2], self.dim, device)
        return _sine_cached(win[1], win[2], self.dim, str(device))

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
        pe = self.pe_for(win, x.device).to(x.dtype)
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
