"""``trainer plan`` for the user's five what-if rows (benchmarks/gpu_whatif_check.py ROWS).

Prints a Markdown table: predicted peak of each cumulative row on the full model at
5×256² (the shipped configs/deblur/vrt_spike_whatif<N>_*.yaml, one per row; without them
configs/deblur/vrt_spike_baseline.yaml with the row's settings), with gradient
accumulation 1 as in the GPU check, and whether it fits an 80 GiB and a 139 GiB GPU, then
the largest batch per checkpointing setting of the base row on each. Same as running
``trainer plan --cfg ROW.yaml --set TRAIN.GRADIENT_ACCUMULATION_STEPS=1 --gpu 80`` per row.

    OMP_NUM_THREADS=1 python benchmarks/plan_whatif.py [--amp none|bf16]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rows() -> list[tuple[str, list[str]]]:
    spec = importlib.util.spec_from_file_location(
        "gpu_whatif_check", ROOT / "benchmarks" / "gpu_whatif_check.py"
    )
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    names = [n for n, _ in mod.ROWS]
    return [
        (n, [f"{k}={v}" for k, v in case])
        for n, case in zip(names, mod.cumulative_cases(), strict=True)
    ], list(mod.COMMON)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default=str(ROOT / "configs" / "deblur" / "vrt_spike_baseline.yaml"))
    ap.add_argument(
        "--amp",
        choices=("none", "bf16"),
        default=None,
        help="override TRAIN.AMP (default: as the row's config says)",
    )
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from stagewatch.gpus import GIB, parse_gpu
    from trainer.config import load_config
    from trainer.plan import RESERVE_BYTES, fit, simulate

    rows, common = _rows()
    gpus = [parse_gpu("80"), parse_gpu("139")]
    gb = GIB
    out = [
        f"precision "
        f"{'bf16 autocast' if args.amp == 'bf16' else 'fp32' if args.amp else 'as configured'}"
        f"; usable = memory − "
        f"{RESERVE_BYTES / gb:.2f} GiB reserve",
        "",
        "| row | saved activations | transient | predicted peak | 80 GiB GPU | 139 GiB GPU |",
        "|---|---|---|---|---|---|",
    ]
    t0 = time.perf_counter()
    base_cfg = base_plan = None
    shipped = sorted((ROOT / "configs" / "deblur").glob("vrt_spike_whatif*.yaml"))
    amp = [f"TRAIN.AMP={args.amp}"] if args.amp else []
    for i, (name, sets) in enumerate(rows):
        if len(shipped) == len(rows):  # the row's own config (a test checks they agree)
            cfg = load_config(str(shipped[i]), [*common, *amp, *args.overrides])
            name = f"{name} (`{shipped[i].name}`)"
        else:
            cfg = load_config(args.cfg, [*common, *sets, *amp, *args.overrides])
        p = simulate(cfg)
        if base_plan is None:
            base_cfg, base_plan = cfg, p
        m = p.memory
        cells = []
        for g in gpus:
            room = g.memory - RESERVE_BYTES - p.peak
            cells.append(f"{'fits' if room >= 0 else '**no**'} ({room / gb:+.1f} GiB)")
        out.append(
            f"| {name} | {m['saved_activations'] / gb:.1f} GiB | {m['transient'] / gb:.1f} GiB "
            f"| **{p.peak / gb:.1f} GiB** | {cells[0]} | {cells[1]} |"
        )
    out += ["", "largest batch of the baseline row (adamw) per checkpointing setting:", ""]
    for g in gpus:
        f = fit(base_cfg, g, base_plan)
        parts = [
            f"checkpointing {'on' if r['checkpointing'] else 'off'}: batch {r['max_batch']}"
            f" (batch 1 {r['peak_batch1'] / gb:.1f} GiB, +{r['per_sample'] / gb:.1f} GiB/sample)"
            for r in f["max_batch"]
        ]
        out.append(f"- {g.name}: " + "; ".join(parts))
    out += ["", f"({time.perf_counter() - t0:.0f} s on this machine)"]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
