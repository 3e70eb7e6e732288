"""SpyNet optical flow: a 6-level image pyramid, 5 convolutions (7×7) per level.

Levels run coarse to fine; each predicts a residual on the 2× up-sampled flow of the level
above, from [reference, support warped by that flow, flow] (8 channels). Inputs are RGB in
[0, 1], ImageNet-normalised and resized to a multiple of 32. The module layout
(``basic_module.<level>.basic_module.<0,2,4,6,8>``) matches the widely distributed
pretrained SpyNet files, which load with :meth:`SpyNet.load_weights`.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stagewatch.errors import ConfigError
from trainer.models.ops import flow_warp

LEVELS = 6
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class _Level(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        chans = (8, 32, 64, 32, 16, 2)
        layers: list[nn.Module] = []
        for i in range(5):
            layers.append(nn.Conv2d(chans[i], chans[i + 1], 7, 1, 3))
            if i < 4:
                layers.append(nn.ReLU(inplace=False))
        self.basic_module = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.basic_module(x)


class SpyNet(nn.Module):
    """Flow between two images at four output scales (1, 1/2, 1/4, 1/8 of the input)."""

    def __init__(self) -> None:
        super().__init__()
        self.basic_module = nn.ModuleList(_Level() for _ in range(LEVELS))
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.zero_init()

    def zero_init(self) -> None:
        """Zero each level's last conv: the untrained net predicts zero flow."""
        for level in self.basic_module:
            last = level.basic_module[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def load_weights(self, path: str | os.PathLike[str], key: str = "MODEL.FLOW_WEIGHTS") -> None:
        """Load pretrained weights from a local file (a state dict, optionally wrapped in
        ``params``/``state_dict`` and/or prefixed with ``spynet.``). Raises ConfigError."""
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # unreadable / not a torch file
            raise ConfigError(key, f"cannot read flow weights {path}: {e}") from None
        for wrapper in ("params", "state_dict", "model"):
            if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
        if not isinstance(obj, dict):
            raise ConfigError(key, f"{path} does not hold a state dict")
        own = self.state_dict()
        state: dict[str, Tensor] = {}
        for k, v in obj.items():
            k2 = k[len("spynet.") :] if k.startswith("spynet.") else k
            if k2 in own:
                state[k2] = v
        missing = [k for k in own if k not in state]
        if missing:
            raise ConfigError(key, f"{path} lacks SpyNet weights, e.g. {missing[0]!r}")
        for k, v in state.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise ConfigError(
                    key, f"{path}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}"
                )
        self.load_state_dict(state, strict=True)

    def forward(self, ref: Tensor, supp: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Flows [N,2,H/2^s,W/2^s] (dx, dy; float32) with ``warp(supp, flow) ≈ ref``."""
        n, _, h, w = ref.shape
        h32, w32 = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
        refs = [self._prep(ref, h32, w32)]
        supps = [self._prep(supp, h32, w32)]
        for _ in range(LEVELS - 1):
            refs.insert(0, F.avg_pool2d(refs[0], 2, 2, count_include_pad=False))
            supps.insert(0, F.avg_pool2d(supps[0], 2, 2, count_include_pad=False))
        flow = ref.new_zeros((n, 2, *refs[0].shape[2:]), dtype=torch.float32)
        levels: list[Tensor] = []
        for i, level in enumerate(self.basic_module):
            if i > 0:
                flow = (
                    F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2.0
                )
            warped = flow_warp(supps[i], flow, "border")  # the reference pads with the edge
            inp = torch.cat((refs[i], warped, flow.to(refs[i].dtype)), 1)
            flow = flow + level(inp).float()
            levels.append(flow)
        out = []
        for s in range(4):
            f = levels[LEVELS - 1 - s]
            lh, lw = f.shape[2:]
            th, tw = h // 2**s, w // 2**s
            f = F.interpolate(f, size=(th, tw), mode="bilinear", align_corners=False)
            # Python floats, not a tensor from a list: that is a host-to-device copy and a sync
            out.append(torch.cat((f[:, :1] * (tw / lw), f[:, 1:] * (th / lh)), 1))
        return out[0], out[1], out[2], out[3]

    def _prep(self, x: Tensor, h32: int, w32: int) -> Tensor:
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if x.shape[-2:] != (h32, w32):
            x = F.interpolate(x, size=(h32, w32), mode="bilinear", align_corners=False)
        return x
