"""Synthetic clips: determinism, split separation, windows, and the folder loader end to end."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from _trainer_helpers import ROOT, TINY

from trainer.data.datasets import ClipSpec, DataError, GoProSpikeDataset, SyntheticSpikeDataset
from trainer.data.synthetic import SceneClip, SynthParams

P = SynthParams(height=24, width=32, ticks_per_frame=8, max_speed=3.0, objects=2, seed=5)


def test_clip_is_a_pure_function_of_seed_split_index():
    a = SceneClip(P, "train", 3, 3).render()
    b = SceneClip(P, "train", 3, 3).render()
    for x, y in ((a.blurry, b.blurry), (a.sharp, b.sharp), (a.spikes, b.spikes)):
        assert np.array_equal(x, y)
    c = SceneClip(SynthParams(**{**P.__dict__, "seed": 6}), "train", 3, 3).render()
    assert not np.array_equal(a.sharp, c.sharp)


def test_train_and_val_never_share_a_clip():
    train = [SceneClip(P, "train", i, 2).render().sharp for i in range(6)]
    val = [SceneClip(P, "val", i, 2).render().sharp for i in range(6)]
    for t in train:
        for v in val:
            assert not np.allclose(t, v)


def test_clip_content_is_physical():
    a = SceneClip(P, "train", 0, 3).render()
    assert a.blurry.shape == (3, 24, 32, 3) and a.spikes.shape == (3, 8, 24, 32)
    assert a.blurry.min() >= 0 and a.blurry.max() <= 1
    assert set(np.unique(a.spikes)) <= {0, 1}
    # blur differs from the sharp frame where things move, and spikes follow brightness
    assert np.abs(a.blurry - a.sharp).mean() > 1e-3
    gray = a.blurry @ np.array([0.299, 0.587, 0.114])
    rate = a.spikes.mean(axis=1)
    assert np.corrcoef(gray.ravel(), rate.ravel())[0, 1] > 0.5
    # expected firing rate = gray * gain / threshold, on average
    assert abs(rate.mean() - gray.mean() / P.threshold) < 0.05


def test_window_renders_the_same_pixels_as_the_full_frame():
    clip = SceneClip(P, "val", 1, 2)
    full, win = clip.render(), clip.render(5, 7, 16, 16)
    assert np.array_equal(win.sharp, full.sharp[:, 5:21, 7:23])
    assert np.array_equal(win.spikes, full.spikes[:, :, 5:21, 7:23])


def test_dataset_items_and_determinism():
    spec = ClipSpec(clip_len=3, bins=4, crop=16, train=True)
    ds = SyntheticSpikeDataset(P, "train", 5, spec)
    torch.manual_seed(0)
    x = ds[2]
    torch.manual_seed(0)
    y = ds[2]
    assert x["blurry"].shape == (3, 3, 16, 16) and x["spikes"].shape == (3, 4, 16, 16)
    for k in x:
        assert torch.equal(x[k], y[k])
    assert x["spikes"].min() >= 0 and x["spikes"].max() <= 1
    with pytest.raises(DataError, match="TICKS_PER_FRAME"):
        SyntheticSpikeDataset(P, "train", 5, ClipSpec(3, 16, 16, True))


def test_synth_command_feeds_the_folder_loader(tmp_path):
    out = tmp_path / "ds"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "synth",
            "--out",
            str(out),
            "--sequences",
            "2",
            "--val-sequences",
            "1",
            "--frames",
            "4",
            "--set",
            "DATA.SYNTHETIC.HEIGHT=24",
            "--set",
            "DATA.SYNTHETIC.WIDTH=32",
            "--set",
            "DATA.SYNTHETIC.TICKS_PER_FRAME=8",
            "--set",
            "DATA.CROP_SIZE=16",
            "--set",
            "DATA.SYNTHETIC.MAX_SPEED=3.0",
            "--set",
            "DATA.SYNTHETIC.SEED=5",
            "--cfg",
            TINY,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (out / "train").iterdir()) == ["seq0000", "seq0001"]
    spec = ClipSpec(clip_len=2, bins=4, crop=0, train=False)
    ds = GoProSpikeDataset(str(out), "train", spec)
    assert len(ds) == 4  # 2 sequences x (4 frames / 2)
    item = ds[1]  # seq0000, frames 2-3
    from trainer.config import load_config
    from trainer.data import synth_params

    cfg = load_config(
        TINY,
        [
            "DATA.SYNTHETIC.HEIGHT=24",
            "DATA.SYNTHETIC.WIDTH=32",
            "DATA.SYNTHETIC.TICKS_PER_FRAME=8",
            "DATA.CROP_SIZE=16",
            "DATA.SYNTHETIC.MAX_SPEED=3.0",
            "DATA.SYNTHETIC.SEED=5",
        ],
    )
    params = synth_params(cfg.DATA)
    ref = SceneClip(params, "train", 0, 4).render()
    # PNG + .dat round trip gives exactly the in-memory clip
    assert np.array_equal(item["sharp"].numpy(), ref.sharp[2:4].transpose(0, 3, 1, 2))
    assert np.array_equal(item["blurry"].numpy(), ref.blurry[2:4].transpose(0, 3, 1, 2))
    from trainer.data.voxel import voxelize

    assert np.allclose(item["spikes"][0].numpy(), voxelize(ref.spikes[2], 4))
    # the val split is there too, and a second run refuses to overwrite
    assert len(GoProSpikeDataset(str(out), "val", spec)) == 2
    r2 = subprocess.run(
        [sys.executable, "-m", "trainer", "synth", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r2.returncode == 2 and "not empty" in r2.stderr


def test_folder_loader_names_the_bad_file(tmp_path):
    from trainer.data.dat import write_dat
    from trainer.data.png import write_png

    seq = tmp_path / "train" / "s1"
    for sub in ("blur", "sharp", "spike"):
        (seq / sub).mkdir(parents=True)
    img = np.zeros((8, 8, 3), np.uint8)
    for i in range(2):
        write_png(seq / "blur" / f"{i:03d}.png", img)
        write_png(seq / "sharp" / f"{i:03d}.png", img)
    write_dat(seq / "spike" / "000.dat", np.zeros((4, 8, 8), np.uint8))
    spec = ClipSpec(clip_len=2, bins=2, crop=0, train=False)
    with pytest.raises(DataError, match=r"spike/001\.dat: missing"):
        GoProSpikeDataset(str(tmp_path), "train", spec)
    (seq / "spike" / "001.dat").write_bytes(b"\x00" * 5)  # not whole 8x8 frames
    ds = GoProSpikeDataset(str(tmp_path), "train", spec)
    with pytest.raises(DataError, match=r"001\.dat: 5 bytes"):
        ds[0]
    write_png(seq / "sharp" / "001.png", np.zeros((4, 8, 3), np.uint8))
    write_dat(seq / "spike" / "001.dat", np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"sharp/001\.png: size"):
        ds[0]
    with pytest.raises(DataError, match="split folder not found"):
        GoProSpikeDataset(str(tmp_path), "val", spec)
