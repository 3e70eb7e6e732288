"""Pure-PyTorch deformable conv and flow warping against direct loop computations."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.models.ops import deform_conv2d, flow_warp, flow_warp_nearest4


def _bilinear(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """img [C,H,W] sampled at (y, x); zero outside, corners outside contribute zero."""
    c, h, w = img.shape
    out = torch.zeros(c, dtype=torch.float64)
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return out
    y0, x0 = math.floor(y), math.floor(x)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[:, yy, xx].double()
    return out


def _reference_deform(x, offset, mask, weight, bias, groups):
    b, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    cg = c // groups
    out = torch.zeros(b, o, h, w, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for wi in range(w):
                cols = torch.zeros(c, kh * kw, dtype=torch.float64)
                for g in range(groups):
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            dy = offset[bi, 2 * (g * kh * kw + k), hi, wi].item()
                            dx = offset[bi, 2 * (g * kh * kw + k) + 1, hi, wi].item()
                            m = mask[bi, g * kh * kw + k, hi, wi].item()
                            v = _bilinear(
                                x[bi, g * cg : (g + 1) * cg],
                                hi - kh // 2 + i + dy,
                                wi - kw // 2 + j + dx,
                            )
                            cols[g * cg : (g + 1) * cg, k] = m * v
                out[bi, :, hi, wi] = (
                    weight.double().reshape(o, c * kh * kw) @ cols.reshape(-1)
                ) + bias.double()
    return out


@pytest.mark.parametrize("groups", [1, 2])
def test_deform_conv_matches_direct_computation(groups: int) -> None:
    g = torch.Generator().manual_seed(0)
    b, c, o, h, w = 2, 4, 3, 5, 6
    x = torch.randn(b, c, h, w, generator=g)
    # offsets large enough to reach outside the image and land between pixels
    offset = torch.randn(b, 2 * groups * 9, h, w, generator=g) * 2.5
    mask = torch.rand(b, groups * 9, h, w, generator=g)
    weight = torch.randn(o, c, 3, 3, generator=g)
    bias = torch.randn(o, generator=g)
    got = deform_conv2d(x, offset, mask, weight, bias, groups)
    ref = _reference_deform(x, offset, mask, weight, bias, groups)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, atol=2e-5, rtol=1e-5)


def test_deform_conv_zero_offset_full_mask_is_plain_conv() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 8, 7, 9, generator=g)
    weight = torch.randn(5, 8, 3, 3, generator=g)
    bias = torch.randn(5, generator=g)
    got = deform_conv2d(
        x, torch.zeros(1, 2 * 4 * 9, 7, 9), torch.ones(1, 4 * 9, 7, 9), weight, bias, 4
    )
    torch.testing.assert_close(
        got, torch.nn.functional.conv2d(x, weight, bias, padding=1), atol=1e-5, rtol=1e-5
    )


def test_deform_conv_stays_fp32_under_autocast() -> None:
    x = torch.randn(1, 4, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = deform_conv2d(
            x, torch.zeros(1, 18, 6, 6), torch.ones(1, 9, 6, 6), torch.randn(2, 4, 3, 3), None, 1
        )
    assert out.dtype == torch.float32


def test_flow_warp_integer_shift_and_zero_padding() -> None:
    x = torch.arange(2 * 5 * 6, dtype=torch.float32).view(1, 2, 5, 6)
    flow = torch.zeros(1, 2, 5, 6)
    flow[:, 0] = 1.0  # dx = +1: output(h, w) = x(h, w+1)
    flow[:, 1] = -2.0  # dy = -2: output(h, w) = x(h-2, ...)
    out = flow_warp(x, flow)
    ref = torch.zeros_like(x)
    ref[:, :, 2:, :5] = x[:, :, :3, 1:]
    torch.testing.assert_close(out, ref)


def test_flow_warp_half_pixel_is_average() -> None:
    x = torch.randn(1, 3, 4, 5)
    flow = torch.zeros(1, 2, 4, 5)
    flow[:, 0] = 0.5
    out = flow_warp(x, flow)
    torch.testing.assert_close(out[..., :4], (x[..., :4] + x[..., 1:]) / 2)


def test_nearest4_takes_the_four_integer_neighbours() -> None:
    x = torch.randn(1, 3, 6, 7)
    flow = torch.zeros(1, 2, 6, 7)
    flow[:, 0], flow[:, 1] = 1.25, 0.5  # x + 1.25 -> 1 / 2 ; y + 0.5 -> 0 / 1
    out = flow_warp_nearest4(x, flow)
    assert out.shape == (1, 12, 6, 7)
    h, w = 2, 3
    # the reference's block order: (floor x, floor y), (floor x, ceil y), (ceil x, floor y),
    # (ceil x, ceil y)
    expect = [x[0, :, h, w + 1], x[0, :, h + 1, w + 1], x[0, :, h, w + 2], x[0, :, h + 1, w + 2]]
    for i, e in enumerate(expect):
        torch.testing.assert_close(out[0, 3 * i : 3 * i + 3, h, w], e)
    assert torch.all(out[0, 6:12, :, 5] == 0)  # ceil(x) = 7 is outside the image
    assert torch.all(out[0, 0:6, :5, 5] != 0)  # floor(x) = 6 is inside
