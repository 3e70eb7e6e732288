"""One prepared CUDA check of the full VRT + spike model (about 2-4 minutes on an H100/H200).

For each setting (batch 1 and 3, gradient checkpointing on and off; bf16 autocast, TF32 for
what stays fp32, AdamW; "on" checkpoints TMSA attention, FFN and the deformable alignment):
step time and samples/s, per-region forward and backward shares of the step from the timing
core's records (CUDA events), peak memory (an out-of-memory error is a result, not a
failure), and whether VRT stage 8 is the heaviest forward stage. Also the model FLOPs per
sample (forward + backward, without checkpoint recompute; counted by
``torch.utils.flop_counter`` on the meta device) and the achieved fraction of the GPU's
dense bf16 peak. Writes ``gpu_model_check.json`` and ``gpu_model_check.md`` (and the
timing core's JSONL runs under ``logs/``) to OUT_DIR.

    python benchmarks/gpu_model_check.py OUT_DIR                 # on a CUDA machine
    python benchmarks/gpu_model_check.py OUT_DIR --dry-run       # CPU, tiny config, fast
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from stagewatch.timing import TimingLogger, set_global_timing_logger, timed
from trainer.models import build_model
from trainer.models.config import ModelConfig
from trainer.models.presets import FULL, TINY, example_inputs, load_model_config

#: dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by GPU name substring (first match)
BF16_PEAK_TFLOPS = [
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10", 125.0),
    ("L4", 121.0),
]
STAGES = [f"vrt/stage{i}" for i in range(1, 9)]
REGIONS = [
    "spike_encoder",
    "spike_tsa",
    "vrt/flow",
    "vrt/prealign",
    *STAGES[:4],
    "vrt/fusion1",
    "vrt/fusion2",
    "vrt/fusion3",
    "vrt/fusion4",
    *STAGES[4:],
    "vrt/head",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path, help="folder for the JSON and markdown results")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU, tiny config, tiny clip, one step per setting: checks the script",
    )
    ap.add_argument(
        "--cfg",
        type=Path,
        default=None,
        help="YAML with a MODEL section (default: the full config; tiny on dry run)",
    )
    ap.add_argument(
        "--clip",
        type=int,
        nargs=3,
        default=None,
        metavar=("T", "H", "W"),
        help="clip size (default 5 256 256; 2 16 16 on dry run)",
    )
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--ckpt", choices=["both", "on", "off"], default="both")
    ap.add_argument("--steps", type=int, default=None, help="measured steps (default 3; 1 dry)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 2; 1 dry)")
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="dense bf16 peak of the GPU (default: from its name)",
    )
    ap.add_argument(
        "--flops-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="reuse the FLOP counts of an earlier gpu_model_check.json (same config "
        "and clip) instead of counting again (~15-50 s of CPU)",
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=270.0,
        help="skip settings not started within this many seconds",
    )
    args = ap.parse_args(argv)
    dry = args.dry_run
    args.cfg = args.cfg or (TINY if dry else FULL)
    args.clip = args.clip or ([2, 16, 16] if dry else [5, 256, 256])
    args.steps = args.steps if args.steps is not None else (1 if dry else 3)
    args.warmup = args.warmup if args.warmup is not None else (1 if dry else 2)
    t, h, w = args.clip
    if t < 2 or h < 8 or w < 8 or h % 8 or w % 8:
        ap.error(f"--clip: need T >= 2 and H, W multiples of 8, got {t} {h} {w}")
    if any(b < 1 for b in args.batches):
        ap.error("--batches must be >= 1")
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        ap.error("--peak-tflops must be > 0")
    if not dry and not torch.cuda.is_available():
        ap.error("no CUDA device: run on a GPU machine, or pass --dry-run")
    return args


def model_flops(cfg: ModelConfig, t: int, h: int, w: int, device: str = "meta") -> dict[str, float]:
    """Forward and forward+backward FLOPs of one sample (no checkpoint recompute), per
    region. On the meta device only shapes are computed: no memory, no GPU time (but
    slow Python dispatch, ~10-30 s for the full model); small models count faster on CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ModelConfig.from_dict(cfg.to_dict())
    cfg.VRT.USE_CHECKPOINT_ATTN = cfg.VRT.USE_CHECKPOINT_FFN = False
    cfg.VRT.USE_CHECKPOINT_ALIGN = cfg.COMPILE = False
    cfg.FLOW_WEIGHTS = None
    with torch.device(device):
        model = build_model(cfg)
        rgb = torch.rand(1, t, 3, h, w)
        spikes = torch.rand(1, t, cfg.SPIKE.BINS, h, w) if cfg.USE_SPIKE else None
    # one counting context over forward and backward: re-entering a FlopCounterMode clears
    # its counts, which made "forward+backward" the backward alone (GPU-NOTES #2)
    fc = FlopCounterMode(display=False)
    with fc:
        out = model(rgb, spikes)
        fwd = fc.get_total_flops()
        counts = {m: dict(c) for m, c in fc.get_flop_counts().items()}
        out.float().sum().backward()
        total = fc.get_total_flops()
    per: dict[str, float] = {"forward": float(fwd)}
    names = {f"VRTWithSpike.{n}": r for r, n in _module_paths(model).items()}
    for mod, r in names.items():
        if mod in counts:
            per[f"forward/{r}"] = float(sum(counts[mod].values()))
    per["backward"] = float(total - fwd)
    per["forward+backward"] = float(total)
    return per


def _module_paths(model: torch.nn.Module) -> dict[str, str]:
    by_id = {id(m): n for n, m in model.named_modules()}
    return {r: by_id[id(m)] for r, m in model.region_modules().items()}  # type: ignore[operator]


def gpu_peak(name: str, override: float | None) -> float | None:
    if override is not None:
        return override
    for key, tf in BF16_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return tf
    return None


def run_setting(
    cfg: ModelConfig,
    batch: int,
    ckpt: bool,
    clip: list[int],
    steps: int,
    warmup: int,
    device: torch.device,
    log_dir: Path,
) -> dict[str, Any]:
    """Train ``warmup + steps`` steps; timing from the measured steps only."""
    cfg = ModelConfig.from_dict(cfg.to_dict())
    cfg.VRT.USE_CHECKPOINT_ATTN = cfg.VRT.USE_CHECKPOINT_FFN = ckpt
    cfg.VRT.USE_CHECKPOINT_ALIGN = ckpt
    res: dict[str, Any] = {"batch": batch, "checkpointing": ckpt, "status": "ok"}
    cuda = device.type == "cuda"
    model = opt = log = None
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        torch.manual_seed(0)
        model = build_model(cfg).to(device)
        opt = torch.optim.AdamW(
            model.parameters(),
            lr=1e-4,
            betas=(0.9, 0.99),
            weight_decay=1e-4,
            **({"fused": True} if cuda else {}),
        )
        rgb, spikes = example_inputs(cfg, batch, *clip, device=device)
        target = rgb.flip(1).contiguous()
        walls: list[float] = []
        for i in range(warmup + steps):
            if i == warmup:
                if log is not None:
                    log.close()
                log = TimingLogger(
                    log_dir=str(log_dir),
                    enable_console=False,
                    enable_file=False,
                    device=device.type,
                    run_name=f"b{batch}-ckpt{'on' if ckpt else 'off'}",
                    samples_per_step=batch,
                    total_steps=steps,
                    config={"MODEL": cfg.to_dict(), "clip": clip},
                )
                set_global_timing_logger(log)
                if cuda:
                    torch.cuda.synchronize(device)
                log.mark_step_start()
            t0 = time.perf_counter()
            with timed("forward"), torch.autocast(device.type, dtype=torch.bfloat16):
                out = model(rgb, spikes)
                loss = torch.sqrt((out.float() - target) ** 2 + 1e-6).mean()
            with timed("backward"):
                loss.backward()
            with timed("optimizer"):
                opt.step()
                opt.zero_grad(set_to_none=True)
            if log is not None:
                log.step(samples=batch)
            if cuda:
                torch.cuda.synchronize(device)  # wall time per step for the table only
            walls.append((time.perf_counter() - t0) * 1000.0)
        assert log is not None
        res["final_loss"] = float(loss.detach())
        if not math.isfinite(res["final_loss"]):
            res["status"] = "non-finite loss"
        log.close()
        summary = log.get_summary()
        wall = log.get_step_summary()["wall"]["avg"]
        res["step_ms"] = wall
        res["step_ms_sync"] = statistics.median(walls[warmup:])
        res["samples_per_s"] = 1000.0 * batch / wall
        res["regions_ms"] = {k: v["avg"] for k, v in summary.items()}
        res["shares"] = {k: v["avg"] / wall for k, v in summary.items()}
        fwd = {s: summary.get(f"forward/{s}", {}).get("avg", 0.0) for s in STAGES}
        res["heaviest_forward_stage"] = max(fwd, key=fwd.__getitem__)
        res["stage8_heaviest_forward"] = res["heaviest_forward_stage"] == "vrt/stage8"
        res["run_id"] = log.run_id
    except torch.OutOfMemoryError as e:
        res["status"] = "oom"
        res["error"] = str(e).splitlines()[0][:300]
    finally:
        if log is not None:
            log.close(status="completed" if res["status"] == "ok" else "failed")
        set_global_timing_logger(None)
        if cuda:
            # the timing core resets the peak counter at every step (GPU-NOTES #3): the
            # run's peak is the largest per-step peak it logged (the first one includes the
            # warm-up); max_memory_allocated() now covers only what ran after the last step
            res["peak_memory_bytes"] = run_peak(
                log, "peak", torch.cuda.max_memory_allocated(device)
            )
            res["peak_reserved_bytes"] = run_peak(
                log, "reserved", torch.cuda.max_memory_reserved(device)
            )
        del model, opt
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return res


def run_peak(log: Any, key: str, since_last_step: int) -> int:
    """The run's peak: the largest per-step ``key`` the logger saw, or what the device
    counter holds since the last step (an out-of-memory error in the middle of a step)."""
    peaks = getattr(log, "peak_memory", None) or {}
    return max(int(peaks.get(key, 0)), int(since_last_step))


def _flop(x: float) -> str:
    return f"{x / 1e12:.2f} TFLOP" if x >= 1e11 else f"{x / 1e9:.2f} GFLOP"


def markdown(report: dict[str, Any]) -> str:
    env = report["env"]
    fl = report["flops"]
    lines = [
        f"### Model on {env['device']} ({report['date']})",
        "",
        f"`benchmarks/gpu_model_check.py`{' --dry-run' if report['dry_run'] else ''}: "
        f"config `{report['config']}`, clip {'×'.join(map(str, report['clip']))}, bf16 "
        f"autocast, fused AdamW, torch {env['torch']}. Mean of {report['steps']} steps "
        f"after {report['warmup']} warm-up steps; shares are of the step wall time "
        f"measured by the timing core "
        f"({'perf_counter' if report['dry_run'] else 'CUDA events'}).",
        "",
        f"Model FLOPs per sample: forward {_flop(fl['forward'])}, forward + "
        f"backward {_flop(fl['forward+backward'])} (no recompute; "
        f"`torch.utils.flop_counter`, matmul/conv/attention only). bf16 peak assumed: "
        f"{report['peak_tflops'] or 'unknown'} TFLOP/s.",
        "",
        "| batch | ckpt | status | step ms | samples/s | peak mem GB | forward | backward "
        "| optimizer | heaviest fwd stage | achieved of bf16 peak |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in report["settings"]:
        mem = r.get("peak_memory_bytes")
        mem_s = f"{mem / 1e9:.1f}" if mem else "n/a"
        if r["status"] != "ok":
            lines.append(
                f"| {r['batch']} | {'on' if r['checkpointing'] else 'off'} | "
                f"{r['status']} | | | {mem_s} | | | | | |"
            )
            continue
        sh = r["shares"]
        frac = r.get("achieved_fraction_of_peak")
        lines.append(
            f"| {r['batch']} | {'on' if r['checkpointing'] else 'off'} | ok | "
            f"{r['step_ms']:.0f} | {r['samples_per_s']:.3f} | {mem_s} | "
            f"{100 * sh.get('forward', 0):.1f}% | {100 * sh.get('backward', 0):.1f}% | "
            f"{100 * sh.get('optimizer', 0):.1f}% | {r['heaviest_forward_stage']} | "
            f"{'n/a' if frac is None else f'{100 * frac:.1f}%'} |"
        )
    ok = [r for r in report["settings"] if r["status"] == "ok"]
    if ok:
        head = (
            "| region | "
            + " | ".join(
                f"b{r['batch']} ckpt {'on' if r['checkpointing'] else 'off'} fwd / bwd" for r in ok
            )
            + " |"
        )
        lines += [
            "",
            "Per-region share of the step (forward / backward):",
            "",
            head,
            "|---|" + "---:|" * len(ok),
        ]
        for reg in REGIONS:
            if not any(f"forward/{reg}" in r["shares"] for r in ok):
                continue
            cells = []
            for r in ok:
                f = r["shares"].get(f"forward/{reg}", 0.0)
                b = r["shares"].get(f"backward/{reg}", 0.0)
                cells.append(f"{100 * f:.1f}% / {100 * b:.1f}%")
            lines.append(f"| {reg} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    device = torch.device("cpu" if args.dry_run else "cuda")
    from trainer.train_setup import apply_tf32

    apply_tf32(True, device)  # the fp32 parts (deformable conv, warps) on TF32, as the trainer
    cfg = load_model_config(args.cfg)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    peak = None if args.dry_run else gpu_peak(name, args.peak_tflops)
    t, h, w = args.clip
    flops = None
    if args.flops_from is not None:
        try:
            prev = json.loads(args.flops_from.read_text())
            if prev.get("clip") == args.clip and prev.get("config") == str(args.cfg):
                flops = prev["flops"]
        except (OSError, ValueError, KeyError):
            flops = None
    if flops is None:
        flops = model_flops(cfg, t, h, w, device="cpu" if args.dry_run else "meta")
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "dry_run": args.dry_run,
        "config": str(args.cfg),
        "clip": args.clip,
        "steps": args.steps,
        "warmup": args.warmup,
        "peak_tflops": peak,
        "flops": flops,
        "env": {
            "device": name or device.type,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
        },
        "settings": [],
    }
    ckpts = {"both": [True, False], "on": [True], "off": [False]}[args.ckpt]
    for batch in args.batches:
        for ckpt in ckpts:
            if time.perf_counter() - t_start > args.budget_s:
                report["settings"].append(
                    {"batch": batch, "checkpointing": ckpt, "status": "skipped (time budget)"}
                )
                continue
            r = run_setting(
                cfg, batch, ckpt, args.clip, args.steps, args.warmup, device, args.out_dir / "logs"
            )
            if r["status"] == "ok" and peak:
                r["achieved_tflops"] = flops["forward+backward"] * r["samples_per_s"] / 1e12
                r["achieved_fraction_of_peak"] = r["achieved_tflops"] / peak
            report["settings"].append(r)
            print(
                f"batch {batch} ckpt {'on' if ckpt else 'off'}: {r['status']}"
                + (f", {r['step_ms']:.0f} ms/step" if r["status"] == "ok" else ""),
                flush=True,
            )
            _write(args.out_dir, report)  # partial results survive a timeout
    report["elapsed_s"] = time.perf_counter() - t_start
    _write(args.out_dir, report)
    print(markdown(report))
    return 0


def _write(out: Path, report: dict[str, Any]) -> None:
    (out / "gpu_model_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_model_check.md").write_text(markdown(report))


if __name__ == "__main__":
    raise SystemExit(main())
