"""On the tiny config, training works: the loss falls and validation PSNR on held-out
synthetic clips ends above the blurry input's PSNR (about 1-2 minutes on 2 CPU cores)."""

from __future__ import annotations

import statistics

import pytest
import torch
from _trainer_helpers import TINY

from trainer.config import load_config
from trainer.train import train


@pytest.mark.slow
def test_tiny_config_learns_to_deblur(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # steadier on a shared 2-core machine than 2 threads
    try:
        cfg = load_config(TINY, ["LOG.TIMING_CONSOLE=false", "TRAIN.CHECKPOINT.EVERY=0"])
        r = train(cfg, log_dir=str(tmp_path), write_checkpoints=False)
    finally:
        torch.set_num_threads(n)
    first = statistics.fmean(r.losses[:5])
    last = statistics.fmean(r.losses[-10:])
    final = r.evals[-1]
    print(
        f"\nloss {first:.4f} -> {last:.4f}; val PSNR by step: "
        + ", ".join(f"{e['step']}: {e['psnr']:.2f}" for e in r.evals)
        + f"; blurry input {final['psnr_blurry']:.2f} dB"
    )
    assert r.steps == cfg.TRAIN.MAX_STEPS
    assert last < 0.4 * first
    assert final["psnr"] > final["psnr_blurry"], final
    assert final["psnr"] > r.evals[0]["psnr"]
