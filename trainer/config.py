"""Typed training configuration: YAML with the user's key structure, checked at start-up.

Sections ``DATA``, ``MODEL``, ``DATALOADER``, ``TRAIN``, ``LOSS``, ``LOG``. Field names are
the YAML keys, so ``cfg.TRAIN.OPTIM.LR`` reads like the file. ``MODEL`` is parsed by
:class:`trainer.models.config.ModelConfig`. Sections are parsed by
:mod:`trainer.typed_config`: every error is a :class:`ConfigError` naming the file and the key
path (unknown keys get a "did you mean" suggestion).

"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from stagewatch.errors import ConfigError
from trainer.typed_config import convert, convert_field, setting, suggest, type_name

# --------------------------------------------------------------------------- sections


@dataclass
class SyntheticConfig:
    """Procedural spike deblurring data (see ``trainer.data.synthetic``)."""

    HEIGHT: int = setting(256, min=8, doc="scene frame height (crops are taken from it)")
    WIDTH: int = setting(256, min=8)
    TRAIN_CLIPS: int = setting(256, min=1)
    VAL_CLIPS: int = setting(8, min=1)
    TICKS_PER_FRAME: int = setting(32, min=1, doc="simulated spike-camera ticks per frame")
    EXPOSURE: float = setting(1.0, min=0.05, max=1.0, doc="exposure as a fraction of a frame")
    MAX_SPEED: float = setting(4.0, min=0.0, doc="largest camera speed in pixels per frame")
    OBJECTS: int = setting(2, min=0, doc="independently moving textured objects")
    TEXTURE_SCALE: float = setting(1.0, min=0.1, doc=">1: coarser, smoother textures")
    THRESHOLD: float = setting(2.0, min=1e-3, doc="integrate-and-fire threshold")
    GAIN: float = setting(1.0, min=1e-3, doc="light gain per tick")
    SEED: int = 0
    CACHE: bool = setting(False, doc="keep generated clips in memory")


@dataclass
class DataConfig:
    TYPE: Literal["synthetic", "gopro_spike"] = "synthetic"
    ROOT: str | None = setting(None, doc="GoPro-spike folder (with TRAIN_SPLIT and VAL_SPLIT)")
    TRAIN_SPLIT: str = "train"
    VAL_SPLIT: str = "val"
    CLIP_LEN: int = setting(5, min=1, doc="frames per training clip (T)")
    CROP_SIZE: int = setting(256, min=0, doc="square training crop; 0 = whole frame")
    VAL_CROP_SIZE: int | None = setting(
        None, min=0, doc="centre crop for validation; null = CROP_SIZE"
    )
    FLIP: bool = True
    ROTATE: bool = True
    SYNTHETIC: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class DataLoaderConfig:
    NUM_WORKERS: int = setting(2, min=0)
    PIN_MEMORY: bool = True
    PERSISTENT_WORKERS: bool = True
    PREFETCH_FACTOR: int = setting(2, min=1)
    SHUFFLE: bool = True


@dataclass
class OptimConfig:
    TYPE: Literal["adamw", "adamw8bit"] = "adamw"
    LR: float = setting(1e-4, min=0.0)
    BETAS: tuple[float, float] = (0.9, 0.99)
    WEIGHT_DECAY: float = setting(1e-4, min=0.0)
    EPS: float = setting(1e-8, min=0.0)


@dataclass
class SchedConfig:
    TYPE: Literal["cosine", "constant"] = "cosine"
    WARMUP_STEPS: int = setting(256, min=0)
    MIN_LR: float = setting(1e-7, min=0.0)


@dataclass
class CheckpointConfig:
    DIR: str | None = setting(None, doc="null: <log dir>/<run id>/checkpoints")
    EVERY: int = setting(
        1000, min=0, doc="optimizer steps between checkpoints; 0 = only at the end"
    )
    KEEP_LAST: int = setting(3, min=1)


@dataclass
class ValConfig:
    EVERY: int = setting(500, min=0, doc="optimizer steps between validations; 0 = only at the end")
    BATCH_SIZE: int = setting(1, min=1)
    MAX_CLIPS: int | None = setting(None, min=1, doc="cap on held-out clips per validation")


@dataclass
class TrainConfig:
    SEED: int = 0
    DEVICE: Literal["auto", "cpu", "cuda"] = "auto"
    AMP: Literal["auto", "bf16", "none"] = setting("auto", doc="auto = bf16 on CUDA, none on CPU")
    TF32: bool = setting(
        True,
        doc="CUDA: fp32 matmuls and convs on TF32 tensor cores; false = "
        "PyTorch's default (exact fp32 matmuls)",
    )
    BATCH_SIZE: int = setting(1, min=1, doc="clips per GPU per micro-step")
    GRADIENT_ACCUMULATION_STEPS: int = setting(1, min=1)
    MAX_GRAD_NORM: float = setting(1.0, min=0.0, doc="0 = no clipping")
    EPOCHS: int = setting(50, min=1)
    MAX_STEPS: int | None = setting(None, min=1, doc="cap on optimizer steps")
    MAX_MINUTES: float | None = setting(
        None,
        min=0.0,
        doc="stop after this many minutes of training, completed: the step in progress "
        "finishes, then the end's validation and checkpoint (null: no time limit)",
    )
    FREEZE_FLOW_STEPS: int = setting(
        0, min=0, doc="flow and deformable parameters frozen this long"
    )
    FLOW_LR_MULT: float = setting(1.0, min=0.0, doc="their lr multiplier after the freeze")
    RESUME: str | None = setting(None, doc="checkpoint file, checkpoint folder or 'auto'")
    THREADS: int | None = setting(
        None,
        min=1,
        doc="torch CPU threads per process; null: torch's "
        "default (OMP_NUM_THREADS, else one per core)",
    )
    OPTIM: OptimConfig = field(default_factory=OptimConfig)
    SCHED: SchedConfig = field(default_factory=SchedConfig)
    CHECKPOINT: CheckpointConfig = field(default_factory=CheckpointConfig)
    VAL: ValConfig = field(default_factory=ValConfig)


@dataclass
class CharbonnierConfig:
    WEIGHT: float = setting(1.0, min=0.0)
    EPS: float = setting(1e-3, min=0.0)


@dataclass
class PerceptualConfig:
    WEIGHT: float = setting(0.0, min=0.0)
    NETWORK: Literal["vgg16", "vgg19"] = "vgg16"
    LAYER: str = "relu3_3"
    WEIGHTS: str | None = setting(None, doc="local torchvision-format VGG state dict (.pth)")
    ALLOW_RANDOM_WEIGHTS: bool = setting(False, doc="timing runs only: random VGG, loudly")


@dataclass
class LossConfig:
    CHARBONNIER: CharbonnierConfig = field(default_factory=CharbonnierConfig)
    VGG_PERCEPTUAL: PerceptualConfig = field(default_factory=PerceptualConfig)


@dataclass
class LogConfig:
    ENABLE_TIMING_LOG: bool = True
    TIMING_CONSOLE: bool = True
    TIMING_FILE: bool = True
    TIMING_JSONL: bool = True
    TIMING_CONSOLE_INTERVAL: int = setting(10, min=1)
    TIMING_FILE_INTERVAL: int = setting(50, min=1)
    LOG_DIR: str = "runs/logs"
    RUN_NAME: str | None = setting(None, doc="null: the config file's name")
    PROGRESS_INTERVAL: int = setting(10, min=1, doc="steps between progress lines when not a TTY")


def _model_config_class() -> Any:
    """``trainer.models.config.ModelConfig`` without importing torch.

    The package ``trainer.models`` imports torch in its ``__init__``; its config module does
    not. Before the package is imported, load that module alone under its own name (the
    package's later ``from trainer.models.config import ...`` then finds it), so that every
    config error is reported in well under a second.
    """
    name = "trainer.models.config"
    mod = sys.modules.get(name)
    if mod is None and "trainer.models" not in sys.modules:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "config.py")
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is not None and spec.loader is not None:
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            try:
                spec.loader.exec_module(mod)
            except BaseException:
                del sys.modules[name]
                raise
    if mod is None:
        from trainer.models import config as mod
    return mod.ModelConfig


# the model section is parsed by the model package
def _parse_model(section: Any, file: str | None) -> Any:
    return _model_config_class().from_dict(section, file)


@dataclass
class Config:
    """The whole configuration. ``raw`` is the YAML after ``--set`` overrides."""

    DATA: DataConfig = field(default_factory=DataConfig)
    MODEL: Any = None
    DATALOADER: DataLoaderConfig = field(default_factory=DataLoaderConfig)
    TRAIN: TrainConfig = field(default_factory=TrainConfig)
    LOSS: LossConfig = field(default_factory=LossConfig)
    LOG: LogConfig = field(default_factory=LogConfig)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    file: str | None = None

    @property
    def name(self) -> str:
        if self.LOG.RUN_NAME:
            return self.LOG.RUN_NAME
        return os.path.splitext(os.path.basename(self.file))[0] if self.file else "run"


_SECTIONS = ("DATA", "MODEL", "DATALOADER", "TRAIN", "LOSS", "LOG")


# --------------------------------------------------------------------------- parsing


def _check(cfg: Config) -> None:
    """Cross-field checks and files that must exist."""
    file = cfg.file
    d, t, loss = cfg.DATA, cfg.TRAIN, cfg.LOSS
    if d.TYPE == "gopro_spike":
        if not d.ROOT:
            raise ConfigError("DATA.ROOT", "required when DATA.TYPE is gopro_spike", file)
        if not os.path.isdir(d.ROOT):
            raise ConfigError("DATA.ROOT", f"folder not found: {d.ROOT}", file)
    else:
        s = d.SYNTHETIC
        if min(s.HEIGHT, s.WIDTH) < d.CROP_SIZE:
            raise ConfigError(
                "DATA.CROP_SIZE",
                f"{d.CROP_SIZE} is larger than the synthetic frames "
                f"({s.HEIGHT}x{s.WIDTH}, DATA.SYNTHETIC.HEIGHT/WIDTH)",
                file,
            )
    if t.OPTIM.BETAS[0] >= 1 or t.OPTIM.BETAS[1] >= 1 or min(t.OPTIM.BETAS) < 0:
        raise ConfigError(
            "TRAIN.OPTIM.BETAS", f"each beta must be in [0, 1), got {list(t.OPTIM.BETAS)}", file
        )
    if t.SCHED.MIN_LR > t.OPTIM.LR:
        raise ConfigError(
            "TRAIN.SCHED.MIN_LR", f"{t.SCHED.MIN_LR} is above TRAIN.OPTIM.LR ({t.OPTIM.LR})", file
        )
    if loss.CHARBONNIER.WEIGHT == 0 and loss.VGG_PERCEPTUAL.WEIGHT == 0:
        raise ConfigError("LOSS", "every loss weight is 0: nothing to train", file)
    p = loss.VGG_PERCEPTUAL
    if p.WEIGHT > 0 and not p.ALLOW_RANDOM_WEIGHTS:
        if not p.WEIGHTS:
            raise ConfigError(
                "LOSS.VGG_PERCEPTUAL.WEIGHTS",
                f"the perceptual loss (WEIGHT {p.WEIGHT}) needs pretrained VGG weights from a "
                "local file (torchvision vgg16/vgg19 state dict); set WEIGHTS, or WEIGHT: 0",
                file,
            )
        if not os.path.isfile(p.WEIGHTS):
            raise ConfigError("LOSS.VGG_PERCEPTUAL.WEIGHTS", f"file not found: {p.WEIGHTS}", file)
    from trainer.vgg_layers import VGG_LAYERS  # torch-free table

    if p.LAYER not in VGG_LAYERS[p.NETWORK]:
        raise ConfigError(
            "LOSS.VGG_PERCEPTUAL.LAYER",
            f"{p.LAYER!r} is not a layer of {p.NETWORK}" + suggest(p.LAYER, VGG_LAYERS[p.NETWORK]),
            file,
        )
    if t.RESUME and t.RESUME != "auto" and not os.path.exists(t.RESUME):
        raise ConfigError("TRAIN.RESUME", f"checkpoint not found: {t.RESUME}", file)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``KEY.PATH=VALUE`` -> (["KEY", "PATH"], YAML-parsed value)."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(item, "an override must look like KEY.PATH=VALUE", "--set")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(
            key, f"value is not valid YAML: {value!r} ({_first_line(e)})", "--set"
        ) from None
    return key.split("."), parsed


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` items to a (copied) raw config mapping."""
    import copy

    out = copy.deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        node = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(
                    ".".join(parts[: i + 1]), "is not a section: cannot set a key below it", "--set"
                )
            node = nxt
        node[parts[-1]] = value
    return out


def from_raw(raw: Any, file: str | None = None) -> Config:
    """Build and check a :class:`Config` from a parsed YAML mapping."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("<top>", f"expected a mapping of sections, got {type_name(raw)}", file)
    for key in raw:
        if key not in _SECTIONS:
            raise ConfigError(
                str(key), "unknown section" + suggest(str(key), list(_SECTIONS)), file
            )
    kwargs: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for key in _SECTIONS:
        if key == "MODEL":
            kwargs[key] = _parse_model(raw.get("MODEL"), file)
        elif key in raw:
            kwargs[key] = convert(raw[key], hints[key], key, file)
    cfg = Config(**kwargs, raw=raw, file=file)
    _check(cfg)
    return cfg


def _schema_of(tp: Any) -> Any:
    """The dataclass a field's annotation holds (``X | None`` too), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for a in typing.get_args(tp):
        if dataclasses.is_dataclass(a):
            return a
    return None


def check_override_keys(overrides: list[str]) -> None:
    """Check each ``--set`` key path and value against the declared schema (type, bounds),
    before anything else is read or imported. Raises ConfigError naming ``--set KEY=VALUE``.
    Cross-field checks come later, with the whole config."""
    for item in overrides:
        parts, value = parse_override(item)
        where = f"--set {item}"
        tp: Any = Config
        for i, p in enumerate(parts):
            path = ".".join(parts[: i + 1])
            hints = typing.get_type_hints(tp)
            known = [f.name for f in dataclasses.fields(tp) if f.name.isupper()]
            if p not in known:
                what = "unknown section" if i == 0 else "unknown key"
                raise ConfigError(path, what + suggest(p, known), where)
            if i == len(parts) - 1:
                if tp is not Config:  # a whole section (TRAIN=...) is checked with the file
                    f = next(f for f in dataclasses.fields(tp) if f.name == p)
                    convert_field(f, hints[p], value, path, where)
                break
            nxt = _model_config_class() if tp is Config and p == "MODEL" else _schema_of(hints[p])
            if nxt is None:
                raise ConfigError(path, "is not a section: cannot set a key below it", where)
            tp = nxt


def override_for(key: str, overrides: list[str]) -> str | None:
    """The ``--set`` item that set ``key`` (or a section above it), if any; the last wins."""
    for item in reversed(overrides):
        k = item.partition("=")[0].strip()
        if key == k or key.startswith((k + ".", k + "[")):
            return item
    return None


def load_config(path: str, overrides: list[str] | None = None) -> Config:
    """Read ``path``, apply ``--set`` overrides, parse and check. Raises ConfigError.

    ``--set`` keys are checked first (no file read, no torch), and an error in a value that
    an override set names ``--set KEY=VALUE`` rather than the file."""
    overrides = list(overrides or [])
    check_override_keys(overrides)
    if not os.path.isfile(path):
        raise ConfigError("--cfg", f"config file not found: {path}", None)
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "<yaml>"
        problem = getattr(e, "problem", None) or _first_line(e)
        raise ConfigError(where, f"invalid YAML: {problem}", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("--cfg", f"cannot read: {e}", path) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("<top>", f"expected a mapping of sections, got {type_name(raw)}", path)
    if overrides:
        raw = apply_overrides(raw, overrides)
    try:
        return from_raw(raw, path)
    except ConfigError as e:
        item = override_for(e.key, overrides)
        if item is None:
            raise
        raise ConfigError(e.key, e.detail, f"--set {item}") from None


def check_log_dir(path: str, source: str) -> None:
    """Fail early (ConfigError naming ``source``) if ``path`` cannot be a log root: it is
    a file, lies below a file, or its nearest existing folder is not writable."""
    p = os.path.abspath(path)
    if os.path.exists(p) and not os.path.isdir(p):
        raise ConfigError(
            source, f"{path} is a file, not a folder (the log root holds one folder per run)"
        )
    probe = p
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise ConfigError(source, f"{path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(source, f"{path}: {probe} is not writable")


_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def apply_thread_default(cfg: Config) -> None:
    """``TRAIN.THREADS`` as the thread variables of this process (and its loader workers),
    before torch is imported so that its thread pools start at that size."""
    n = cfg.TRAIN.THREADS
    if n is not None and "torch" not in sys.modules:
        for var in _THREAD_VARS:
            os.environ[var] = str(n)
