"""Configuration: typed parsing, --set overrides, one-line errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stagewatch.errors import ConfigError
from trainer.config import Config, apply_overrides, from_raw, load_config

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
    assert base.TRAIN.AMP == "none" and base.TRAIN.TF32 is False  # as the user ran it
    assert not base.MODEL.VRT.USE_CHECKPOINT_ALIGN and not base.MODEL.COMPILE
    # fast: bf16, batch 1 (same recipe), TMSA checkpointing off, alignment checkpointing on
    assert fast.TRAIN.AMP == "bf16" and fast.TRAIN.TF32 and fast.TRAIN.BATCH_SIZE == 1
    assert fast.TRAIN.GRADIENT_ACCUMULATION_STEPS == base.TRAIN.GRADIENT_ACCUMULATION_STEPS
    assert not fast.MODEL.VRT.USE_CHECKPOINT_ATTN and not fast.MODEL.VRT.USE_CHECKPOINT_FFN
    assert fast.MODEL.VRT.USE_CHECKPOINT_ALIGN
    assert (fast.DATA.CLIP_LEN, fast.DATA.CROP_SIZE) == (base.DATA.CLIP_LEN, base.DATA.CROP_SIZE)


def test_one_config_per_what_if_row_equals_the_script_rows():
    """configs/deblur/vrt_spike_whatif*.yaml == baseline + benchmarks/gpu_whatif_check.py's
    cumulative row settings, row by row."""
    import dataclasses
    import importlib.util

    spec = importlib.util.spec_from_file_location("gwc", ROOT / "benchmarks/gpu_whatif_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cases = mod.cumulative_cases()
    assert len(mod.ROW_CONFIGS) == len(cases) == len(mod.ROWS) == 5
    base = str(ROOT / mod.FULL_CFG)
    for path, case in zip(mod.ROW_CONFIGS, cases, strict=True):
        row = load_config(str(ROOT / path))
        ref = load_config(base, [f"{k}={v}" for k, v in case])
        for sec in ("DATA", "MODEL", "DATALOADER", "TRAIN", "LOSS", "LOG"):
            assert dataclasses.asdict(getattr(row, sec)) == dataclasses.asdict(getattr(ref, sec)), (
                path,
                sec,
            )


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
        (
            {"LOSS": {"VGG_PERCEPTUAL": {"WEIGHT": 0.1}}},
            "LOSS.VGG_PERCEPTUAL.WEIGHTS",
            "local file",
        ),
        (
            {"LOSS": {"VGG_PERCEPTUAL": {"WEIGHT": 0.1, "WEIGHTS": "/no/vgg.pth"}}},
            "LOSS.VGG_PERCEPTUAL.WEIGHTS",
            "not found",
        ),
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
    raw = apply_overrides(
        {"TRAIN": {"BATCH_SIZE": 1}},
        ["TRAIN.BATCH_SIZE=3", "TRAIN.OPTIM.LR=1e-3", "MODEL.USE_SPIKE=false"],
    )
    cfg = from_raw(raw)
    assert cfg.TRAIN.BATCH_SIZE == 3 and pytest.approx(1e-3) == cfg.TRAIN.OPTIM.LR
    assert cfg.MODEL.USE_SPIKE is False
    with pytest.raises(ConfigError, match=r"KEY\.PATH=VALUE"):
        apply_overrides({}, ["TRAIN.BATCH_SIZE"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"TRAIN": {"BATCH_SIZE": 1}}, ["TRAIN.BATCH_SIZE.X=1"])


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("extra", "content", "expect"),
    [
        ([], None, "config file not found"),
        ([], "TRAIN:\n  BATCH_SIZ: 2\n", "TRAIN.BATCH_SIZ: unknown key; did you mean BATCH_SIZE?"),
        ([], "TRAIN:\n  EPOCHS: many\n", "TRAIN.EPOCHS: expected an integer"),
        ([], "TRAIN: [1, 2\n", "invalid YAML"),
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
    assert (
        r.stderr.strip()
        == f"trainer train: error: {cfg}: TRIAN: unknown section; did you mean TRAIN?"
    )


@pytest.mark.parametrize(
    ("item", "expect"),
    [
        ("TRAIN.OPTIM.LR=-1", "--set TRAIN.OPTIM.LR=-1: TRAIN.OPTIM.LR: must be >= 0.0"),
        ("TRAIN.NOPE=1", "--set TRAIN.NOPE=1: TRAIN.NOPE: unknown key"),
        (
            "TRAIN.OPTIM.LRR=1",
            "--set TRAIN.OPTIM.LRR=1: TRAIN.OPTIM.LRR: unknown key; did you mean LR?",
        ),
        (
            "MODEL.VRT.DEPTH=[1]",
            "--set MODEL.VRT.DEPTH=[1]: MODEL.VRT.DEPTH: unknown key; did you mean DEPTHS?",
        ),
        ("TRAIN.BATCH_SIZE.X=1", "TRAIN.BATCH_SIZE: is not a section"),
        (
            "TRAIN.OPTIM.LR=nan",
            "--set TRAIN.OPTIM.LR=nan: TRAIN.OPTIM.LR: expected a finite number",
        ),
        ("TRAIN.OPTIM.LR=.inf", "TRAIN.OPTIM.LR: expected a finite number, got inf"),
        ("TRAIN.OPTIM.LR=1e999", "TRAIN.OPTIM.LR: expected a finite number"),
        ("TRAIN.MAX_GRAD_NORM=-.inf", "TRAIN.MAX_GRAD_NORM: expected a finite number"),
        ("TRAIN.OPTIM.EPS=" + "9" * 400, "TRAIN.OPTIM.EPS: expected a finite number"),
    ],
)
def test_set_errors_name_set_not_the_file(tmp_path, capsys, item, expect):
    from trainer.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("DATA: {BAD_KEY_IN_FILE: 1}\n")  # the --set error is found first
    assert main(["train", "--cfg", str(cfg), "--set", item]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], lines
    assert "c.yaml" not in lines[0]


def test_set_value_errors_found_later_still_name_set(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(str(cfg), ["DATA.TYPE=gopro_spike", "DATA.ROOT=/no/such/dir"])
    assert (
        str(ei.value) == "--set DATA.ROOT=/no/such/dir: DATA.ROOT: folder not found: /no/such/dir"
    )
    with pytest.raises(ConfigError) as ei:  # a model check after parsing
        load_config(str(cfg), ["MODEL.SPIKE.BINS=0"])
    assert str(ei.value).startswith("--set MODEL.SPIKE.BINS=0: MODEL.SPIKE.BINS: must be >= 1")


def test_set_errors_come_before_torch_is_imported(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    code = (
        "import sys\nfrom trainer.cli import main\n"
        f"rc = main(['train', '--cfg', {str(cfg)!r}, '--set', 'TRAIN.OPTIM.LR=nan'])\n"
        f"rc2 = main(['train', '--cfg', {str(cfg)!r}, '--set', 'MODEL.SPIKE.BINZ=2'])\n"
        "assert rc == rc2 == 2, (rc, rc2)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "MODEL.SPIKE.BINZ: unknown key; did you mean BINS?" in r.stderr


def test_a_whole_config_parses_without_torch_and_the_model_package_still_works(tmp_path):
    code = (
        "import sys\nfrom trainer.config import load_config\n"
        f"cfg = load_config({str(ROOT / 'configs/deblur/vrt_spike_tiny.yaml')!r})\n"
        "assert 'torch' not in sys.modules\n"
        "import trainer.models as m\n"
        "from trainer.models.config import ModelConfig\n"
        "assert isinstance(cfg.MODEL, ModelConfig) and m.ModelConfig is ModelConfig\n"
        "assert cfg.TRAIN.THREADS == 1\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("kind", ["file", "below_a_file"])
def test_log_dir_that_cannot_be_a_folder_is_a_usage_error(tmp_path, capsys, kind):
    from trainer.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    f = tmp_path / "afile"
    f.write_text("x")
    target = f if kind == "file" else f / "logs"
    assert main(["train", "--cfg", str(cfg), "--log-dir", str(target)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainer train: error: --log-dir: "), lines
    assert "is a file, not a folder" in lines[0]
    cfg.write_text(f"LOG: {{LOG_DIR: {target}}}\n")
    assert main(["train", "--cfg", str(cfg)]) == 2
    assert "LOG.LOG_DIR" in capsys.readouterr().err


def test_errors_found_while_training_starts_name_the_option_that_set_the_key(
    tmp_path, capsys, monkeypatch
):
    import trainer.train as T
    from trainer.cli import main

    def train(cfg, log_dir=None):  # type: ignore[no-untyped-def]
        raise ConfigError(
            "TRAIN.BATCH_SIZE", "100000 is more than the 64 training clip(s)", cfg.file
        )

    monkeypatch.setattr(T, "train", train)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    logs = str(tmp_path / "logs")
    assert (
        main(["train", "--cfg", str(cfg), "--log-dir", logs, "--set", "TRAIN.BATCH_SIZE=100000"])
        == 2
    )
    assert capsys.readouterr().err.startswith(
        "trainer train: error: --set TRAIN.BATCH_SIZE=100000: TRAIN.BATCH_SIZE: 100000 is more"
    )
    assert main(["train", "--cfg", str(cfg), "--log-dir", logs]) == 2  # from the file: names it
    assert f"{cfg}: TRAIN.BATCH_SIZE" in capsys.readouterr().err
    assert main(["train", "--cfg", str(cfg), "--resume", str(tmp_path / "nope.pt")]) == 2
    assert "error: --resume: TRAIN.RESUME: checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize(("sets", "threads"), [([], 1), (["TRAIN.THREADS=2"], 2)])
def test_tiny_config_trains_with_one_torch_thread_unless_told(sets, threads):
    import os

    code = (
        "import sys\nfrom trainer.config import apply_thread_default, load_config\n"
        f"cfg = load_config({str(ROOT / 'configs/deblur/vrt_spike_tiny.yaml')!r}, {sets!r})\n"
        "apply_thread_default(cfg)\nimport torch\nprint(torch.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, env=env
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == str(threads)
