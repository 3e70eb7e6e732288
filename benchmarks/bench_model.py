"""Forward and backward time per stage of the model on this machine's CPU.

Runs training steps (forward, Charbonnier-like loss, backward; no optimizer) of a model
config under the real timing core and writes the section ``model`` of
``docs/benchmarks.md``: per region the forward and backward milliseconds (mean over the
measured steps, after warm-up), for gradient checkpointing off and on.

    .venv/bin/python benchmarks/bench_model.py                # tiny config, 1×4×64×64
    .venv/bin/python benchmarks/bench_model.py --steps 3 --no-write
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks._report import machine, today, write_section
from stagewatch.timing import TimingLogger, set_global_timing_logger, timed
from trainer.models import build_model
from trainer.models.presets import TINY, example_inputs, load_model_config

ROWS = [
    "spike_encoder",
    "spike_tsa",
    "vrt/flow",
    "vrt/prealign",
    "vrt/stage1",
    "vrt/fusion1",
    "vrt/stage2",
    "vrt/fusion2",
    "vrt/stage3",
    "vrt/fusion3",
    "vrt/stage4",
    "vrt/fusion4",
    "vrt/stage5",
    "vrt/stage6",
    "vrt/stage7",
    "vrt/stage8",
    "vrt/head",
]


def _logger() -> TimingLogger:
    return TimingLogger(enable_console=False, enable_file=False, enable_jsonl=False)


def measure(
    cfg_path: Path, size: tuple[int, int, int, int], steps: int, warmup: int
) -> dict[bool, dict[str, object]]:
    """Per-region mean ms over ``steps`` training steps, checkpointing off and on.

    The two settings alternate step by step, so that other load on the machine affects
    both alike; each has its own model and logger.
    """
    models, loggers, walls = {}, {}, {False: [], True: []}
    for ckpt in (False, True):
        cfg = load_model_config(cfg_path)
        cfg.VRT.USE_CHECKPOINT_ATTN = cfg.VRT.USE_CHECKPOINT_FFN = ckpt
        torch.manual_seed(0)
        models[ckpt] = build_model(cfg)
    rgb, spikes = example_inputs(cfg, *size)
    target = rgb.clone()
    try:
        for i in range(warmup + steps):
            for ckpt, model in models.items():
                if i in (0, warmup):  # fresh loggers after warm-up: stats of measured steps
                    if ckpt in loggers:
                        loggers[ckpt].close()
                    loggers[ckpt] = _logger()
                log = loggers[ckpt]
                set_global_timing_logger(log)
                t0 = time.perf_counter()
                with timed("forward"):
                    out = model(rgb, spikes)
                    loss = torch.sqrt((out - target) ** 2 + 1e-6).mean()
                with timed("backward"):
                    loss.backward()
                model.zero_grad(set_to_none=True)
                log.step(samples=size[0])
                if i >= warmup:
                    walls[ckpt].append((time.perf_counter() - t0) * 1000.0)
        return {
            ckpt: {"summary": loggers[ckpt].get_summary(), "wall": walls[ckpt]} for ckpt in models
        }
    finally:
        for log in loggers.values():
            log.close()
        set_global_timing_logger(None)


def fmt(v: float | None) -> str:
    return "" if v is None else f"{v:,.1f}"


def table(results: dict[bool, dict[str, object]]) -> str:
    head = (
        "| region | fwd ms (ckpt off) | bwd ms (ckpt off) | fwd ms (ckpt on) "
        "| bwd ms (ckpt on) | of which recompute |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|"]

    def avg(res: dict[str, object], name: str) -> float | None:
        s = res["summary"]  # type: ignore[index]
        return s[name]["avg"] if name in s else None  # type: ignore[index,operator]

    off, on = results[False], results[True]
    for r in [*ROWS, None]:
        if r is None:
            name, f_off, b_off = "**step total**", statistics.mean(off["wall"]), None
            f_on, b_on, rc = statistics.mean(on["wall"]), None, None
            lines.append(f"| {name} | {fmt(f_off)} (wall) | | {fmt(f_on)} (wall) | | |")
            continue
        f_off, b_off = avg(off, f"forward/{r}"), avg(off, f"backward/{r}")
        if f_off is None and b_off is None:
            continue
        f_on, b_on = avg(on, f"forward/{r}"), avg(on, f"backward/{r}")
        rc = avg(on, f"backward/{r}/recompute")
        lines.append(
            f"| {r} | {fmt(f_off)} | {fmt(b_off)} | {fmt(f_on)} | {fmt(b_on)} | {fmt(rc)} |"
        )
    for top in ("forward", "backward"):
        lines.append(
            f"| **{top}** | {fmt(avg(off, top) if top == 'forward' else None)} "
            f"| {fmt(avg(off, top) if top == 'backward' else None)} "
            f"| {fmt(avg(on, top) if top == 'forward' else None)} "
            f"| {fmt(avg(on, top) if top == 'backward' else None)} | |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", type=Path, default=TINY, help="YAML with a MODEL section")
    ap.add_argument(
        "--size", type=int, nargs=4, default=[1, 4, 64, 64], metavar=("B", "T", "H", "W")
    )
    ap.add_argument("--steps", type=int, default=5, help="measured steps per setting")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = tuple(args.size)
    load0 = os.getloadavg()[0]
    results = measure(args.cfg, size, args.steps, args.warmup)
    load1 = os.getloadavg()[0]
    try:
        cfg_name = args.cfg.resolve().relative_to(Path(__file__).resolve().parent.parent)
    except ValueError:
        cfg_name = args.cfg
    text = "\n".join(
        [
            "## Model: forward and backward per stage (CPU)",
            "",
            f"`benchmarks/bench_model.py`, {today()}, {machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads. Config `{cfg_name}`, input "
            f"B×T×H×W = {'×'.join(map(str, size))}, fp32, one training step = forward + "
            f"Charbonnier loss + backward (no optimizer). Mean of {args.steps} steps after "
            f"{args.warmup} warm-up steps (the two settings alternate step by step), timed by the "
            f"timing core (regions nest: `vrt` stages "
            f"exclude the spike branch; backward per region from autograd hooks; with "
            f"checkpointing the re-run forward is part of backward and shown as recompute). "
            f"Step total: wall clock of forward + loss + backward. "
            f"Load average {load0:.1f} → {load1:.1f} during the run (other jobs on the machine "
            f"inflate absolute times)."
            + (
                " One torch thread: on this shared machine two threads slowed down badly while "
                "other jobs ran (OpenMP spin-waiting)."
                if args.threads == 1
                else ""
            ),
            "",
            table(results),
            "",
            "GPU figures for the full model (bf16, clip 5×256×256, batch 1 and 3, checkpointing "
            "on/off, FLOPs and fraction of peak) come from `benchmarks/gpu_model_check.py "
            "OUT_DIR`, which writes its own JSON and markdown; this machine has no GPU.",
        ]
    )
    print(text)
    if not args.no_write:
        write_section("model", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
