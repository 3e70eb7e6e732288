"""Minimal PNG reading and writing with zlib (Pillow is used for reading when installed).

The writer emits 8-bit grey or RGB with the "Up" filter. The fallback reader handles
non-interlaced 8/16-bit grey, grey+alpha, RGB, RGBA and 8-bit palette images, which covers
the PNG sequences of video deblurring datasets; install Pillow to read them faster.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

_SIG = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


class PngError(ValueError):
    """Not a PNG this reader understands."""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(img: np.ndarray, level: int = 6) -> bytes:
    """``[H, W]`` or ``[H, W, 3]`` uint8 -> PNG bytes."""
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"expected uint8 [H, W] or [H, W, 3], got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    rows = img.reshape(h, -1)
    up = rows.copy()
    up[1:] = rows[1:] - rows[:-1]  # uint8 arithmetic wraps, as the filter wants
    filt = np.full((h, 1), 2, np.uint8)
    filt[0] = 0
    up[0] = rows[0]
    raw = np.concatenate([filt, up], axis=1).tobytes()
    color = 0 if img.ndim == 2 else 2
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return (
        _SIG
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw, level))
        + _chunk(b"IEND", b"")
    )


def write_png(path: str | os.PathLike[str], img: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(encode_png(img))


def _unfilter(data: bytes, h: int, stride: int, bpp: int, source: str) -> np.ndarray:
    if len(data) < h * (stride + 1):
        raise PngError(f"{source}: truncated image data")
    buf = np.frombuffer(data, np.uint8)[: h * (stride + 1)].reshape(h, stride + 1)
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(h):
        ft, line = buf[y, 0], buf[y, 1:]
        if ft == 0:
            cur = line.copy()
        elif ft == 1:
            cur = np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif ft == 2:
            cur = line + prev
        elif ft in (3, 4):
            cur = _sequential(line.tolist(), prev.tolist(), bpp, int(ft))
        else:
            raise PngError(f"{source}: bad filter type {ft} in row {y}")
        out[y] = cur
        prev = out[y]
    return out


def _sequential(line: list[int], prev: list[int], bpp: int, ft: int) -> np.ndarray:
    cur = line[:]
    for i in range(len(cur)):
        a = cur[i - bpp] if i >= bpp else 0
        b = prev[i]
        if ft == 3:
            cur[i] = (cur[i] + ((a + b) >> 1)) & 255
        else:
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[i] = (cur[i] + pred) & 255
    return np.asarray(cur, np.uint8)


def decode_png(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """PNG bytes -> ``[H, W, C]`` uint8 (C = 1, 2, 3 or 4; 16-bit reduced to 8)."""
    if not data.startswith(_SIG):
        raise PngError(f"{source}: not a PNG file")
    pos, idat, ihdr, palette = 8, [], None, None
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if ihdr is None or not idat:
        raise PngError(f"{source}: missing IHDR or IDAT")
    w, h, depth, color, _comp, _filt, interlace = ihdr
    if interlace or color not in _CHANNELS or depth not in (8, 16) or (color == 3 and depth != 8):
        raise PngError(
            f"{source}: unsupported PNG (bit depth {depth}, colour type {color}, interlace "
            f"{interlace}); install Pillow to read it"
        )
    ch = _CHANNELS[color]
    bpp = ch * depth // 8
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise PngError(f"{source}: corrupt image data ({e})") from None
    rows = _unfilter(raw, h, w * bpp, bpp, source)
    # 16-bit samples are big-endian: keep the high byte
    img = rows.reshape(h, w, ch, 2)[..., 0] if depth == 16 else rows.reshape(h, w, ch)
    if color == 3:
        if palette is None:
            raise PngError(f"{source}: palette image without PLTE")
        img = palette[img[..., 0]]
    return np.ascontiguousarray(img)


def read_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PNG as ``[H, W, C]`` uint8 (RGB when Pillow is installed and reads it)."""
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    with open(path, "rb") as f:
        return decode_png(f.read(), os.fspath(path))
