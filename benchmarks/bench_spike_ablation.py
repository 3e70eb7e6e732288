"""Does the spike branch help? ``MODEL.USE_SPIKE`` true vs false at equal steps.

Both settings train the same config (default: the tiny CPU config) on the same synthetic
clips for the same number of optimizer steps, for several training seeds, then report
validation PSNR/SSIM on held-out clips next to the blurry input's. Writes the
"spike_ablation" section of docs/benchmarks.md. Usage::

    python benchmarks/bench_spike_ablation.py                     # tiny config, 150 steps, 3 seeds
    python benchmarks/bench_spike_ablation.py --steps 40 --seeds 1 --no-write --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _report import machine, today, write_section

TINY = str(Path(__file__).resolve().parent.parent / "configs" / "deblur" / "vrt_spike_tiny.yaml")


def run_one(
    cfg_path: str, overrides: list[str], use_spike: bool, steps: int, log_dir: str, seed: int = 0
) -> dict[str, Any]:
    import torch

    from trainer.config import load_config
    from trainer.train import train

    cfg = load_config(
        cfg_path,
        [
            *overrides,
            f"MODEL.USE_SPIKE={str(use_spike).lower()}",
            f"TRAIN.MAX_STEPS={steps}",
            f"TRAIN.VAL.EVERY={max(1, steps // 3)}",
            "TRAIN.CHECKPOINT.EVERY=0",
            "TRAIN.RESUME=null",
            "LOG.TIMING_CONSOLE=false",
            f"TRAIN.SEED={seed}",
        ],
    )
    from trainer.models import build_model

    params = sum(p.numel() for p in build_model(cfg.MODEL).parameters())
    torch.manual_seed(cfg.TRAIN.SEED)
    t0 = time.perf_counter()
    r = train(cfg, log_dir=log_dir, write_checkpoints=False)
    secs = time.perf_counter() - t0
    last = r.evals[-1]
    tail = r.losses[-max(1, len(r.losses) // 10) :]
    return {
        "use_spike": use_spike,
        "seed": seed,
        "params": params,
        "steps": r.steps,
        "seconds": secs,
        "loss_first": r.losses[0],
        "loss_last10pct": statistics.fmean(tail),
        "evals": r.evals,
        "psnr": last["psnr"],
        "ssim": last["ssim"],
        "psnr_blurry": last["psnr_blurry"],
        "ssim_blurry": last["ssim_blurry"],
        "run_dir": r.run_dir,
    }


def markdown(results: list[dict[str, Any]], cfg_path: str, overrides: list[str]) -> str:
    """Per seed rows, then the mean over seeds of each setting."""
    steps = results[0]["steps"]
    seeds = sorted({r.get("seed", 0) for r in results})
    lines = [
        "## Spike branch ablation (synthetic data, equal steps)",
        "",
        f"{machine()}, {today()}. Config `{os.path.relpath(cfg_path)}`"
        + (f" with `{' '.join(overrides)}`" if overrides else "")
        + f"; {steps} optimizer steps per run, training seeds {', '.join(map(str, seeds))} "
        "(model initialisation and data order; the synthetic clips are the same); validation on "
        "held-out clips (centre crops), PSNR/SSIM averaged over frames. Produced by "
        f"`python benchmarks/bench_spike_ablation.py --steps {steps} --seeds {len(seeds)}`.",
        "",
        "| MODEL.USE_SPIKE | seed | params | train loss (first → last 10%) | val PSNR | val SSIM | "
        "blurry input PSNR | gain over input | time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {str(r['use_spike']).lower()} | {r.get('seed', 0)} | {r['params']:,} | "
            f"{r['loss_first']:.4f} → {r['loss_last10pct']:.4f} | {r['psnr']:.2f} dB | "
            f"{r['ssim']:.4f} | {r['psnr_blurry']:.2f} dB | "
            f"{r['psnr'] - r['psnr_blurry']:+.2f} dB | "
            f"{r['seconds']:.0f} s |"
        )
    gains = {
        flag: [r["psnr"] - r["psnr_blurry"] for r in results if r["use_spike"] is flag]
        for flag in (True, False)
    }
    lines += [
        "",
        "| MODEL.USE_SPIKE | mean gain over input | spread (min … max) |",
        "|---|---|---|",
    ]
    for flag, g in gains.items():
        lines.append(
            f"| {str(flag).lower()} | {statistics.fmean(g):+.2f} dB | "
            f"{min(g):+.2f} … {max(g):+.2f} dB |"
        )
    diff = statistics.fmean(gains[True]) - statistics.fmean(gains[False])
    lines += [
        "",
        f"Mean difference with the spike branch: {diff:+.2f} dB at equal steps "
        f"over {len(seeds)} seed(s). Time is CPU wall time of the whole run (validation "
        "included) on a shared machine.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default=TINY)
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seeds", type=int, default=3, help="training seeds per setting (default 3)")
    ap.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--from-json", default=None, help="re-render results of an earlier --json run")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            results = json.load(f)
    else:
        with tempfile.TemporaryDirectory() as logs:
            results = [
                run_one(args.cfg, args.overrides, flag, args.steps, logs, seed)
                for seed in range(args.seeds)
                for flag in (True, False)
            ]
    md = markdown(results, args.cfg, args.overrides)
    print(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if not args.no_write:
        write_section("spike_ablation", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
