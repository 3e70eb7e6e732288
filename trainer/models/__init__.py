"""The VRT + spike deblurring model (see shared/design/MODEL.md), instrumented per stage.

>>> cfg = ModelConfig.from_dict(yaml_section["MODEL"], file)
>>> model = build_model(cfg)
>>> out = model(rgb, spikes)          # [B,T,3,H,W], [B,T,K,H,W] (None without spikes)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from trainer.models.config import ModelConfig, SpikeConfig, VRTConfig
from trainer.models.model import VRTWithSpike
from trainer.models.pretrained import export_official, load_pretrained_vrt, save_official
from trainer.models.regions import region_names

__all__ = [
    "ModelConfig",
    "SpikeConfig",
    "VRTConfig",
    "VRTWithSpike",
    "build_model",
    "compile_regions",
    "export_official",
    "flow_and_deform_parameters",
    "load_pretrained_vrt",
    "other_parameters",
    "param_groups",
    "region_names",
    "save_official",
    "set_flow_and_deform_trainable",
]


def build_model(cfg: ModelConfig, load_pretrained: bool = True) -> VRTWithSpike:
    """The model for ``cfg`` on the CPU, in fp32 (move it with ``.to(device)``).

    With ``MODEL.PRETRAINED`` set (and ``load_pretrained``), the VRT part is loaded from it
    (:func:`load_pretrained_vrt`, strict per ``MODEL.PRETRAINED_STRICT``) and the report is
    kept as ``model.pretrained_report``. Nothing is loaded into a model built on the meta
    device. With ``MODEL.COMPILE`` its TMSA blocks' attention and MLP paths are compiled.
    """
    model = VRTWithSpike(cfg)
    if load_pretrained and cfg.PRETRAINED and not next(model.parameters()).is_meta:
        model.pretrained_report = load_pretrained_vrt(
            model, cfg.PRETRAINED, strict=cfg.PRETRAINED_STRICT
        )
    if cfg.COMPILE:
        compile_regions(model, backend=cfg.COMPILE_BACKEND)
    return model


def compile_regions(model: nn.Module, **kwargs: Any) -> int:
    """Regional ``torch.compile`` (kwargs go to it) of every TMSA block's attention and MLP
    paths; timing regions, hooks and checkpoints stay outside. Returns the block count."""
    import torch._dynamo

    from trainer.models.tmsa import TMSA

    blocks = [m for m in model.modules() if isinstance(m, TMSA)]
    # all blocks share two code objects; each distinct (shape, window, shift, mutual) is one
    # more compiled variant of them: the default limit (8) would leave most blocks eager
    cfg = torch._dynamo.config
    key = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, key, max(getattr(cfg, key), 128))
    for b in blocks:
        b.compile_paths(**kwargs)
    return len(blocks)


def flow_and_deform_parameters(model: nn.Module) -> list[nn.Parameter]:
    """SpyNet's and the deformable-alignment parameters (DDP-wrapped models are fine)."""
    return _unwrap(model).flow_and_deform_parameters()


def other_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All parameters not in :func:`flow_and_deform_parameters`."""
    special = {id(p) for p in flow_and_deform_parameters(model)}
    return [p for p in _unwrap(model).parameters() if id(p) not in special]


def set_flow_and_deform_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (False) or unfreeze (True) the flow and deformable-alignment parameters."""
    for p in flow_and_deform_parameters(model):
        p.requires_grad_(trainable)


def param_groups(
    model: nn.Module, lr: float, flow_lr_mult: float = 0.125, weight_decay: float = 0.0
) -> list[dict[str, object]]:
    """Optimizer groups: flow + deformable parameters at ``lr × flow_lr_mult``, the rest at
    ``lr`` (the VRT recipe). Each group has an ``initial_lr`` and a ``name``."""

    def group(name: str, params: Iterable[nn.Parameter], glr: float) -> dict[str, object]:
        return {
            "name": name,
            "params": list(params),
            "lr": glr,
            "initial_lr": glr,
            "weight_decay": weight_decay,
        }

    return [
        group("main", other_parameters(model), lr),
        group("flow_deform", flow_and_deform_parameters(model), lr * flow_lr_mult),
    ]


def _unwrap(model: nn.Module) -> VRTWithSpike:
    m = getattr(model, "module", model)  # DDP
    m = getattr(m, "_orig_mod", m)  # torch.compile
    if not isinstance(m, VRTWithSpike):
        raise TypeError(f"expected a VRTWithSpike model, got {type(m).__name__}")
    return m


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
