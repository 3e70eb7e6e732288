"""Datasets yielding ``{"blurry", "sharp": [T, 3, H, W], "spikes": [T, K, H, W]}`` float32.

* :class:`SyntheticSpikeDataset`: clips rendered on the fly (``trainer.data.synthetic``).
* :class:`GoProSpikeDataset`: the GoPro-spike folder layout::

      ROOT/<split>/<sequence>/blur/<frame>.png    blurry frames (8-bit RGB)
      ROOT/<split>/<sequence>/sharp/<frame>.png   sharp frames, same names
      ROOT/<split>/<sequence>/spike/<frame>.dat   the spike stream of that frame's exposure

  Clips are consecutive ``clip_len`` frames of a sequence, windows not overlapping.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from stagewatch.errors import UsageError
from trainer.data.augment import crop_window, flip_rotate
from trainer.data.dat import DatError, read_dat
from trainer.data.png import PngError, read_png
from trainer.data.synthetic import SceneClip, SynthParams
from trainer.data.voxel import voxelize


class DataError(UsageError):
    """Missing or inconsistent data files (the message names the file)."""


@dataclass(frozen=True)
class ClipSpec:
    clip_len: int
    bins: int
    crop: int  # 0 = whole frame
    train: bool  # random crop + flips/rotations, else centre crop
    flip: bool = True
    rotate: bool = True


def _item_rng() -> np.random.Generator:
    # drawn from torch's generator so DataLoader worker seeding governs augmentation
    return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))


def _to_item(
    blurry: np.ndarray,
    sharp: np.ndarray,
    spikes: np.ndarray,
    spec: ClipSpec,
    rng: np.random.Generator | None,
) -> dict[str, torch.Tensor]:
    """``[T, H, W, 3]`` x2 + ``[T, K, H, W]`` -> tensors ``[T, C, H, W]``, augmented."""
    arrays = [blurry.transpose(0, 3, 1, 2), sharp.transpose(0, 3, 1, 2), spikes]
    if spec.train and rng is not None:
        arrays = flip_rotate(arrays, rng, spec.flip, spec.rotate)
    b, s, k = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays)
    return {"blurry": b, "sharp": s, "spikes": k}


class SyntheticSpikeDataset(Dataset):
    """``n_clips`` synthetic clips of one split; each renders only its crop window."""

    def __init__(
        self, params: SynthParams, split: str, n_clips: int, spec: ClipSpec, cache: bool = False
    ) -> None:
        if params.ticks_per_frame < spec.bins:
            raise DataError(
                f"DATA.SYNTHETIC.TICKS_PER_FRAME ({params.ticks_per_frame}) must be at least "
                f"the spike bins per frame MODEL.SPIKE.BINS ({spec.bins})"
            )
        self.params, self.split, self.n, self.spec = params, split, n_clips, spec
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = (
            {} if cache else None
        )

    def __len__(self) -> int:
        return self.n

    def _voxels(self, spikes: np.ndarray) -> np.ndarray:
        return np.stack([voxelize(f, self.spec.bins) for f in spikes])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        p, spec = self.params, self.spec
        rng = _item_rng() if spec.train else None
        y0, x0, h, w = crop_window(p.height, p.width, spec.crop, rng)
        if self._cache is not None:
            if index not in self._cache:
                a = SceneClip(p, self.split, index, spec.clip_len).render()
                self._cache[index] = (a.blurry, a.sharp, self._voxels(a.spikes))
            b, s, v = self._cache[index]
            win = (slice(y0, y0 + h), slice(x0, x0 + w))
            return _to_item(
                b[:, win[0], win[1]], s[:, win[0], win[1]], v[..., win[0], win[1]], spec, rng
            )
        a = SceneClip(p, self.split, index, spec.clip_len).render(y0, x0, h, w)
        return _to_item(a.blurry, a.sharp, self._voxels(a.spikes), spec, rng)


def _sorted_files(folder: str, ext: str) -> list[str]:
    return sorted(f[: -len(ext)] for f in os.listdir(folder) if f.endswith(ext))


class GoProSpikeDataset(Dataset):
    """Clips from ``root/split`` in the GoPro-spike layout (see the module docstring)."""

    def __init__(self, root: str, split: str, spec: ClipSpec) -> None:
        self.spec = spec
        base = os.path.join(root, split)
        if not os.path.isdir(base):
            raise DataError(f"{base}: split folder not found")
        self.clips: list[tuple[str, list[str]]] = []
        seqs = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
        if not seqs:
            raise DataError(f"{base}: no sequence folders")
        for seq in seqs:
            d = os.path.join(base, seq)
            for sub in ("blur", "sharp", "spike"):
                if not os.path.isdir(os.path.join(d, sub)):
                    raise DataError(f"{os.path.join(d, sub)}: folder not found")
            frames = _sorted_files(os.path.join(d, "blur"), ".png")
            sharp = set(_sorted_files(os.path.join(d, "sharp"), ".png"))
            spike = set(_sorted_files(os.path.join(d, "spike"), ".dat"))
            for f in frames:
                if f not in sharp:
                    raise DataError(
                        f"{os.path.join(d, 'sharp', f + '.png')}: missing "
                        f"(blur/{f}.png has no sharp twin)"
                    )
                if f not in spike:
                    raise DataError(
                        f"{os.path.join(d, 'spike', f + '.dat')}: missing "
                        f"(blur/{f}.png has no spike stream)"
                    )
            extra = sharp.difference(frames)
            if extra:
                raise DataError(
                    f"{os.path.join(d, 'sharp', min(extra) + '.png')}: no matching blur frame"
                )
            for i in range(0, len(frames) - spec.clip_len + 1, spec.clip_len):
                self.clips.append((d, frames[i : i + spec.clip_len]))
        if not self.clips:
            raise DataError(f"{base}: no sequence has {spec.clip_len} frames (DATA.CLIP_LEN)")

    def __len__(self) -> int:
        return len(self.clips)

    def _read(self, d: str, frame: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        bp, sp, kp = (
            os.path.join(d, "blur", frame + ".png"),
            os.path.join(d, "sharp", frame + ".png"),
            os.path.join(d, "spike", frame + ".dat"),
        )
        try:
            blur, sharp = read_png(bp), read_png(sp)
        except (PngError, OSError) as e:
            raise DataError(str(e)) from None
        for path, img in ((bp, blur), (sp, sharp)):
            if img.shape[2] != 3:
                raise DataError(f"{path}: expected an RGB image, got {img.shape[2]} channels")
        if blur.shape != sharp.shape:
            raise DataError(
                f"{sp}: size {sharp.shape[:2]} differs from its blur frame {blur.shape[:2]}"
            )
        try:
            spikes = read_dat(kp, blur.shape[0], blur.shape[1])
        except (DatError, OSError) as e:
            raise DataError(str(e)) from None
        if spikes.shape[0] < self.spec.bins:
            raise DataError(
                f"{kp}: {spikes.shape[0]} spike frames, "
                f"fewer than MODEL.SPIKE.BINS ({self.spec.bins})"
            )
        return blur, sharp, voxelize(spikes, self.spec.bins)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        d, frames = self.clips[index]
        parts = [self._read(d, f) for f in frames]
        blur = np.stack([p[0] for p in parts]).astype(np.float32) / 255.0
        sharp = np.stack([p[1] for p in parts]).astype(np.float32) / 255.0
        vox = np.stack([p[2] for p in parts])
        rng = _item_rng() if self.spec.train else None
        y0, x0, h, w = crop_window(blur.shape[1], blur.shape[2], self.spec.crop, rng)
        ys, xs = slice(y0, y0 + h), slice(x0, x0 + w)
        return _to_item(blur[:, ys, xs], sharp[:, ys, xs], vox[..., ys, xs], self.spec, rng)
