"""Official VRT checkpoints: the key map both ways, strict loading, export, config, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stagewatch.errors import ConfigError
from trainer.models import ModelConfig, build_model, export_official, load_pretrained_vrt
from trainer.models.presets import FULL, TINY, USER, load_model_config
from trainer.models.pretrained import KEY_MAP, from_official, save_official, to_official

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: (ours, official), written out by hand from the reference's module names
EXAMPLES = [
    (
        "vrt.flow.spynet.basic_module.5.basic_module.8.bias",
        "spynet.basic_module.5.basic_module.8.bias",
    ),
    ("vrt.prealign.conv_first.weight", "conv_first.weight"),
    ("vrt.stages.0.reshape_norm.weight", "stage1.reshape.1.weight"),
    ("vrt.stages.1.reshape_norm.bias", "stage2.reshape.1.bias"),
    ("vrt.stages.4.reshape_proj.weight", "stage5.reshape.2.weight"),
    (
        "vrt.stages.0.groups.0.blocks.5.attn.qkv_mut.weight",
        "stage1.residual_group1.blocks.5.attn.qkv_mut.weight",
    ),
    (
        "vrt.stages.6.groups.0.blocks.0.attn.relative_position_bias_table",
        "stage7.residual_group1.blocks.0.attn.relative_position_bias_table",
    ),
    ("vrt.stages.2.groups.0.linear.weight", "stage3.linear1.weight"),
    (
        "vrt.stages.3.groups.1.blocks.1.mlp.fc12.bias",
        "stage4.residual_group2.blocks.1.mlp.fc12.bias",
    ),
    ("vrt.stages.5.groups.1.linear.bias", "stage6.linear2.bias"),
    ("vrt.stages.1.pa_deform.conv_offset.6.weight", "stage2.pa_deform.conv_offset.6.weight"),
    ("vrt.stages.1.pa_deform.weight", "stage2.pa_deform.weight"),
    ("vrt.stages.6.pa_fuse.fc2.weight", "stage7.pa_fuse.fc2.weight"),
    ("vrt.stages.7.reshape_norm.weight", "stage8.0.1.weight"),
    ("vrt.stages.7.reshape_proj.bias", "stage8.0.2.bias"),
    (
        "vrt.stages.7.groups.0.blocks.3.norm2.weight",
        "stage8.1.residual_group.blocks.3.norm2.weight",
    ),
    ("vrt.stages.7.groups.3.linear.weight", "stage8.4.linear.weight"),
    ("vrt.stages.7.groups.11.linear.weight", "stage8.12.linear.weight"),
    ("vrt.head.norm.bias", "norm.bias"),
    ("vrt.head.conv_after_body.weight", "conv_after_body.weight"),
    ("vrt.head.conv_last.bias", "conv_last.bias"),
]


@pytest.mark.parametrize(("ours", "official"), EXAMPLES)
def test_key_map_both_ways(ours: str, official: str) -> None:
    assert to_official(ours) == official
    assert from_official(official) == ours


@pytest.mark.parametrize(
    "key",
    [
        "vrt.fusions.0.q.weight",
        "spike_encoder.scales.0.0.weight",
        "vrt.stages.8.reshape_norm.weight",
        "vrt.head.extra.weight",
    ],
)
def test_keys_outside_the_map(key: str) -> None:
    assert to_official(key) is None


@pytest.mark.parametrize(
    "key",
    [
        "stage0.linear1.weight",
        "stage9.pa_fuse.fc2.weight",
        "stage8.0.3.weight",
        "conv_before_upsample.0.weight",
    ],
)
def test_unknown_official_keys(key: str) -> None:
    assert from_official(key) is None


def test_standalone_spynet_names_load_as_spynet() -> None:
    assert (
        from_official("basic_module.0.basic_module.0.weight")
        == "vrt.flow.spynet.basic_module.0.basic_module.0.weight"
    )


def _vrt_keys(model: torch.nn.Module) -> list[str]:
    return [
        k for k in model.state_dict() if k.startswith("vrt.") and not k.startswith("vrt.fusions.")
    ]


def _meta(cfg_path: Path) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(load_model_config(cfg_path))


@pytest.mark.parametrize("cfg_path", [TINY, FULL, USER], ids=["tiny", "full", "user"])
def test_map_is_a_bijection_on_the_model(cfg_path: Path) -> None:
    keys = _vrt_keys(_meta(cfg_path))
    official = [to_official(k) for k in keys]
    assert None not in official and len(set(official)) == len(keys)
    assert [from_official(o) for o in official] == keys  # type: ignore[arg-type]
    assert len(KEY_MAP) == 17


def test_full_config_official_layout_loads_strictly() -> None:
    """The paper's deblurring size: 1,410 parameters + 116 buffers, as the released file."""
    src = export_official(_meta(FULL))
    assert len(src) == 1410 + 116
    shapes = {k: tuple(v.shape) for k, v in src.items()}
    assert shapes["conv_first.weight"] == (96, 27, 1, 3, 3)
    assert shapes["stage2.reshape.1.weight"] == (384,)
    assert shapes["stage5.reshape.2.weight"] == (96, 24)
    assert shapes["stage8.0.2.weight"] == (120, 96)
    assert shapes["stage1.residual_group1.blocks.0.attn.position_bias"] == (1, 64, 96)
    assert shapes["stage1.residual_group1.blocks.0.attn.relative_position_index"] == (128, 128)
    assert shapes["stage1.residual_group2.blocks.0.attn.relative_position_index"] == (384, 384)
    assert shapes["stage8.3.residual_group.blocks.0.attn.relative_position_index"] == (64, 64)
    assert shapes["stage1.pa_deform.conv_offset.6.weight"] == (27 * 16, 96, 3, 3)
    assert (
        sum(
            v.numel()
            for k, v in src.items()
            if not k.endswith(("relative_position_index", "position_bias", "mean", "std"))
        )
        == 18_320_007
    )
    report = load_pretrained_vrt(_meta(FULL), {"params": src}, strict=True)
    assert report.ok and len(report.loaded) == 1410 and report.renamed == 1410
    assert len(report.recomputed) == 116


def test_user_config_size() -> None:
    cfg = load_model_config(USER)
    assert cfg.SPIKE.BINS == 32 and cfg.VRT.WINDOW_SIZE == [5, 8, 8]
    assert set(cfg.VRT.EMBED_DIMS) == {96} and cfg.VRT.num_recon_groups == 6
    model = _meta(USER)
    assert sum(model.state_dict()[k].numel() for k in _vrt_keys(model)) == 18_263_751


@pytest.fixture(scope="module")
def tiny_pair() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    src = build_model(load_model_config(TINY))
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # nothing left at its (often zero) init
    return src, export_official(src)


def test_tiny_round_trip_is_exact(tiny_pair) -> None:
    src, official = tiny_pair
    torch.manual_seed(2)
    dst = build_model(load_model_config(TINY))
    spike_before = {k: v.clone() for k, v in dst.state_dict().items() if k not in _vrt_keys(dst)}
    report = load_pretrained_vrt(dst, official, strict=True)
    assert report.ok and report.kept == len(spike_before) > 0
    a, b = src.state_dict(), dst.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in _vrt_keys(src))
    assert all(torch.equal(b[k], v) for k, v in spike_before.items())  # spike branch: own init
    assert export_official(dst).keys() == official.keys()
    assert all(torch.equal(export_official(dst)[k], v) for k, v in official.items())


def test_sources_path_params_bare_and_module_prefix(tiny_pair, tmp_path: Path) -> None:
    src, official = tiny_pair
    path = tmp_path / "official.pth"
    assert save_official(src, path) == len(official)
    assert set(torch.load(path, weights_only=True)) == {"params"}
    for source in (path, str(path), official, {"module." + k: v for k, v in official.items()}):
        dst = build_model(load_model_config(TINY))
        report = load_pretrained_vrt(dst, source)
        assert report.ok and len(report.loaded) == len(_vrt_keys(dst))
        assert torch.equal(dst.vrt.head.conv_last.weight, src.vrt.head.conv_last.weight)


def test_own_layout_loads_and_skips_the_spike_branch(tiny_pair) -> None:
    src, _ = tiny_pair
    dst = build_model(load_model_config(TINY))
    report = load_pretrained_vrt(dst, src.state_dict())
    assert report.ok and report.renamed == 0 and len(report.outside_vrt) == report.kept > 0


def test_strict_errors_name_the_first_problem(tiny_pair) -> None:
    _, official = tiny_pair
    model = build_model(load_model_config(TINY))
    missing = dict(official)
    del missing["stage3.linear1.weight"]
    with pytest.raises(ConfigError) as ei:
        load_pretrained_vrt(model, missing)
    msg = str(ei.value)
    assert msg.startswith("MODEL.PRETRAINED: state dict: no entry stage3.linear1.weight")
    assert "\n" not in msg
    shaped = dict(official, **{"norm.weight": torch.zeros(7)})
    with pytest.raises(
        ConfigError,
        match=r"norm\.weight has shape \[7\], the model's "
        r"vrt\.head\.norm\.weight has \[24\]",
    ):
        load_pretrained_vrt(model, shaped)
    extra = dict(official, **{"conv_before_upsample.0.weight": torch.zeros(1)})
    with pytest.raises(ConfigError, match=r"conv_before_upsample\.0\.weight is no part"):
        load_pretrained_vrt(model, extra)
    before = model.vrt.head.norm.weight.clone()
    report = load_pretrained_vrt(
        model, dict(extra, **{"norm.weight": torch.zeros(7)}), strict=False
    )
    assert report.mismatched[0][:2] == ("norm.weight", "vrt.head.norm.weight")
    assert report.unexpected == ["conv_before_upsample.0.weight"]
    assert torch.equal(model.vrt.head.norm.weight, before)  # mismatched: not touched
    assert torch.equal(model.vrt.head.conv_last.weight, official["conv_last.weight"])
    text = report.format()
    assert "shape mismatches: 1" in text and "unexpected: 1" in text


def test_spynet_file_loads_the_same_way(tiny_pair) -> None:
    _, official = tiny_pair
    spy = {k[len("spynet.") :]: v for k, v in official.items() if k.startswith("spynet.")}
    model = build_model(load_model_config(TINY))
    report = load_pretrained_vrt(model, {"params": spy}, strict=False)
    assert len(report.loaded) == 6 * 5 * 2 and not report.unexpected
    assert torch.equal(
        model.vrt.flow.spynet.basic_module[5].basic_module[8].weight,
        official["spynet.basic_module.5.basic_module.8.weight"],
    )


def test_unreadable_sources(tmp_path: Path) -> None:
    model = build_model(load_model_config(TINY))
    with pytest.raises(ConfigError, match="no such file"):
        load_pretrained_vrt(model, tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        load_pretrained_vrt(model, bad)
    with pytest.raises(ConfigError, match="does not hold a state dict"):
        load_pretrained_vrt(model, {"params": {"a": 1}})


# ---------------------------------------------------------------- config and CLI


def test_config_keys_load_at_build(tiny_pair, tmp_path: Path) -> None:
    src, official = tiny_pair
    official = dict(official)  # the fixture's dict is shared
    path = tmp_path / "w.pth"
    torch.save({"params": official}, path)
    section = load_model_config(TINY).to_dict()
    section["PRETRAINED"] = str(path)
    model = build_model(ModelConfig.from_dict(section))
    assert model.pretrained_report is not None and model.pretrained_report.ok
    assert torch.equal(model.vrt.prealign.conv_first.weight, src.vrt.prealign.conv_first.weight)
    del official["conv_last.bias"]
    torch.save(official, path)
    with pytest.raises(ConfigError, match=r"conv_last\.bias"):
        build_model(ModelConfig.from_dict(section))
    section["PRETRAINED_STRICT"] = False
    model = build_model(ModelConfig.from_dict(section))
    assert model.pretrained_report.missing == ["vrt.head.conv_last.bias"]
    with torch.device("meta"):
        assert build_model(ModelConfig.from_dict(section)).pretrained_report is None


@pytest.mark.parametrize(
    ("section", "text"),
    [
        ({"PRETRAINED": 5}, "MODEL.PRETRAINED: expected a file path or null, got an integer"),
        ({"PRETRAINED": "/no/such/vrt.pth"}, "MODEL.PRETRAINED: no such file: /no/such/vrt.pth"),
        ({"PRETRAINED_STRICT": "yes"}, "MODEL.PRETRAINED_STRICT: expected true or false"),
        ({"PRETRAINED_STRIC": True}, "did you mean PRETRAINED_STRICT"),
    ],
)
def test_config_errors(section: dict, text: str) -> None:
    with pytest.raises(ConfigError) as ei:
        ModelConfig.from_dict(section, "m.yaml")
    assert text in str(ei.value) and "\n" not in str(ei.value)


def _info(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from trainer.cli import main

    rc = main(["info", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_info_pretrained_report_and_export(
    tiny_pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, official = tiny_pair
    ckpt = tmp_path / "step.pt"
    torch.save({"model": src.state_dict(), "step": 3}, ckpt)
    out_path = tmp_path / "exported.pth"
    rc, out, err = _info(
        capsys, "--cfg", str(TINY), "--checkpoint", str(ckpt), "--export-official", str(out_path)
    )
    assert rc == 0 and "entries in the official VRT layout" in out, err
    exported = torch.load(out_path, weights_only=True)["params"]
    assert exported.keys() == official.keys()
    assert all(torch.equal(exported[k], v) for k, v in official.items())

    rc, out, _ = _info(capsys, "--cfg", str(TINY), "--pretrained", str(out_path))
    assert rc == 0 and "missing: 0" in out and "unexpected: 0" in out
    rc, out, _ = _info(capsys, "--cfg", str(TINY), "--pretrained", str(out_path), "--json")
    rep = json.loads(out)["pretrained"]
    assert rep["loaded"] == len(_vrt_keys(src)) and rep["shape_mismatches"] == []

    rc, out, err = _info(capsys, "--cfg", str(FULL), "--pretrained", str(out_path))
    assert rc == 2 and "shape mismatches:" in out  # the report, then one error line
    assert err.count("\n") == 1 and "--pretrained" in err and "has shape" in err


def test_info_export_needs_weights(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _info(capsys, "--cfg", str(TINY), "--export-official", "/tmp/x.pth")
    assert rc == 2 and out == "" and err.count("\n") == 1 and "--checkpoint" in err


def test_training_starts_from_pretrained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from _trainer_helpers import MICRO
    from _trainer_helpers import TINY as TRAIN_TINY

    from trainer.config import load_config
    from trainer.train import train

    cfg = load_config(TRAIN_TINY, [*MICRO, "TRAIN.MAX_STEPS=1"])
    src = build_model(cfg.MODEL)
    path = tmp_path / "w.pth"
    torch.save({"params": src.state_dict()}, path)  # our own layout loads too
    cfg = load_config(TRAIN_TINY, [*MICRO, "TRAIN.MAX_STEPS=1", f"MODEL.PRETRAINED={path}"])
    train(cfg, log_dir=str(tmp_path / "logs"))
    err = capsys.readouterr().err
    assert f"pretrained: {path}" in err and "missing: 0" in err
    torch.save({"params": {"norm.weight": torch.zeros(3)}}, path)
    with pytest.raises(ConfigError, match=r"MODEL\.PRETRAINED: .*norm\.weight has shape"):
        train(cfg, log_dir=str(tmp_path / "logs"))
