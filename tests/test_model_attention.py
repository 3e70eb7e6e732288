"""Window attention against explicit softmax maths; shifted-window masks and bias indices."""

from __future__ import annotations

import pytest
import torch
from _attention_ref import softmax_attn as _softmax_attn

from trainer.models.attention import WindowAttention, _partition, _rel_index, _shift_mask
from trainer.models.ops import sine_position_encoding
from trainer.models.tmsa import TMSA

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _heads(x, h):
    n, c = x.shape
    return x.view(n, h, c // h).transpose(0, 1)  # [h, n, hd]


def test_mutual_window_attention_matches_explicit_maths() -> None:
    torch.manual_seed(0)
    c, h, win = 8, 2, (2, 2, 3)
    att = WindowAttention(c, win, h, qkv_bias=True, mutual=True)
    n = 2 * 2 * 3
    x = torch.randn(1, 1, n, c)
    got = att(x, win, None)[0, 0]
    xs = x[0, 0]
    q, k, v = (_heads(t, h) for t in att.qkv_self(xs).chunk(3, -1))
    # relative position bias, computed from coordinates directly
    coords = [(d, i, j) for d in range(2) for i in range(2) for j in range(3)]
    table = att.relative_position_bias_table
    bias = torch.empty(h, n, n)
    for a, (d1, i1, j1) in enumerate(coords):
        for b, (d2, i2, j2) in enumerate(coords):
            row = ((d1 - d2 + 1) * 3 + (i1 - i2 + 1)) * 5 + (j1 - j2 + 2)
            bias[:, a, b] = table[row]
    self_out = _softmax_attn(q, k, v, bias).transpose(0, 1).reshape(n, c)
    pe = sine_position_encoding(2, 3, c, x.device).repeat(2, 1)
    qm, km, vm = (_heads(t, h) for t in att.qkv_mut(xs + pe).chunk(3, -1))
    half = n // 2
    # the reference's placement: frame-2 queries over frame-1 keys/values at the frame-1
    # token positions, and vice versa
    f1 = _softmax_attn(qm[:, half:], km[:, :half], vm[:, :half])
    f2 = _softmax_attn(qm[:, :half], km[:, half:], vm[:, half:])
    mut = torch.cat((f1, f2), 1).transpose(0, 1).reshape(n, c)
    ref = att.proj(torch.cat((mut, self_out), -1))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_shift_mask_regions() -> None:
    size, win, shift = (4, 8, 8), (2, 4, 4), (1, 2, 2)
    mask = _shift_mask(size, win, shift, "cpu")
    assert mask.shape == (8, 32, 32)
    assert torch.count_nonzero(mask[0]) == 0  # first window: nothing wrapped
    # last window wraps in all three dims: 8 regions of 4 tokens, each attends to its own
    allowed = (mask[-1] == 0).sum(-1)
    assert torch.all(allowed == 4)
    # masks are symmetric: a pair is masked both ways
    assert torch.equal(mask, mask.transpose(1, 2))


def test_rel_index_is_antisymmetric_around_the_centre() -> None:
    win = (2, 3, 4)
    idx = _rel_index(win, win, "cpu").view(24, 24)
    centre = ((2 - 1) * 5 + (3 - 1)) * 7 + (4 - 1)
    assert torch.all(idx.diagonal() == centre)
    assert torch.all(idx + idx.T == 2 * centre)
    assert int(idx.max()) < 3 * 5 * 7
    small = _rel_index((1, 2, 2), (2, 3, 4), "cpu")  # smaller actual window, same table
    assert int(small.max()) < 3 * 5 * 7 and int(small.min()) >= 0


def test_shifted_block_equals_unshifted_on_rolled_input_inside_a_window() -> None:
    """With the shift mask, a token's output depends only on tokens of its own region."""
    torch.manual_seed(0)
    blk = TMSA(8, 2, (2, 4, 4), (1, 2, 2), False, 2.0, True, 0.0, False, False).eval()
    x = torch.randn(1, 4, 8, 8, 8)
    with torch.no_grad():
        base = blk._attn_path(x)
        y = x.clone()
        y[:, :, 0, 0] += 3 * torch.randn(8)  # tokens at the corner: shifted windows wrap it
        moved = blk._attn_path(y)
    changed = (moved - base).abs().sum(-1) > 1e-5  # [1, D, H, W]
    # rolled by (1, 2, 2), token (d, 0, 0) shares a window region only with tokens of
    # rows/cols 0-1 (the wrapped corner), never with rows 2-5
    assert not changed[0, :, 2:6, :].any() and not changed[0, :, :, 2:6].any()
    assert changed[0, :, 0, 0].all()


def test_partition_round_trip() -> None:
    from trainer.models.attention import _unpartition

    x = torch.randn(2, 4, 8, 12, 3)
    w = _partition(x, (2, 4, 4))
    assert w.shape == (2, 2 * 2 * 3, 32, 3)
    assert torch.equal(_unpartition(w, (2, 4, 4), (4, 8, 12)), x)


@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("quadrant", [False, True])
def test_grouped_shift_masks_equal_dense_mask(b: int, quadrant: bool) -> None:
    """Windows grouped by mask pattern (interior: bias only; each boundary pattern: bias +
    one broadcast mask), then put back in order == one dense per-window mask."""
    from trainer.models.attention import ShiftMask, _masked_sdpa, _pattern_masks, _window_groups

    torch.manual_seed(0)
    size, win, shift = (4, 8, 12), (2, 4, 4), (1, 2, 2)
    dense = _shift_mask(size, win, shift, "cpu")  # [nW, N, N]
    counts, perm, inverse = _window_groups(size, win, shift, b, "cpu")
    masks = _pattern_masks(win, shift, torch.device("cpu"))
    assert masks.shape[0] == 7 and len(counts) == 8 and counts[0] == 1 * 1 * 2 * b
    sm = ShiftMask(masks, counts, perm, inverse)
    nw, n, heads, hd = dense.shape[0], dense.shape[1], 2, 4
    half = slice(0, n // 2) if quadrant else None
    nq = n // 2 if quadrant else n
    q, k, v = (torch.randn(b, nw, heads, nq, hd) for _ in range(3))
    bias = None if quadrant else torch.randn(heads, n, n)

    def grouped(t):
        return t.reshape(1, b * nw, heads, nq, hd)[:, perm]

    got = _masked_sdpa(grouped(q), grouped(k), grouped(v), bias, sm, half)
    got = got[:, inverse].view(b, nw, heads, nq, hd)
    m = dense[:, None] if half is None else dense[:, None, half, half]
    full = m if bias is None else bias[None] + m
    ref = _softmax_attn(q, k, v, full[None])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
