"""Configuration: typed parsing, --set overrides, one-line errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config import Config, apply_overrides, from_raw, load_config
from trainer.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs" / "deblur").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_parse(path):
    cfg = load_config(str(path))
    assert isinstance(cfg, Config)
    assert cfg.MODEL.SPIKE.BINS >= 1
    assert cfg.name == path.stem


def test_expected_shipped_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"vrt_spike_baseline", "vrt_spike_fast", "vrt_spike_tiny"} <= names


def test_baseline_and_fast_follow_the_user():
    base = load_config(str(ROOT / "configs/deblur/vrt_spike_baseline.yaml"))
    fast = load_config(str(ROOT / "configs/deblur/vrt_spike_fast.yaml"))
    assert base.TRAIN.OPTIM.TYPE == "adamw" and base.TRAIN.BATCH_SIZE == 1
    assert base.MODEL.VRT.USE_CHECKPOINT_ATTN and base.MODEL.VRT.USE_CHECKPOINT_FFN
    assert fast.TRAIN.OPTIM.TYPE == "adamw8bit" and fast.TRAIN.BATCH_SIZE == 3
    assert not fast.MODEL.VRT.USE_CHECKPOINT_ATTN and not fast.MODEL.VRT.USE_CHECKPOINT_FFN


def test_defaults_and_types():
    cfg = from_raw({"TRAIN": {"OPTIM": {"LR": "2e-4", "BETAS": [0.9, 0.999]}, "MAX_STEPS": 7}})
    assert pytest.approx(2e-4) == cfg.TRAIN.OPTIM.LR  # YAML reads 2e-4 as a string
    assert cfg.TRAIN.OPTIM.BETAS == (0.9, 0.999)
    assert cfg.TRAIN.MAX_STEPS == 7
    assert cfg.LOG.TIMING_CONSOLE_INTERVAL == 10


@pytest.mark.parametrize(
    ("raw", "key", "text"),
    [
        ({"TRAIN": {"BATCH_SIZ": 2}}, "TRAIN.BATCH_SIZ", "did you mean BATCH_SIZE"),
        ({"TRIAN": {}}, "TRIAN", "did you mean TRAIN"),
        ({"TRAIN": {"BATCH_SIZE": "two"}}, "TRAIN.BATCH_SIZE", "expected an integer"),
        ({"TRAIN": {"BATCH_SIZE": 0}}, "TRAIN.BATCH_SIZE", ">= 1"),
        ({"TRAIN": {"OPTIM": {"TYPE": "sgd"}}}, "TRAIN.OPTIM.TYPE", "adamw8bit"),
        ({"TRAIN": {"OPTIM": {"BETAS": [0.9]}}}, "TRAIN.OPTIM.BETAS", "2 numbers"),
        ({"TRAIN": {"OPTIM": {"BETAS": [0.9, 1.5]}}}, "TRAIN.OPTIM.BETAS", "[0, 1)"),
        ({"LOG": {"TIMING_CONSOLE": "yes"}}, "LOG.TIMING_CONSOLE", "true or false"),
        ({"DATA": {"TYPE": "gopro_spike"}}, "DATA.ROOT", "required"),
        ({"DATA": {"TYPE": "gopro_spike", "ROOT": "/nonexistent/x"}}, "DATA.ROOT", "not found"),
        ({"DATA": {"CROP_SIZE": 512}}, "DATA.CROP_SIZE", "larger than"),
        ({"LOSS": {"VGG_PERCEPTUAL": {"WEIGHT": 0.1}}}, "LOSS.VGG_PERCEPTUAL.WEIGHTS", "local file"),
        ({"LOSS": {"VGG_PERCEPTUAL": {"WEIGHT": 0.1, "WEIGHTS": "/no/vgg.pth"}}},
         "LOSS.VGG_PERCEPTUAL.WEIGHTS", "not found"),
        ({"LOSS": {"VGG_PERCEPTUAL": {"LAYER": "relu3_9"}}}, "LOSS.VGG_PERCEPTUAL.LAYER", "relu3_"),
        ({"MODEL": {"SPIKE": {"BINZ": 3}}}, "MODEL.SPIKE.BINZ", "BINS"),
        ({"TRAIN": {"SCHED": {"MIN_LR": 1.0}}}, "TRAIN.SCHED.MIN_LR", "above"),
    ],
)
def test_bad_values_name_the_key(raw, key, text):
    with pytest.raises(ConfigError) as ei:
        from_raw(raw, "x.yaml")
    msg = str(ei.value)
    assert msg.startswith(f"x.yaml: {key}: "), msg
    assert text in msg
    assert "\n" not in msg


def test_overrides():
    raw = apply_overrides({"TRAIN": {"BATCH_SIZE": 1}}, ["TRAIN.BATCH_SIZE=3", "TRAIN.OPTIM.LR=1e-3",
                                                         "MODEL.USE_SPIKE=false"])
    cfg = from_raw(raw)
    assert cfg.TRAIN.BATCH_SIZE == 3 and pytest.approx(1e-3) == cfg.TRAIN.OPTIM.LR
    assert cfg.MODEL.USE_SPIKE is False
    with pytest.raises(ConfigError, match=r"KEY\.PATH=VALUE"):
        apply_overrides({}, ["TRAIN.BATCH_SIZE"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"TRAIN": {"BATCH_SIZE": 1}}, ["TRAIN.BATCH_SIZE.X=1"])


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.mark.parametrize(
    ("extra", "content", "expect"),
    [
        ([], None, "config file not found"),
        ([], "TRAIN:\n  BATCH_SIZ: 2\n", "TRAIN.BATCH_SIZ: unknown key; did you mean BATCH_SIZE?"),
        ([], "TRAIN:\n  EPOCHS: many\n", "TRAIN.EPOCHS: expected an integer"),
        ([], "TRAIN: [1, 2\n", "invalid YAML"),
        (["--set", "TRAIN.OPTIM.LR=-1"], "{}\n", "TRAIN.OPTIM.LR: must be >= 0.0"),
        (["--set", "TRAIN.NOPE=1"], "{}\n", "TRAIN.NOPE: unknown key"),
        (["--set", "DATA.TYPE=gopro_spike", "--set", "DATA.ROOT=/no/such/dir"], "{}\n",
         "DATA.ROOT: folder not found"),
    ],
)
def test_cli_config_errors_exit_2_with_one_line(tmp_path, capsys, extra, content, expect):
    from trainer.cli import main

    cfg = tmp_path / "c.yaml"
    if content is not None:
        cfg.write_text(content)
    assert main(["train", "--cfg", str(cfg), *extra]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert expect in lines[0]
    assert "c.yaml" in lines[0]


def test_process_exit_status_is_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("TRIAN: {}\n")
    r = _cli("train", "--cfg", str(cfg))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"trainer train: error: {cfg}: TRIAN: unknown section; did you mean TRAIN?"
