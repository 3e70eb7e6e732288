"""The region names the model's instrumentation produces, derived from its config."""

from __future__ import annotations

from trainer.models.config import ModelConfig
from trainer.models.spike import NUM_SCALES


def region_names(
    cfg: ModelConfig,
    checkpointing: bool | None = None,
    train_flow: bool = True,
    spike_chunks: bool = True,
) -> list[str]:
    """Every region name one forward + backward of the model produces, forward first.

    ``checkpointing`` (default: from the config) adds ``backward/vrt/stageN/recompute``;
    ``train_flow=False`` (SpyNet frozen) drops ``backward/vrt/flow``. The trainer's own
    ``forward``/``backward`` parents are not listed.
    """
    if checkpointing is None:
        checkpointing = cfg.VRT.USE_CHECKPOINT_ATTN or cfg.VRT.USE_CHECKPOINT_FFN
    align_stages = {f"vrt/stage{i}" for i in range(1, 8)} if cfg.VRT.USE_CHECKPOINT_ALIGN else set()
    mods: list[str] = []
    if cfg.USE_SPIKE:
        mods.append("spike_encoder")
        mods += [f"spike_encoder/scale{i}" for i in range(NUM_SCALES)]
        mods.append("spike_tsa")
        mods += [f"spike_tsa/scale{i}" for i in range(NUM_SCALES)]
    mods += ["vrt", "vrt/flow", "vrt/prealign"]
    for i in range(1, 9):
        mods.append(f"vrt/stage{i}")
        if cfg.USE_SPIKE and i <= NUM_SCALES:
            mods.append(f"vrt/fusion{i}")
    mods.append("vrt/head")
    fwd = []
    for m in mods:
        fwd.append(f"forward/{m}")
        if spike_chunks and m.startswith("spike_tsa/"):
            fwd.append(f"forward/{m}/chunk")
    bwd = []
    for m in mods:
        if m == "vrt/flow" and not train_flow:
            continue
        bwd.append(f"backward/{m}")
        if (checkpointing and m.startswith("vrt/stage")) or m in align_stages:
            bwd.append(f"backward/{m}/recompute")
    return fwd + bwd
