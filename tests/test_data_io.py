"""``.dat`` and PNG round trips, voxelisation, aligned augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data.augment import crop_window, flip_rotate
from trainer.data.dat import DatError, decode_dat, encode_dat, frame_bytes, read_dat, write_dat
from trainer.data.png import PngError, decode_png, encode_png
from trainer.data.voxel import voxelize


@pytest.mark.parametrize("shape", [(3, 8, 16), (2, 5, 7), (1, 250, 400)])
def test_dat_round_trip(tmp_path, shape):
    rng = np.random.default_rng(0)
    spikes = (rng.random(shape) < 0.3).astype(np.uint8)
    path = tmp_path / "s.dat"
    write_dat(path, spikes)
    assert path.stat().st_size == shape[0] * frame_bytes(shape[1], shape[2])
    assert np.array_equal(read_dat(path, shape[1], shape[2]), spikes)


def test_dat_layout_matches_spec():
    # pixel p of the vertically flipped frame is bit p % 8 (LSB first) of byte p // 8
    f = np.zeros((1, 2, 8), np.uint8)
    f[0, 1, 0] = 1  # bottom row, first pixel -> flipped index 0 -> byte 0 bit 0
    f[0, 0, 2] = 1  # top row -> flipped row 1 -> pixel 10 -> byte 1 bit 2
    assert encode_dat(f) == bytes([0b1, 0b100])
    # padding: 3x3 = 9 bits -> 2 bytes per frame, the rest zero
    g = np.ones((2, 3, 3), np.uint8)
    assert encode_dat(g) == bytes([255, 1, 255, 1])


def test_dat_size_mismatch_names_file(tmp_path):
    p = tmp_path / "bad.dat"
    p.write_bytes(b"\x00" * 7)
    with pytest.raises(DatError, match=r"bad\.dat"):
        read_dat(p, 4, 4)
    with pytest.raises(DatError):
        decode_dat(b"", 4, 4)


@pytest.mark.parametrize("shape", [(5, 7, 3), (16, 9), (1, 1, 3)])
def test_png_round_trip(shape):
    img = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    out = decode_png(encode_png(img))
    assert np.array_equal(out.reshape(img.shape), img)


def test_png_decoder_handles_all_filters():
    import struct
    import zlib

    rng = np.random.default_rng(2)
    h, w = 6, 5
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    # encode row y with filter y % 5 using the PNG definitions
    rows, prev = [], np.zeros(w * 3, np.int64)
    for y in range(h):
        cur = img[y].reshape(-1).astype(np.int64)
        ft = y % 5
        out = []
        for i, x in enumerate(cur):
            a = cur[i - 3] if i >= 3 else 0
            b = prev[i]
            c = prev[i - 3] if i >= 3 else 0
            pred = [0, a, b, (a + b) // 2, None][ft]
            if ft == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out.append((x - pred) % 256)
        rows.append(bytes([ft, *out]))
        prev = cur

    def chunk(k, d):
        return struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))

    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )
    assert np.array_equal(decode_png(data), img)
    with pytest.raises(PngError):
        decode_png(b"not a png")


def test_voxelize_counts_log1p_normalised():
    s = np.zeros((10, 1, 2), np.uint8)
    s[:, 0, 0] = 1  # fires every tick
    s[0, 0, 1] = 1
    v = voxelize(s, 5)  # 2 ticks per bin
    assert v.shape == (5, 1, 2)
    assert np.allclose(v[:, 0, 0], 1.0)  # full bins -> 1
    assert np.isclose(v[0, 0, 1], np.log1p(1) / np.log1p(2))
    assert np.all(v[1:, 0, 1] == 0)
    with pytest.raises(ValueError):
        voxelize(s[:3], 5)


def test_flips_and_rotations_stay_aligned():
    rng = np.random.default_rng(3)
    base = rng.random((2, 8, 8))
    a, b = base[None].repeat(3, 0), base[None].repeat(5, 0)
    for seed in range(16):
        x, y = flip_rotate([a, b], np.random.default_rng(seed), True, True)
        assert np.array_equal(x[0], y[0])
    assert crop_window(10, 12, 4, None) == (3, 4, 4, 4)
    assert crop_window(10, 12, 0, None) == (0, 0, 10, 12)
