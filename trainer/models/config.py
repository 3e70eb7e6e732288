"""Typed model configuration: the YAML ``MODEL:`` section, validated with key paths.

Defaults are the full video-deblurring size of VRT (MODEL.md) with a 96-wide spike branch.
Every bad value raises :class:`stagewatch.errors.ConfigError` naming the key path, e.g.
``MODEL.VRT.DEPTHS``, and misspelt keys get a "did you mean" suggestion.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from stagewatch.errors import ConfigError
from trainer.typed_config import from_dict, setting

__all__ = ["ModelConfig", "SpikeConfig", "VRTConfig"]

#: VRT stages 1-7 share one width; stage 8's reconstruction groups share another.
NUM_ALIGN_STAGES = 7


def _full_dims() -> list[int]:
    return [96] * 7 + [120] * 4


def _full_depths() -> list[int]:
    return [8] * 7 + [4] * 4


def _full_heads() -> list[int]:
    return [6] * 11


@dataclass
class VRTConfig:
    """VRT settings. Lists have one entry per group: 7 alignment stages then stage 8's groups."""

    EMBED_DIMS: list[int] = field(default_factory=_full_dims)
    DEPTHS: list[int] = field(default_factory=_full_depths)
    NUM_HEADS: list[int] = field(default_factory=_full_heads)
    WINDOW_SIZE: list[int] = field(default_factory=lambda: [6, 8, 8])
    #: indices into DEPTHS of reconstruction groups that attend within single frames (window 1×h×w)
    INDEP_RECONSTS: list[int] = field(default_factory=lambda: [9, 10])
    MLP_RATIO: float = 2.0
    QKV_BIAS: bool = True
    DEFORMABLE_GROUPS: int = 16
    MAX_RESIDUE_MAGNITUDE: float = 10.0
    PA_FRAMES: int = 2
    MUTUAL_RATIO: float = 0.75
    DROP_PATH_RATE: float = 0.2
    USE_CHECKPOINT_ATTN: bool = True
    USE_CHECKPOINT_FFN: bool = True
    #: checkpoint the flow-guided deformable alignment of stages 1-7 (it saves ~9x its input)
    USE_CHECKPOINT_ALIGN: bool = False

    @property
    def num_recon_groups(self) -> int:
        return len(self.DEPTHS) - NUM_ALIGN_STAGES


@dataclass
class SpikeConfig:
    """Spike branch: 3-D encoder, temporal self-attention per scale, fusion after stages 1-4."""

    BINS: int = 5
    WIDTH: int = 96
    RES_BLOCKS: int = 2
    TSA_HEADS: int = 4
    TSA_MLP_RATIO: float = 2.0
    #: token budget of one temporal-attention chunk (pixels × frames); bounds peak memory
    TSA_CHUNK_TOKENS: int = 49152
    FUSION_HEADS: int = 4
    FUSION_MLP_RATIO: float = 2.0


@dataclass
class ModelConfig:
    """The ``MODEL:`` section."""

    USE_SPIKE: bool = True
    FLOW_WEIGHTS: str | None = setting(None, expect="a file path or null")
    #: official VRT checkpoint (or a SpyNet / our own state dict) for the VRT part
    PRETRAINED: str | None = setting(None, expect="a file path or null")
    #: any missing, unexpected or mis-shaped entry in PRETRAINED stops with an error
    PRETRAINED_STRICT: bool = True
    VRT: VRTConfig = field(default_factory=VRTConfig)
    SPIKE: SpikeConfig = field(default_factory=SpikeConfig)
    #: regional torch.compile of every TMSA block's attention and MLP paths (opt-in)
    COMPILE: bool = False
    COMPILE_BACKEND: str = setting("inductor", expect="a torch.compile backend name")

    @classmethod
    def from_dict(cls, section: dict[str, Any] | None, file: str | None = None) -> ModelConfig:
        """Build from the YAML ``MODEL:`` mapping (missing keys take defaults), validated."""
        cfg = from_dict(cls, section, "MODEL", file)
        cfg.validate(file)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict with the YAML's upper-case keys (round-trips through from_dict)."""
        return dataclasses.asdict(self)  # lists are copied

    # ------------------------------------------------------------------ validation

    def validate(self, file: str | None = None) -> None:
        """Check cross-field constraints; raises ConfigError with the offending key path."""
        self._validate_vrt_widths(file)
        self._validate_vrt_blocks(file)
        self._validate_spike(file)

    def _validate_vrt_widths(self, file: str | None) -> None:
        """Stage depths, widths and heads: their counts and how they divide."""
        v = self.VRT
        p = "MODEL.VRT."
        n = len(v.DEPTHS)
        if n < NUM_ALIGN_STAGES + 1:
            raise ConfigError(
                p + "DEPTHS",
                f"needs at least {NUM_ALIGN_STAGES + 1} entries "
                f"(7 alignment stages + reconstruction groups), got {n}",
                file,
            )
        for key in ("EMBED_DIMS", "NUM_HEADS"):
            if len(getattr(v, key)) != n:
                raise ConfigError(
                    p + key,
                    f"needs {n} entries (one per DEPTHS entry), got {len(getattr(v, key))}",
                    file,
                )
        for key in ("EMBED_DIMS", "DEPTHS", "NUM_HEADS"):
            for i, x in enumerate(getattr(v, key)):
                if x < 1:
                    raise ConfigError(f"{p}{key}[{i}]", f"must be >= 1, got {x}", file)
        if len(set(v.EMBED_DIMS[:NUM_ALIGN_STAGES])) != 1:
            raise ConfigError(
                p + "EMBED_DIMS",
                "the first 7 entries must be equal (stages 1-7 add skip connections)",
                file,
            )
        if len(set(v.EMBED_DIMS[NUM_ALIGN_STAGES:])) != 1:
            raise ConfigError(
                p + "EMBED_DIMS", "the reconstruction entries (8th on) must be equal", file
            )
        for i, (d, h) in enumerate(zip(v.EMBED_DIMS, v.NUM_HEADS, strict=True)):
            if d % h:
                raise ConfigError(
                    f"{p}NUM_HEADS[{i}]", f"{h} heads do not divide EMBED_DIMS[{i}] = {d}", file
                )
        if v.EMBED_DIMS[0] % 4:
            raise ConfigError(
                p + "EMBED_DIMS",
                "stage width must be a multiple of 4 (pixel-shuffle up-sampling)",
                file,
            )

    def _validate_vrt_blocks(self, file: str | None) -> None:
        """Windows, groups and the other per-block settings of the VRT."""
        v = self.VRT
        p = "MODEL.VRT."
        n = len(v.DEPTHS)
        if len(v.WINDOW_SIZE) != 3 or any(w < 1 for w in v.WINDOW_SIZE):
            raise ConfigError(
                p + "WINDOW_SIZE",
                f"expected [frames, height, width], positive, got {v.WINDOW_SIZE}",
                file,
            )
        if v.WINDOW_SIZE[0] < 2:
            raise ConfigError(
                p + "WINDOW_SIZE",
                "the temporal window must be >= 2 (mutual attention works on frame pairs)",
                file,
            )
        for i, g in enumerate(v.INDEP_RECONSTS):
            if not NUM_ALIGN_STAGES <= g < n:
                raise ConfigError(
                    f"{p}INDEP_RECONSTS[{i}]",
                    f"must index a reconstruction group ({NUM_ALIGN_STAGES}..{n - 1}), got {g}",
                    file,
                )
        if v.MLP_RATIO <= 0:
            raise ConfigError(p + "MLP_RATIO", f"must be > 0, got {v.MLP_RATIO}", file)
        if v.DEFORMABLE_GROUPS < 1 or v.EMBED_DIMS[0] % v.DEFORMABLE_GROUPS:
            raise ConfigError(
                p + "DEFORMABLE_GROUPS",
                f"must be >= 1 and divide the stage "
                f"width {v.EMBED_DIMS[0]}, got {v.DEFORMABLE_GROUPS}",
                file,
            )
        if v.MAX_RESIDUE_MAGNITUDE <= 0:
            raise ConfigError(p + "MAX_RESIDUE_MAGNITUDE", "must be > 0", file)
        if v.PA_FRAMES != 2:
            raise ConfigError(
                p + "PA_FRAMES",
                f"only 2 (neighbouring frames) is implemented, got {v.PA_FRAMES}",
                file,
            )
        if not 0.0 <= v.MUTUAL_RATIO <= 1.0:
            raise ConfigError(p + "MUTUAL_RATIO", f"must be in [0, 1], got {v.MUTUAL_RATIO}", file)
        if not 0.0 <= v.DROP_PATH_RATE < 1.0:
            raise ConfigError(
                p + "DROP_PATH_RATE", f"must be in [0, 1), got {v.DROP_PATH_RATE}", file
            )

    def _validate_spike(self, file: str | None) -> None:
        """The spike branch, and the weight files named by the config."""
        v, s = self.VRT, self.SPIKE
        p = "MODEL.SPIKE."
        for key in ("BINS", "WIDTH", "TSA_HEADS", "FUSION_HEADS"):
            if getattr(s, key) < 1:
                raise ConfigError(p + key, f"must be >= 1, got {getattr(s, key)}", file)
        if s.RES_BLOCKS < 0:
            raise ConfigError(p + "RES_BLOCKS", f"must be >= 0, got {s.RES_BLOCKS}", file)
        if s.WIDTH % s.TSA_HEADS:
            raise ConfigError(
                p + "TSA_HEADS", f"{s.TSA_HEADS} heads do not divide WIDTH = {s.WIDTH}", file
            )
        if v.EMBED_DIMS[0] % s.FUSION_HEADS:
            raise ConfigError(
                p + "FUSION_HEADS",
                f"{s.FUSION_HEADS} heads do not divide the VRT stage width {v.EMBED_DIMS[0]}",
                file,
            )
        if s.TSA_CHUNK_TOKENS < 1:
            raise ConfigError(p + "TSA_CHUNK_TOKENS", "must be >= 1", file)
        for key in ("TSA_MLP_RATIO", "FUSION_MLP_RATIO"):
            if getattr(s, key) <= 0:
                raise ConfigError(p + key, "must be > 0", file)
        if self.FLOW_WEIGHTS is not None and not os.path.isfile(self.FLOW_WEIGHTS):
            raise ConfigError("MODEL.FLOW_WEIGHTS", f"no such file: {self.FLOW_WEIGHTS}", file)
        if self.PRETRAINED is not None and not os.path.isfile(self.PRETRAINED):
            raise ConfigError("MODEL.PRETRAINED", f"no such file: {self.PRETRAINED}", file)
