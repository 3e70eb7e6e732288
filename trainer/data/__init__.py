"""Training data: synthetic spike deblurring clips, GoPro-spike folders, ``.dat`` and PNG I/O."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from trainer.config import DataConfig
    from trainer.data.synthetic import SynthParams


def synth_params(cfg: DataConfig) -> SynthParams:
    from trainer.data.synthetic import SynthParams

    s = cfg.SYNTHETIC
    return SynthParams(
        height=s.HEIGHT,
        width=s.WIDTH,
        ticks_per_frame=s.TICKS_PER_FRAME,
        exposure=s.EXPOSURE,
        max_speed=s.MAX_SPEED,
        objects=s.OBJECTS,
        texture_scale=s.TEXTURE_SCALE,
        threshold=s.THRESHOLD,
        gain=s.GAIN,
        seed=s.SEED,
    )


def build_datasets(cfg: DataConfig, bins: int) -> tuple[Dataset, Dataset]:
    """Train and validation datasets for a ``DATA`` section and ``bins`` spike bins per frame."""
    from trainer.data.datasets import ClipSpec, GoProSpikeDataset, SyntheticSpikeDataset

    train = ClipSpec(cfg.CLIP_LEN, bins, cfg.CROP_SIZE, True, cfg.FLIP, cfg.ROTATE)
    vcrop = cfg.CROP_SIZE if cfg.VAL_CROP_SIZE is None else cfg.VAL_CROP_SIZE
    val = ClipSpec(cfg.CLIP_LEN, bins, vcrop, False)
    if cfg.TYPE == "synthetic":
        p, s = synth_params(cfg), cfg.SYNTHETIC
        return (
            SyntheticSpikeDataset(p, "train", s.TRAIN_CLIPS, train, s.CACHE),
            SyntheticSpikeDataset(p, "val", s.VAL_CLIPS, val, s.CACHE),
        )
    assert cfg.ROOT is not None  # checked by the config
    return (
        GoProSpikeDataset(cfg.ROOT, cfg.TRAIN_SPLIT, train),
        GoProSpikeDataset(cfg.ROOT, cfg.VAL_SPLIT, val),
    )
