"""GPU check of the timing core: its cost on a real step, and its accuracy per region.

Needs a CUDA GPU (not run in CI; its CPU-side helpers are tested). It runs a chain of
matmuls with one timed region per matmul (50 by default) and reports:

1. **overhead**: step time with timing on (CUDA events, JSONL + text log written) against
   the same loop with timing off, in alternating blocks of steps; target ≤ 0.5% slower;
2. **accuracy**: each region's time from the timing core's CUDA events against the sum of
   the GPU kernel durations that ``torch.profiler`` attributes to the same region (a
   ``record_function`` range around the same matmul); target within 5%.

Usage::

    python benchmarks/gpu_timing_check.py --out results/ [--size 4096 --regions 50]

Writes ``<out>/gpu_timing_check.json`` and prints a summary; exit status 0 when both
targets are met, 1 otherwise, 2 when no GPU is available.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_OVERHEAD = 0.005  # timing on may be at most 0.5% slower
TARGET_REGION_ERROR = 0.05  # region time within 5% of the profiler's kernel time


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the JSON result and the run logs")
    p.add_argument("--size", type=int, default=4096, help="matrix size (default 4096)")
    p.add_argument("--regions", type=int, default=50, help="timed matmuls per step (default 50)")
    p.add_argument("--steps", type=int, default=30, help="steps per timed block (default 30)")
    p.add_argument("--rounds", type=int, default=5, help="on/off block pairs (default 5)")
    p.add_argument("--profile-steps", type=int, default=10, help="steps under the profiler")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="run the same phases on the CPU (checks the script, measures nothing on a GPU)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="matmul dtype (default float32)",
    )
    args = p.parse_args(argv)
    for key in ("size", "regions", "steps", "rounds", "profile_steps"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be at least 0")
    return args


def region_names(n: int) -> list[str]:
    return [f"mm{i:02d}" for i in range(n)]


def _is_cpu_event(evt: Any) -> bool:
    return str(getattr(evt, "device_type", "CPU")).rsplit(".", 1)[-1] == "CPU"


def kernel_ms_by_region(
    events: Iterable[Any], names: Iterable[str], attr: str = "device_time_total"
) -> dict[str, float]:
    """Average GPU kernel time (ms) per occurrence of each ``record_function`` range.

    ``events`` are ``torch.profiler`` FunctionEvents: a CPU-side range's
    ``device_time_total`` (µs) sums the kernels launched inside it (``attr`` picks
    another total, e.g. ``cpu_time_total`` for the CPU dry run).
    """
    wanted = set(names)
    acc: dict[str, list[float]] = {}
    for evt in events:
        if evt.name in wanted and _is_cpu_event(evt):
            acc.setdefault(evt.name, []).append(float(getattr(evt, attr)) / 1000.0)
    return {k: statistics.fmean(v) for k, v in acc.items()}


def compare_regions(
    event_ms: Mapping[str, float],
    kernel_ms: Mapping[str, float],
    tolerance: float = TARGET_REGION_ERROR,
) -> list[dict[str, Any]]:
    """Per region: event time, profiler kernel time, relative error and whether it is within
    ``tolerance``. Regions missing on either side are reported with ``ok: False``."""
    rows = []
    for name in sorted(set(event_ms) | set(kernel_ms)):
        e, k = event_ms.get(name), kernel_ms.get(name)
        err = (e - k) / k if e is not None and k else None
        rows.append(
            {
                "region": name,
                "event_ms": e,
                "kernel_ms": k,
                "rel_error": err,
                "ok": err is not None and abs(err) <= tolerance,
            }
        )
    return rows


def overhead(off_step_ms: Sequence[float], on_step_ms: Sequence[float]) -> dict[str, float]:
    """Median step time of each mode and the relative overhead of timing on."""
    off, on = statistics.median(off_step_ms), statistics.median(on_step_ms)
    return {"off_ms": off, "on_ms": on, "overhead": (on - off) / off if off > 0 else float("nan")}


def verdict(result: Mapping[str, Any]) -> dict[str, bool]:
    rows = result["regions"]
    return {
        "overhead_ok": result["step"]["overhead"] <= TARGET_OVERHEAD,
        "regions_ok": bool(rows) and all(r["ok"] for r in rows),
    }


def format_summary(result: Mapping[str, Any]) -> str:
    st, v = result["step"], result["verdict"]
    errs = [abs(r["rel_error"]) for r in result["regions"] if r["rel_error"] is not None]
    lines = [
        f"GPU timing check on {result['gpu']} (torch {result['torch']}), "
        f"{result['config']['regions']} regions of {result['config']['size']}² "
        f"{result['config']['dtype']} matmuls per step",
        f"step time: off {st['off_ms']:.3f} ms, on {st['on_ms']:.3f} ms, overhead "
        f"{st['overhead'] * 100:+.3f}% (target ≤ {TARGET_OVERHEAD * 100:.1f}%: "
        f"{'met' if v['overhead_ok'] else 'NOT met'})",
        f"regions vs profiler kernels: max |error| "
        f"{max(errs) * 100 if errs else float('nan'):.2f}%, "
        f"median {statistics.median(errs) * 100 if errs else float('nan'):.2f}% "
        f"(target ≤ {TARGET_REGION_ERROR * 100:.0f}%: {'met' if v['regions_ok'] else 'NOT met'})",
    ]
    return "\n".join(lines)


def write_result(out_dir: str | os.PathLike[str], result: Mapping[str, Any]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_timing_check.json"
    path.write_text(json.dumps(result, indent=2))
    return path


# --------------------------------------------------------------------------- GPU part


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - needs a GPU
    args = parse_args(argv)
    import torch

    from stagewatch.timing import TimingLogger, set_global_timing_logger, timed

    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        print("gpu_timing_check: no CUDA GPU available", file=sys.stderr)
        return 2
    dev = torch.device("cpu") if dry else torch.device("cuda", torch.cuda.current_device())

    def sync() -> None:
        if not dry:
            torch.cuda.synchronize()

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    n = args.size
    names = region_names(args.regions)
    # orthogonal weights keep the chained product bounded
    ws = [torch.linalg.qr(torch.randn(n, n, device=dev))[0].to(dtype) for _ in names]
    x0 = torch.randn(n, n, device=dev, dtype=dtype)

    def one_step(x: torch.Tensor, annotate: bool = False) -> torch.Tensor:
        for name, w in zip(names, ws, strict=True):
            with timed(name):
                if annotate:
                    with torch.profiler.record_function(name):
                        x = x @ w
                else:
                    x = x @ w
        return x

    logs = os.path.join(args.out, "logs")
    for _ in range(args.warmup):
        one_step(x0)
    sync()

    # 1. overhead: alternate off/on blocks, sync only at block edges
    log = TimingLogger(logs, enable_console=False, run_name="gpu_check", device=dev)
    off_ms: list[float] = []
    on_ms: list[float] = []
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            set_global_timing_logger(log if mode == "on" else None)
            sync()
            if mode == "on":
                log.mark_step_start()
            t0 = time.perf_counter()
            x = x0
            for _ in range(args.steps):
                x = one_step(x)
                if mode == "on":
                    log.step(samples=n)
            sync()
            (on_ms if mode == "on" else off_ms).append(
                (time.perf_counter() - t0) * 1000.0 / args.steps
            )
    set_global_timing_logger(None)
    log.close()

    # 2. accuracy: the same regions under torch.profiler, in a fresh run that holds only
    # the profiled steps (one annotated warm-up step runs before it, untimed)
    one_step(x0, annotate=True)
    sync()
    acc_log = TimingLogger(logs, enable_console=False, run_name="gpu_check_acc", device=dev)
    set_global_timing_logger(acc_log)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if not dry:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        acc_log.mark_step_start()
        x = x0
        for _ in range(args.profile_steps):
            x = one_step(x, annotate=True)
            acc_log.step()
        sync()
    set_global_timing_logger(None)
    acc_log.close()
    # each region runs once per step: its per-step average is its per-call time
    event_ms = {k: v["total"] / v["calls"] for k, v in acc_log.get_summary().items()}
    kernel_ms = kernel_ms_by_region(
        prof.events(), names, "cpu_time_total" if dry else "device_time_total"
    )

    result: dict[str, Any] = {
        "gpu": "CPU (dry run: no GPU measured)" if dry else torch.cuda.get_device_name(dev),
        "mode": "cpu-dry-run" if dry else "gpu",
        "torch": torch.__version__,
        "host": platform.node(),
        "date": time.strftime("%Y-%m-%d"),
        "config": vars(args),
        "step": {**overhead(off_ms, on_ms), "off_blocks_ms": off_ms, "on_blocks_ms": on_ms},
        "regions": compare_regions(event_ms, kernel_ms),
        "runs": {"overhead": log.run_dir, "accuracy": acc_log.run_dir},
    }
    result["verdict"] = verdict(result)
    path = write_result(args.out, result)
    print(format_summary(result))
    print(f"written: {path}")
    return 0 if all(result["verdict"].values()) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
