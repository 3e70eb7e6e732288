"""Spike-camera ``.dat`` files: binary spike frames, no header.

Each frame takes ``ceil(H*W/8)`` bytes: the frame is flipped vertically, flattened row-major,
and pixel ``p`` is bit ``p % 8`` (least significant first) of byte ``p // 8``; the last byte
of a frame is zero-padded when ``H*W`` is not a multiple of 8.
"""

from __future__ import annotations

import os

import numpy as np


class DatError(ValueError):
    """A ``.dat`` file that does not match the expected frame size."""


def frame_bytes(height: int, width: int) -> int:
    return (height * width + 7) // 8


def encode_dat(spikes: np.ndarray) -> bytes:
    """``[N, H, W]`` 0/1 (bool or integer) array -> ``.dat`` bytes."""
    if spikes.ndim != 3:
        raise ValueError(f"spikes must be [frames, H, W], got shape {spikes.shape}")
    n, h, w = spikes.shape
    flat = np.ascontiguousarray(spikes[:, ::-1, :]).reshape(n, h * w).astype(bool)
    pad = frame_bytes(h, w) * 8 - h * w
    if pad:
        flat = np.concatenate([flat, np.zeros((n, pad), dtype=bool)], axis=1)
    return np.packbits(flat, axis=1, bitorder="little").tobytes()


def decode_dat(data: bytes, height: int, width: int, source: str = "<bytes>") -> np.ndarray:
    """``.dat`` bytes -> ``[N, H, W]`` uint8 array of 0/1."""
    fb = frame_bytes(height, width)
    if len(data) == 0 or len(data) % fb:
        raise DatError(
            f"{source}: {len(data)} bytes is not a whole number of {height}x{width} spike "
            f"frames ({fb} bytes each)"
        )
    n = len(data) // fb
    packed = np.frombuffer(data, dtype=np.uint8).reshape(n, fb)
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : height * width]
    return np.ascontiguousarray(bits.reshape(n, height, width)[:, ::-1, :])


def write_dat(path: str | os.PathLike[str], spikes: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(encode_dat(spikes))


def read_dat(path: str | os.PathLike[str], height: int, width: int) -> np.ndarray:
    """Read all frames of a ``.dat`` file as ``[N, H, W]`` uint8 0/1."""
    with open(path, "rb") as f:
        data = f.read()
    return decode_dat(data, height, width, os.fspath(path))
