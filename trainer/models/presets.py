"""Config files and example inputs for the model (used by info, benchmarks and tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from stagewatch.errors import ConfigError
from trainer.models.config import ModelConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "model"
TINY = CONFIG_DIR / "vrt_spike_tiny.yaml"
FULL = CONFIG_DIR / "vrt_spike_full.yaml"
#: the size the user trained (all widths 96, 6 reconstruction groups, window 5×8×8, K = 32)
USER = CONFIG_DIR / "vrt_spike_user.yaml"


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; missing file or bad YAML -> one-line ConfigError."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("--cfg", f"no such file: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("--cfg", f"cannot read {p}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError("YAML", f"{where}{problem}", str(p)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("YAML", "the file must hold a mapping of sections", str(p))
    return data


def load_model_config(path: str | Path) -> ModelConfig:
    """The ``MODEL:`` section of a YAML file as a validated ModelConfig."""
    data = read_yaml(path)
    if "MODEL" not in data:
        raise ConfigError("MODEL", "section missing", str(path))
    return ModelConfig.from_dict(data["MODEL"], str(path))


def example_inputs(
    cfg: ModelConfig,
    b: int,
    t: int,
    h: int,
    w: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor | None]:
    """Random RGB [B,T,3,H,W] in [0,1] and spike bins [B,T,K,H,W] (None without spikes)."""
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(b, t, 3, h, w, generator=g)
    spikes = None
    if cfg.USE_SPIKE:
        counts = torch.poisson(torch.rand(b, t, cfg.SPIKE.BINS, h, w, generator=g) * 4, generator=g)
        spikes = torch.log1p(counts) / torch.log1p(torch.tensor(8.0))
        spikes = spikes.to(device)
    return rgb.to(device), spikes
