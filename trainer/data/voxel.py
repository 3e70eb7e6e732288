"""Spike streams -> the model's input: K bins per frame, ``log1p`` of counts, normalised."""

from __future__ import annotations

import math

import numpy as np


def bin_edges(ticks: int, bins: int) -> np.ndarray:
    """Tick index where each bin starts, plus ``ticks`` at the end (``bins + 1`` values)."""
    if bins < 1 or ticks < bins:
        raise ValueError(f"cannot split {ticks} spike ticks into {bins} bins (need ticks >= bins)")
    return (np.arange(bins + 1) * ticks) // bins


def voxelize(spikes: np.ndarray, bins: int) -> np.ndarray:
    """``[S, H, W]`` 0/1 spikes of one frame's exposure -> ``[K, H, W]`` float32 in [0, 1].

    Counts per bin go through ``log1p`` and are divided by ``log1p`` of the most spikes a
    bin can hold (one per tick), so every bin shares one fixed scale whatever the data.
    """
    s = spikes.shape[0]
    edges = bin_edges(s, bins)
    csum = np.concatenate(
        [np.zeros((1, *spikes.shape[1:]), np.int32), np.cumsum(spikes, axis=0, dtype=np.int32)]
    )
    counts = csum[edges[1:]] - csum[edges[:-1]]
    scale = 1.0 / math.log1p(int(np.max(np.diff(edges))))
    return (np.log1p(counts.astype(np.float32)) * np.float32(scale)).astype(np.float32)
