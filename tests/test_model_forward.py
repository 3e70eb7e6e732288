"""The VRT + spike model: shapes, parameter counts, gradients, checkpointing, weights."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from stagewatch.errors import ConfigError
from trainer.models import (
    ModelConfig,
    build_model,
    flow_and_deform_parameters,
    other_parameters,
    param_groups,
    set_flow_and_deform_trainable,
)
from trainer.models.presets import FULL, TINY, example_inputs, load_model_config
from trainer.models.spynet import SpyNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg(**vrt: object) -> ModelConfig:
    cfg = load_model_config(TINY)
    for k, v in vrt.items():
        setattr(cfg.VRT, k, v)
    return cfg


def inputs(cfg: ModelConfig, b: int, t: int, h: int, w: int, seed: int = 0):
    return example_inputs(cfg, b, t, h, w, seed)


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Small noise on every parameter, so zero-initialised layers pass gradients on."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)


# ---------------------------------------------------------------- parameter counts

#: MODEL.md's measured figures for the deblurring VRT and the 96-wide spike branch (K = 5)
MODEL_MD = {
    "vrt/flow": 1_440_300,
    "vrt/stage1": 2_027_712,
    "vrt/stage2": 2_065_248,
    "vrt/stage3": 2_065_248,
    "vrt/stage4": 2_065_248,
    "vrt/stage5": 2_029_968,
    "vrt/stage6": 2_029_968,
    "vrt/stage7": 2_029_968,
    "vrt/stage8": 2_528_472,
    "spike_encoder": 4_742_688,
    "spike_tsa/scale0": 74_784,
    "spike_tsa/scale3": 74_784,
    "vrt/fusion1": 74_976,
    "vrt/fusion4": 74_976,
}


def test_full_config_file_is_the_default_size() -> None:
    assert load_model_config(FULL) == ModelConfig()


def test_full_parameter_counts_match_model_md() -> None:
    with torch.device("meta"):
        model = build_model(ModelConfig())
    counts = model.param_counts()
    for name, n in MODEL_MD.items():
        assert counts[name] == n, name
    vrt_only = counts["vrt"] - sum(counts[f"vrt/fusion{i}"] for i in range(1, 5))
    assert abs(vrt_only - 18_320_007) <= 0.01 * 18_320_007
    assert vrt_only == 18_320_007  # the build reproduces the measured figure exactly
    head = model.vrt.head
    assert sum(p.numel() for p in head.conv_last.parameters()) == 2_595
    assert sum(p.numel() for p in head.conv_after_body.parameters()) == 11_616
    assert sum(p.numel() for p in head.norm.parameters()) == 240
    assert counts["vrt/prealign"] == 23_424
    deform = sum(p.numel() for p in flow_and_deform_parameters(model)) - counts["vrt/flow"]
    assert deform == 5_533_584


def test_plain_vrt_has_no_spike_modules() -> None:
    with torch.device("meta"):
        model = build_model(ModelConfig.from_dict({"USE_SPIKE": False}))
    counts = model.param_counts()
    assert "spike_encoder" not in counts and "vrt/fusion1" not in counts
    assert sum(p.numel() for p in model.parameters()) == 18_320_007


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("use_spike", [True, False])
@pytest.mark.parametrize(("t", "h", "w"), [(2, 16, 16), (3, 24, 32), (5, 16, 40)])
def test_output_shape(use_spike: bool, t: int, h: int, w: int) -> None:
    cfg = tiny_cfg()
    cfg.USE_SPIKE = use_spike
    model = build_model(cfg).eval()
    rgb, spikes = inputs(cfg, 1, t, h, w)
    with torch.no_grad():
        out = model(rgb, spikes)
    assert out.shape == rgb.shape
    assert torch.isfinite(out).all()


def test_batch_of_two_matches_two_single_samples() -> None:
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    perturb(model)
    rgb, spikes = inputs(cfg, 2, 2, 16, 24)
    with torch.no_grad():
        both = model(rgb, spikes)
        one = torch.cat([model(rgb[i : i + 1], spikes[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(both, one, atol=2e-5, rtol=1e-4)


def test_untrained_model_starts_near_identity() -> None:
    """Zero flow and the global residual: the output is the input plus a small change."""
    cfg = tiny_cfg()
    model = build_model(cfg).eval()
    rgb, spikes = inputs(cfg, 1, 2, 16, 16)
    with torch.no_grad():
        flows = model.vrt.flow(rgb)
        out = model(rgb, spikes)
    assert all(torch.count_nonzero(f) == 0 for f in flows)
    assert (out - rgb).abs().mean() < 0.5


@pytest.mark.parametrize(
    ("t", "h", "w", "k", "message"),
    [
        (1, 32, 32, 5, "at least 2 frames"),
        (2, 30, 32, 5, "multiples of 8"),
        (2, 32, 32, 4, "MODEL.SPIKE.BINS"),
    ],
)
def test_bad_input_shapes_are_named(t: int, h: int, w: int, k: int, message: str) -> None:
    model = build_model(tiny_cfg())
    with pytest.raises(ValueError, match=message):
        model(torch.rand(1, t, 3, h, w), torch.rand(1, t, k, h, w))
    with pytest.raises(ValueError, match="spikes"):
        model(torch.rand(1, 2, 3, 32, 32), None)


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_bf16_autocast_forward_backward() -> None:
    cfg = tiny_cfg()
    model = build_model(cfg)
    perturb(model)
    rgb, spikes = inputs(cfg, 1, 2, 16, 16)
    # oneDNN's bf16 Conv3d weight gradient (stride (1,2,2), 16 channels, one thread) returns
    # non-finite values on AVX512-BF16 CPUs with torch 2.13 (a lone Conv3d reproduces it);
    # the native kernels check the model's own dtypes just as well.
    with torch.backends.mkldnn.flags(enabled=False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(rgb, spikes)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ---------------------------------------------------------------- gradients, checkpointing


def test_gradients_reach_every_parameter() -> None:
    cfg = tiny_cfg(DROP_PATH_RATE=0.0)
    model = build_model(cfg)
    perturb(model)
    rgb, spikes = inputs(cfg, 1, 3, 16, 16)
    model(rgb, spikes).square().mean().backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or torch.count_nonzero(p.grad) == 0
    ]
    assert missing == []


def test_checkpointing_gives_same_outputs_and_gradients() -> None:
    cfg = tiny_cfg(DROP_PATH_RATE=0.2)  # stochastic depth on: RNG state must be replayed
    torch.manual_seed(0)
    plain = build_model(cfg)
    perturb(plain)
    ckpt_cfg = copy.deepcopy(cfg)
    ckpt_cfg.VRT.USE_CHECKPOINT_ATTN = ckpt_cfg.VRT.USE_CHECKPOINT_FFN = True
    ckpt = build_model(ckpt_cfg)
    ckpt.load_state_dict(plain.state_dict())
    rgb, spikes = inputs(cfg, 1, 3, 16, 16)
    outs = []
    for m in (plain, ckpt):
        torch.manual_seed(123)
        out = m(rgb, spikes)
        out.square().mean().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[0], outs[1])
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


# ---------------------------------------------------------------- flow weights, groups


def test_flow_weights_load_from_local_file(tmp_path: Path) -> None:
    src = SpyNet()
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    path = tmp_path / "spynet.pth"
    torch.save({"params": {f"spynet.{k}": v for k, v in src.state_dict().items()}}, path)
    cfg = tiny_cfg()
    cfg.FLOW_WEIGHTS = str(path)
    model = build_model(cfg)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(model.vrt.flow.spynet.state_dict()[k], v)


def test_flow_weights_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_text("not torch")
    with pytest.raises(ConfigError, match=r"MODEL\.FLOW_WEIGHTS"):
        SpyNet().load_weights(bad)
    partial = tmp_path / "partial.pth"
    torch.save({"basic_module.0.basic_module.0.weight": torch.zeros(32, 8, 7, 7)}, partial)
    with pytest.raises(ConfigError, match="lacks SpyNet weights"):
        SpyNet().load_weights(partial)
    with pytest.raises(ConfigError, match="no such file"):
        ModelConfig.from_dict({"FLOW_WEIGHTS": str(tmp_path / "missing.pth")})


def test_param_groups_partition_the_parameters() -> None:
    model = build_model(tiny_cfg())
    groups = param_groups(model, lr=4e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert len(ids) == len(set(ids))
    assert groups[1]["lr"] == pytest.approx(4e-4 * 0.125)
    special = flow_and_deform_parameters(model)
    assert len(special) + len(other_parameters(model)) == len(list(model.parameters()))
    set_flow_and_deform_trainable(model, False)
    assert not any(p.requires_grad for p in special)
    assert all(p.requires_grad for p in other_parameters(model))
    set_flow_and_deform_trainable(model, True)
    assert all(p.requires_grad for p in special)


def test_forward_flops_match_model_md() -> None:
    """MODEL.md: on 1×6×64×64 without the deformable conv op, stage 8 ≈ 159 GFLOP and
    stage 1 ≈ 134. Counted on the meta device (shapes only); our deformable conv is a
    matmul the counter sees, so its 2·(T-1)·H·W·9C·C·2 FLOPs are taken off stage 1."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ModelConfig()
    cfg.VRT.USE_CHECKPOINT_ATTN = cfg.VRT.USE_CHECKPOINT_FFN = False
    t, h, w, c = 6, 64, 64, 96
    with torch.device("meta"):
        model = build_model(cfg)
        x = torch.empty(1, t, h, w, c)
        flow = torch.empty(1, t - 1, 2, h, w)
    fc = FlopCounterMode(display=False)
    with fc:
        model.vrt.stages[7](x)
    assert fc.get_total_flops() / 1e9 == pytest.approx(159, rel=0.01)
    fc = FlopCounterMode(display=False)
    with fc:
        model.vrt.stages[0](x, flow, flow)
    deform_op = 2 * (t - 1) * h * w * 9 * c * c * 2
    assert (fc.get_total_flops() - deform_op) / 1e9 == pytest.approx(134, rel=0.01)
