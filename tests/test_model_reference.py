"""Behaviours where the public VRT reference decided what MODEL.md left open (issue 14),
each on a small hand-computed case."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainer.models import ModelConfig, build_model
from trainer.models.attention import WindowAttention
from trainer.models.ops import DropPath, flow_warp, sine_position_encoding
from trainer.models.presets import FULL, TINY, load_model_config
from trainer.models.spynet import SpyNet
from trainer.models.vrt import AlignStage

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_border_padding_repeats_the_edge_pixel() -> None:
    x = torch.tensor([[[[1.0, 2.0, 3.0]]]])  # [1, 1, 1, 3]
    flow = torch.zeros(1, 2, 1, 3)
    flow[:, 0] = 1.5  # sample at x = 1.5, 2.5, 3.5
    border = flow_warp(x, flow, "border")
    assert border.flatten().tolist() == [2.5, 3.0, 3.0]
    zeros = flow_warp(x, flow)  # x = 2.5: half of pixel 2 and half of the zero outside
    assert zeros.flatten().tolist() == [2.5, 1.5, 0.0]


def test_spynet_warps_its_support_image_with_border_padding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import trainer.models.spynet as spynet_mod

    modes: list[str] = []

    def spy(x: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
        modes.append(padding_mode)
        return flow_warp(x, flow, padding_mode)

    monkeypatch.setattr(spynet_mod, "flow_warp", spy)
    net = SpyNet()
    with torch.no_grad():
        net(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    assert modes == ["border"] * 6  # one warp per pyramid level


def test_mutual_output_placement() -> None:
    """Values = inputs, uniform attention: the frame-1 token positions get the mean of
    frame-1 values (frame-2 queries over frame-1 keys/values), frame 2 the mean of frame 2."""
    torch.manual_seed(0)
    c, win = 4, (2, 1, 2)
    att = WindowAttention(c, win, 1, qkv_bias=True, mutual=True)
    with torch.no_grad():
        att.qkv_mut.weight.zero_()
        att.qkv_mut.bias.zero_()
        att.qkv_mut.weight[2 * c :] = torch.eye(c)  # v = x + pe, q = k = 0
        att.proj.weight.zero_()
        att.proj.bias.zero_()
        att.proj.weight[:, :c] = torch.eye(c)  # output = the mutual half only
    x = torch.zeros(1, 1, 4, c)
    x[0, 0, :2] = 1.0  # frame 1
    x[0, 0, 2:] = 5.0  # frame 2
    with torch.no_grad():
        out = att(x, win, None)[0, 0]
    pe = sine_position_encoding(1, 2, c, torch.device("cpu"))
    frame1 = (1.0 + pe).mean(0)
    frame2 = (5.0 + pe).mean(0)
    torch.testing.assert_close(out[:2], frame1.expand(2, c))
    torch.testing.assert_close(out[2:], frame2.expand(2, c))


def test_sine_encoding_interleaves_sin_and_cos_per_frequency() -> None:
    pe = sine_position_encoding(1, 2, 8, torch.device("cpu"))
    assert pe.shape == (2, 8)
    eps = 1e-6
    y = 1 / (1 + eps) * 2 * math.pi  # the only row
    freq = [1.0, 10000.0 ** (2 / 4)]  # dim/2 = 4 channels per axis: two frequencies
    for col in range(2):
        x = (col + 1) / (2 + eps) * 2 * math.pi
        expect = [
            math.sin(y / freq[0]),
            math.cos(y / freq[0]),
            math.sin(y / freq[1]),
            math.cos(y / freq[1]),
            math.sin(x / freq[0]),
            math.cos(x / freq[0]),
            math.sin(x / freq[1]),
            math.cos(x / freq[1]),
        ]
        torch.testing.assert_close(pe[col], torch.tensor(expect), atol=1e-6, rtol=0)


def _bare_reshape(kind: str, c: int) -> AlignStage:
    cfg = ModelConfig.from_dict(
        {
            "VRT": {
                "EMBED_DIMS": [c] * 7 + [c] * 4,
                "DEPTHS": [2] * 11,
                "NUM_HEADS": [1] * 11,
                "WINDOW_SIZE": [2, 2, 2],
                "DEFORMABLE_GROUPS": 1,
            }
        }
    )
    st = AlignStage(c, 2, 1, kind, 1.0, cfg.VRT, [0.0, 0.0])
    st.reshape_norm, st.reshape_proj = nn.Identity(), nn.Identity()  # type: ignore[assignment]
    return st


def test_down_reshape_orders_the_neighbourhood_column_then_row() -> None:
    x = torch.tensor([[0.0, 1.0], [10.0, 11.0]]).view(1, 1, 2, 2, 1)  # value 10·row + col
    out = _bare_reshape("down", 4)._reshape(x)
    # (col 0, row 0), (col 0, row 1), (col 1, row 0), (col 1, row 1)
    assert out.flatten().tolist() == [0.0, 10.0, 1.0, 11.0]


def test_up_reshape_is_the_inverse_layout() -> None:
    x = torch.arange(4.0).view(1, 1, 1, 1, 4)
    out = _bare_reshape("up", 4)._reshape(x)[0, 0, :, :, 0]  # [row, col]
    assert out.tolist() == [[0.0, 2.0], [1.0, 3.0]]
    y = torch.randn(1, 2, 4, 6, 8)
    down = _bare_reshape("down", 8)._reshape(y)
    torch.testing.assert_close(_bare_reshape("up", 32)._reshape(down), y)


def _rates(stage: nn.Module) -> list[list[float]]:
    return [[blk.drop_path.p for blk in g.blocks] for g in stage.groups]


def test_drop_path_rates_per_block() -> None:
    """Full config, 72 blocks at linspace(0, 0.2, 72): each alignment stage's second group
    repeats the stage's first two rates, as the reference does."""
    cfg = load_model_config(FULL)
    with torch.device("meta"):
        model = build_model(cfg)
    r = [0.2 * k / 71 for k in range(72)]
    stages = model.vrt.stages
    for i in range(7):
        g1, g2 = _rates(stages[i])
        assert g1 == pytest.approx(r[8 * i : 8 * i + 6])
        assert g2 == pytest.approx(r[8 * i : 8 * i + 2])
    assert [p for g in _rates(stages[7]) for p in g] == pytest.approx(r[56:])
    assert all(isinstance(blk.drop_path, DropPath) for g in stages[0].groups for blk in g.blocks)


def test_tiny_config_drop_path_is_zero() -> None:
    with torch.device("meta"):
        model = build_model(load_model_config(TINY))
    assert {blk.drop_path.p for st in model.vrt.stages for g in st.groups for blk in g.blocks} == {
        0.0
    }
