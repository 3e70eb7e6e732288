"""Losses: Charbonnier and a VGG perceptual loss with weights from a local file only."""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from stagewatch.errors import UsageError
from trainer.vgg_layers import VGG_CFG as _VGG_CFG
from trainer.vgg_layers import VGG_LAYERS

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Mean of ``sqrt((pred - target)^2 + eps^2)``, computed in fp32."""
    d = pred.float() - target.float()
    return torch.sqrt(d * d + eps * eps).mean()


class VGGFeatures(nn.Module):
    """VGG convolutions up to ``layer`` (inclusive of its ReLU), frozen, ImageNet-normalised."""

    def __init__(self, network: str = "vgg16", layer: str = "relu3_3") -> None:
        super().__init__()
        if layer not in VGG_LAYERS[network]:
            raise ValueError(f"{layer!r} is not a layer of {network}")
        cut = VGG_LAYERS[network].index(layer)
        mods: list[nn.Module] = []
        in_ch, seen = 3, 0
        for c in _VGG_CFG[network]:
            if c == "M":
                mods.append(nn.MaxPool2d(2, 2))
                continue
            mods += [nn.Conv2d(in_ch, c, 3, padding=1), nn.ReLU(inplace=False)]
            in_ch, seen = c, seen + 1
            if seen > cut:
                break
        self.features = nn.Sequential(*mods)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def load_file(self, path: str) -> None:
        """Load a torchvision-format state dict (``features.N.weight`` keys) from ``path``."""
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for bad files
            raise UsageError(f"{path}: cannot read VGG weights ({type(e).__name__}: {e})") from None
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise UsageError(f"{path}: expected a state dict of VGG weights")
        own = self.features.state_dict()
        picked = {}
        for k, v in own.items():
            src = sd.get("features." + k, sd.get(k))
            if src is None:
                raise UsageError(f"{path}: missing VGG weight features.{k}")
            if tuple(src.shape) != tuple(v.shape):
                raise UsageError(
                    f"{path}: features.{k} has shape {tuple(src.shape)}, expected {tuple(v.shape)}"
                    " (wrong network? set LOSS.VGG_PERCEPTUAL.NETWORK)"
                )
            picked[k] = src
        self.features.load_state_dict(picked)

    def train(self, mode: bool = True) -> VGGFeatures:  # always in eval mode
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)


class PerceptualLoss(nn.Module):
    """L1 between VGG features of output and target, for ``[B, T, 3, H, W]`` clips."""

    def __init__(
        self,
        network: str = "vgg16",
        layer: str = "relu3_3",
        weights: str | None = None,
        *,
        allow_random: bool = False,
    ) -> None:
        super().__init__()
        self.vgg = VGGFeatures(network, layer)
        if weights:
            if not os.path.isfile(weights):
                raise UsageError(
                    f"{weights}: VGG weights file not found (LOSS.VGG_PERCEPTUAL.WEIGHTS)"
                )
            self.vgg.load_file(weights)
        elif not allow_random:
            raise UsageError(
                "the perceptual loss needs pretrained VGG weights from a local file: set "
                "LOSS.VGG_PERCEPTUAL.WEIGHTS (or LOSS.VGG_PERCEPTUAL.WEIGHT: 0)"
            )

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = pred.flatten(0, 1) if pred.dim() == 5 else pred
        t = target.flatten(0, 1) if target.dim() == 5 else target
        with torch.no_grad():
            ft = self.vgg(t)
        return F.l1_loss(self.vgg(p), ft)


def build_perceptual(cfg, *, warn: bool = True) -> PerceptualLoss | None:
    """The perceptual loss of a ``LOSS.VGG_PERCEPTUAL`` section, or None when its weight is 0."""
    if cfg.WEIGHT <= 0:
        return None
    if not cfg.WEIGHTS and cfg.ALLOW_RANDOM_WEIGHTS and warn:
        warnings.warn(
            "LOSS.VGG_PERCEPTUAL uses RANDOM VGG weights (ALLOW_RANDOM_WEIGHTS): fine for "
            "timing, meaningless for training",
            stacklevel=2,
        )
    return PerceptualLoss(
        cfg.NETWORK, cfg.LAYER, cfg.WEIGHTS, allow_random=cfg.ALLOW_RANDOM_WEIGHTS
    )
