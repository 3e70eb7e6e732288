"""Aligned crops, flips and rotations of clip arrays shaped ``[..., H, W]``."""

from __future__ import annotations

import numpy as np


def crop_window(
    h: int, w: int, size: int, rng: np.random.Generator | None
) -> tuple[int, int, int, int]:
    """A ``size`` square window ``(y0, x0, h, w)``: random with ``rng``, else centred.

    ``size`` 0 (or larger than the frame) keeps the whole frame.
    """
    if size <= 0 or (size >= h and size >= w):
        return 0, 0, h, w
    ch, cw = min(size, h), min(size, w)
    if rng is None:
        return (h - ch) // 2, (w - cw) // 2, ch, cw
    return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw


def flip_rotate(
    arrays: list[np.ndarray], rng: np.random.Generator, flip: bool, rotate: bool
) -> list[np.ndarray]:
    """The same random flips / 90-degree rotation applied to every array (last two axes)."""
    if flip and rng.random() < 0.5:
        arrays = [a[..., ::-1] for a in arrays]
    if flip and rng.random() < 0.5:
        arrays = [a[..., ::-1, :] for a in arrays]
    if rotate and rng.random() < 0.5:
        if arrays[0].shape[-1] == arrays[0].shape[-2]:
            arrays = [np.swapaxes(a, -1, -2) for a in arrays]  # with the flips: all 8 symmetries
        else:
            arrays = [a[..., ::-1, ::-1] for a in arrays]  # 180 degrees keeps the shape
    return [np.ascontiguousarray(a) for a in arrays]
