"""Prepared CUDA check of the trainer: the user's baseline and fast configs, measured.

Runs the real training loop (``trainer.train.train``) on synthetic data at full model size
for a few steps per config and reads the timing core's records: median step time and
samples/s after warm-up, peak GPU memory, optimizer state size. An out-of-memory error is a
result ("OOM"), not a failure. Gradient accumulation is set to 1 so a step is one batch
(the user's step times were per batch). Writes ``gpu_trainer_check.json`` and
``gpu_trainer_check.md`` (beside the user's predicted table) to OUT_DIR; ``--write-doc``
puts the markdown in the "gpu_trainer" section of docs/benchmarks.md. About 3-4 minutes on
an H100/H200::

    python benchmarks/gpu_trainer_check.py OUT_DIR                # on a CUDA machine
    python benchmarks/gpu_trainer_check.py OUT_DIR --dry-run      # CPU, tiny config, fast
    python benchmarks/gpu_trainer_check.py --write-doc OUT_DIR/gpu_trainer_check.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "baseline": ROOT / "configs/deblur/vrt_spike_baseline.yaml",
    "fast": ROOT / "configs/deblur/vrt_spike_fast.yaml",
}
TINY = ROOT / "configs/deblur/vrt_spike_tiny.yaml"
#: the user's predicted table (BRIEF.md): memory GB, step s, samples/s; never measured
#: (the user predicted nothing for our fast config; their "fast" is the what-if row 5)
PREDICTED: dict[str, tuple[float, float, float] | None] = {"baseline": (32, 6.0, 0.5), "fast": None}
#: dry run: the tiny model on micro clips, with each config's optimizer and checkpointing
DRY = [
    "DATA.CLIP_LEN=2",
    "DATA.CROP_SIZE=16",
    "DATA.SYNTHETIC.HEIGHT=16",
    "DATA.SYNTHETIC.WIDTH=16",
    "DATA.SYNTHETIC.TICKS_PER_FRAME=4",
    "DATA.SYNTHETIC.TRAIN_CLIPS=8",
    "DATA.SYNTHETIC.VAL_CLIPS=1",
    "MODEL.VRT.EMBED_DIMS=[8,8,8,8,8,8,8,8,8]",
    "MODEL.VRT.DEPTHS=[1,1,1,1,1,1,1,1,1]",
    "MODEL.VRT.NUM_HEADS=[1,1,1,1,1,1,1,1,1]",
    "MODEL.VRT.DEFORMABLE_GROUPS=2",
    "MODEL.SPIKE.WIDTH=8",
    "MODEL.SPIKE.TSA_HEADS=1",
    "MODEL.SPIKE.FUSION_HEADS=1",
    "MODEL.SPIKE.RES_BLOCKS=0",
    "MODEL.SPIKE.BINS=2",
    "DATALOADER.NUM_WORKERS=0",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path, nargs="?", help="folder for the JSON and markdown")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model: checks the script")
    ap.add_argument("--steps", type=int, default=None, help="steps per config (default 20; 3 dry)")
    ap.add_argument("--warmup", type=int, default=None, help="steps left out (default 5; 1 dry)")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument(
        "--no-perceptual",
        action="store_true",
        help="leave out the user's VGG perceptual loss (by default it runs with "
        "random VGG weights: its cost is the same, its value is not used)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="extra config override for every config",
    )
    ap.add_argument(
        "--write-doc",
        type=Path,
        default=None,
        metavar="JSON",
        help="only write docs/benchmarks.md from a results JSON of an earlier run",
    )
    return ap.parse_args(argv)


def _records(run_dir: str) -> list[dict[str, Any]]:
    """rank0's complete records, as dicts of their JSON fields."""
    import msgspec

    from stagewatch.records import decode

    out = []
    with open(Path(run_dir) / "rank0.jsonl", "rb") as f:
        for line in f:
            rec = decode(line) if line.endswith(b"\n") else None
            if rec is not None:
                out.append(msgspec.to_builtins(rec))
    return out


def measure(
    name: str, overrides: list[str], steps: int, warmup: int, log_dir: Path, dry: bool
) -> dict[str, Any]:
    """Train ``steps`` steps of one config; figures from the records after ``warmup``."""
    import torch

    from trainer.config import load_config
    from trainer.train import train

    path = TINY if dry else CONFIGS[name]
    sets = [
        *overrides,
        f"TRAIN.MAX_STEPS={steps}",
        "TRAIN.GRADIENT_ACCUMULATION_STEPS=1",
        "TRAIN.VAL.EVERY=0",
        "TRAIN.CHECKPOINT.EVERY=0",
        "TRAIN.RESUME=null",
        "LOG.TIMING_CONSOLE=false",
        f"LOG.RUN_NAME=gpucheck-{name}",
    ]
    if dry:
        src = load_config(str(CONFIGS[name]))
        sets = [
            *DRY,
            f"TRAIN.OPTIM.TYPE={src.TRAIN.OPTIM.TYPE}",
            f"TRAIN.BATCH_SIZE={min(src.TRAIN.BATCH_SIZE, 2)}",
            f"MODEL.VRT.USE_CHECKPOINT_ATTN={str(src.MODEL.VRT.USE_CHECKPOINT_ATTN).lower()}",
            f"MODEL.VRT.USE_CHECKPOINT_FFN={str(src.MODEL.VRT.USE_CHECKPOINT_FFN).lower()}",
            f"MODEL.VRT.USE_CHECKPOINT_ALIGN={str(src.MODEL.VRT.USE_CHECKPOINT_ALIGN).lower()}",
            *sets,
        ]
    cfg = load_config(str(path), sets)
    res: dict[str, Any] = {
        "config": name,
        "file": str(CONFIGS[name].relative_to(ROOT)),
        "overrides": sets,
        "batch": cfg.TRAIN.BATCH_SIZE,
        "optimizer": cfg.TRAIN.OPTIM.TYPE,
        "amp": cfg.TRAIN.AMP,
        "checkpointing": cfg.MODEL.VRT.USE_CHECKPOINT_ATTN or cfg.MODEL.VRT.USE_CHECKPOINT_FFN,
        "checkpoint_align": cfg.MODEL.VRT.USE_CHECKPOINT_ALIGN,
        "tf32": cfg.TRAIN.TF32,
        "clip": [cfg.DATA.CLIP_LEN, cfg.DATA.CROP_SIZE, cfg.DATA.CROP_SIZE],
        "spike_bins": cfg.MODEL.SPIKE.BINS if cfg.MODEL.USE_SPIKE else 0,
        "perceptual": cfg.LOSS.VGG_PERCEPTUAL.WEIGHT > 0,
        "status": "ok",
    }
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        r = train(
            cfg, log_dir=str(log_dir), write_checkpoints=False, validate_at_end=False, console=False
        )
        res["run_dir"] = r.run_dir
        res["optimizer_state_bytes"] = r.optimizer_state_bytes
    except torch.OutOfMemoryError as e:
        res["status"] = "OOM"
        res["error"] = str(e).splitlines()[0][:300]
    except Exception as e:  # a result to report, not a reason to lose the other config
        res["status"] = "error"
        res["error"] = f"{type(e).__name__}: {e}"[:500]
        traceback.print_exc()
    res["seconds"] = time.perf_counter() - t0
    if torch.cuda.is_available():
        res["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        res["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    if res["status"] == "ok":
        recs = [x for x in _records(res["run_dir"]) if x["kind"] == "step"]
        kept = recs[warmup:] or recs
        walls = [x["wall_ms"] for x in kept]
        res["steps_measured"] = len(kept)
        res["step_ms_median"] = statistics.median(walls)
        res["step_ms_min"] = min(walls)
        res["samples_per_s"] = res["batch"] * 1000.0 / res["step_ms_median"]
        shares: dict[str, float] = {}
        for top in ("data", "h2d", "forward", "loss", "backward", "optimizer"):
            vals = [x["regions"].get(top, [0.0])[0] for x in kept]
            shares[top] = statistics.median(vals) / res["step_ms_median"]
        res["shares"] = shares
        # the timing core resets the peak counter every step: take the largest step peak
        peaks = [x.get("memory", {}).get("peak", 0) for x in recs]
        res["peak_memory_bytes"] = max([res.get("peak_memory_bytes", 0), *peaks])
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return res


def markdown(report: dict[str, Any]) -> str:
    gb = 1024**3
    lines = [
        "## Trainer on one GPU: the user's baseline and fast configs, measured",
        "",
        f"{report['device']}, torch {report['torch']}, {report['date']}. Full VRT + spike model, "
        f"synthetic clips ({' × '.join(map(str, report['results'][0]['clip']))}, "
        f"{report['results'][0]['spike_bins']} spike bins), the real training loop "
        "(`benchmarks/gpu_trainer_check.py`), gradient accumulation 1 (a step is one batch), "
        f"median of the steps after {report['warmup']} warm-up steps."
        + (
            " The user's VGG perceptual loss runs with random weights (same cost)."
            if any(r.get("perceptual") for r in report["results"])
            else ""
        ),
        "",
        "| config | batch | optimizer | checkpointing | step (measured) | samples/s (measured) | "
        "peak memory (measured) | optimizer state | predicted step | predicted samples/s | "
        "predicted memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        pred = PREDICTED.get(r["config"])
        mem, step, sps = pred if pred else ("–", "–", "–")
        if r["status"] == "ok":
            m = (
                f"{r['step_ms_median'] / 1000:.2f} s | {r['samples_per_s']:.3f} | "
                f"{r.get('peak_memory_bytes', 0) / gb:.1f} GB | "
                f"{r.get('optimizer_state_bytes', 0) / 1e6:.0f} MB"
            )
        else:
            m = f"{r['status']} | – | {r.get('peak_memory_bytes', 0) / gb:.1f} GB at failure | –"
        lines.append(
            (
                f"| {r['config']} | {r['batch']} | {r['optimizer']} | "
                f"{'on' if r['checkpointing'] else 'off'} | {m} | {step} s | {sps} | {mem} GB |"
            )
            .replace("– s", "–")
            .replace("– GB", "–")
        )
    lines += ["", "Shares of the measured step (median step):", ""]
    for r in report["results"]:
        if r["status"] == "ok":
            parts = ", ".join(f"{k} {v * 100:.1f}%" for k, v in r["shares"].items())
            lines.append(f"- {r['config']}: {parts}")
        else:
            lines.append(f"- {r['config']}: {r['status']} ({r.get('error', '')[:160]})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_doc:
        from _report import write_section

        report = json.loads(args.write_doc.read_text())
        write_section("gpu_trainer", markdown(report))
        print(f"wrote the gpu_trainer section from {args.write_doc}")
        return 0
    if args.out_dir is None:
        print("OUT_DIR is required", file=sys.stderr)
        return 2
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: use --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    steps = args.steps or (3 if args.dry_run else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.dry_run else 5)
    overrides = list(args.overrides)
    if not args.no_perceptual and not args.dry_run:
        overrides += [
            "LOSS.VGG_PERCEPTUAL.WEIGHT=0.1",
            "LOSS.VGG_PERCEPTUAL.ALLOW_RANDOM_WEIGHTS=true",
        ]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()})"
    )
    report: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "steps": steps,
        "warmup": warmup,
        "dry_run": args.dry_run,
        "results": [],
    }
    for name in args.configs:
        print(f"[gpu_trainer_check] {name}: {steps} steps ...", flush=True)
        res = measure(name, overrides, steps, warmup, args.out_dir / "logs", args.dry_run)
        report["results"].append(res)
        print(
            json.dumps({k: v for k, v in res.items() if k != "overrides"}, default=str), flush=True
        )
        (args.out_dir / "gpu_trainer_check.json").write_text(
            json.dumps(report, indent=1, default=str)
        )
    md = markdown(report)
    (args.out_dir / "gpu_trainer_check.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
