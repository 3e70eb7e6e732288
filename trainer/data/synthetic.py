"""Procedural spike deblurring clips: textured scenes moving along random trajectories.

A clip is a textured background seen by a moving camera plus a few textured objects with
their own motion, rendered at ``ticks_per_frame`` instants per frame. From those ticks:

* sharp frame = the scene at the middle of the exposure;
* blurry frame = mean of the tick renders over the exposure;
* spikes = integrate-and-fire on luminance (``A += gain * gray`` per tick, fire and
  subtract ``threshold`` when ``A >= threshold``, random initial ``A`` in ``[0, threshold)``).

Everything random is drawn when a :class:`SceneClip` is built, from a generator seeded by
``(seed, split, index)``: a clip is a pure function of those, train and validation use
different seed streams, and any window of the frame renders the same pixels as the whole
frame cropped. Colours are quantised to 8 bits, as if read back from PNG files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SPLITS = {"train": 1, "val": 2}
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class SynthParams:
    height: int = 96
    width: int = 96
    ticks_per_frame: int = 32
    exposure: float = 1.0
    max_speed: float = 4.0
    objects: int = 2
    texture_scale: float = 1.0
    threshold: float = 2.0
    gain: float = 1.0
    seed: int = 0


@dataclass
class ClipArrays:
    """Rendered clip: ``blurry``/``sharp`` ``[T, H, W, 3]`` float32 in [0, 1] (8-bit levels),
    ``spikes`` ``[T, S, H, W]`` uint8 0/1 (S ticks per frame)."""

    blurry: np.ndarray
    sharp: np.ndarray
    spikes: np.ndarray


def _shift_sample(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``img [H, W, C]`` on the grid ``ys x xs`` (separable)."""
    iy = np.floor(ys).astype(np.int64)
    ix = np.floor(xs).astype(np.int64)
    fy = (ys - iy).astype(np.float32)[:, None, None]
    fx = (xs - ix).astype(np.float32)[None, :, None]
    rows = img[iy] * (1 - fy) + img[iy + 1] * fy
    return rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    gh, gw = math.ceil(h / cell) + 2, math.ceil(w / cell) + 2
    grid = rng.random((gh, gw, 3), dtype=np.float32)
    return _shift_sample(grid, np.arange(h) / cell, np.arange(w) / cell)


class SceneClip:
    """One deterministic clip of ``n_frames`` frames (see the module docstring)."""

    def __init__(self, params: SynthParams, split: str, index: int, n_frames: int) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        self.p, self.n = params, n_frames
        rng = np.random.default_rng([params.seed, SPLITS[split], index])
        p = params
        self.margin = math.ceil(p.max_speed * n_frames) + 2
        wh, ww = p.height + 2 * self.margin, p.width + 2 * self.margin
        self.world = self._texture(rng, wh, ww)
        # camera: p(t) = v (t - T/2) + a (t - T/2)^2 / 2, in pixels, t in frames
        ang = rng.uniform(0, 2 * math.pi)
        speed = rng.uniform(0.25, 1.0) * p.max_speed
        self.cam_v = np.array([math.sin(ang), math.cos(ang)]) * speed
        self.cam_a = rng.uniform(-1, 1, 2) * p.max_speed / max(n_frames, 1)
        self.objects = [self._object(rng) for _ in range(p.objects)]
        self.acc0 = rng.uniform(0, p.threshold, (p.height, p.width)).astype(np.float32)

    def _texture(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        s = self.p.texture_scale
        img = np.zeros((h, w, 3), np.float32)
        for cell, amp in ((24.0, 1.0), (12.0, 0.6), (6.0, 0.35), (3.0, 0.2)):
            img += amp * _value_noise(rng, h, w, cell * s)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        for _ in range(2):  # oriented gratings: straight edges at every angle
            th, f = rng.uniform(0, math.pi), rng.uniform(0.05, 0.2) / s
            wave = np.sin(
                2 * math.pi * f * (xx * math.cos(th) + yy * math.sin(th)) + rng.uniform(0, 6.3)
            )
            img += 0.4 * wave[..., None] * rng.uniform(-1, 1, 3).astype(np.float32)
        for _ in range(int(12 * h * w / (96 * 96 * s * s)) + 4):  # hard-edged patches
            ph, pw = (rng.uniform(4, 20, 2) * s).astype(int) + 1
            y, x = rng.integers(0, h), rng.integers(0, w)
            img[y : y + ph, x : x + pw] = rng.uniform(-0.5, 2.5, 3)
        lo, hi = img.min(axis=(0, 1)), img.max(axis=(0, 1))
        return (0.05 + 0.9 * (img - lo) / np.maximum(hi - lo, 1e-6)).astype(np.float32)

    def _object(self, rng: np.random.Generator) -> dict:
        p = self.p
        size = min(p.height, p.width)
        ang = rng.uniform(0, 2 * math.pi)
        speed = rng.uniform(0.5, 1.5) * p.max_speed
        return {
            "c": np.array([rng.uniform(0, p.height), rng.uniform(0, p.width)]),
            "v": np.array([math.sin(ang), math.cos(ang)]) * speed,
            "r": rng.uniform(0.08, 0.22) * size,
            "square": bool(rng.integers(0, 2)),
            "rot": rng.uniform(0, math.pi / 2),
            "base": rng.uniform(0.1, 0.9, 3).astype(np.float32),
            "amp": rng.uniform(0.05, 0.3, 3).astype(np.float32),
            "freq": rng.uniform(0.1, 0.4) / p.texture_scale,
            "phase": rng.uniform(0, 2 * math.pi),
        }

    def render_at(self, t: float, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """The scene at time ``t`` (frames) in the window ``[y0:y0+h, x0:x0+w]``."""
        tc = t - self.n / 2
        off = self.cam_v * tc + 0.5 * self.cam_a * tc * tc + self.margin
        ys = np.arange(y0, y0 + h) + off[0]
        xs = np.arange(x0, x0 + w) + off[1]
        img = _shift_sample(self.world, ys, xs)
        yy = np.arange(y0, y0 + h, dtype=np.float32)[:, None]
        xx = np.arange(x0, x0 + w, dtype=np.float32)[None, :]
        for o in self.objects:
            c = o["c"] + o["v"] * tc
            r = o["r"]
            if (
                c[0] + r + 2 < y0
                or c[0] - r - 2 > y0 + h
                or c[1] + r + 2 < x0
                or c[1] - r - 2 > x0 + w
            ):
                continue
            dy, dx = yy - np.float32(c[0]), xx - np.float32(c[1])
            cs, sn = math.cos(o["rot"]), math.sin(o["rot"])
            u, v = dx * cs + dy * sn, dy * cs - dx * sn
            dist = np.maximum(np.abs(u), np.abs(v)) if o["square"] else np.sqrt(u * u + v * v)
            alpha = np.clip(r - dist + 0.5, 0.0, 1.0)[..., None]
            stripes = np.sin(2 * math.pi * o["freq"] * u + o["phase"])[..., None]
            col = o["base"] + o["amp"] * stripes
            img = img * (1 - alpha) + col * alpha
        return img

    def render(
        self, y0: int = 0, x0: int = 0, h: int | None = None, w: int | None = None
    ) -> ClipArrays:
        """Render the window (default: the whole frame) for every frame and tick."""
        p = self.p
        h = p.height if h is None else h
        w = p.width if w is None else w
        if y0 < 0 or x0 < 0 or y0 + h > p.height or x0 + w > p.width:
            raise ValueError(f"window ({y0},{x0},{h},{w}) outside the {p.height}x{p.width} frame")
        s = p.ticks_per_frame
        blurry = np.empty((self.n, h, w, 3), np.float32)
        sharp = np.empty((self.n, h, w, 3), np.float32)
        spikes = np.empty((self.n, s, h, w), np.uint8)
        acc = self.acc0[y0 : y0 + h, x0 : x0 + w].copy()
        for i in range(self.n):
            total = np.zeros((h, w, 3), np.float32)
            for j in range(s):
                img = self.render_at(i + p.exposure * (j + 0.5) / s, y0, x0, h, w)
                total += img
                acc += p.gain * (img @ _LUMA)
                fired = acc >= p.threshold
                acc -= fired * np.float32(p.threshold)
                spikes[i, j] = fired
            blurry[i] = total / s
            sharp[i] = self.render_at(i + p.exposure / 2, y0, x0, h, w)
        return ClipArrays(quantize(blurry), quantize(sharp), spikes)


def quantize(x: np.ndarray) -> np.ndarray:
    """Round [0, 1] floats to 8-bit levels (what a PNG round trip gives)."""
    return (np.round(np.clip(x, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
