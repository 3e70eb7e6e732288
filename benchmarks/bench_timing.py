"""CPU cost of the timing core; writes the "timing" section of docs/benchmarks.md.

Measures: a ``timed`` region (enter + exit, flat and nested), ``log_timing``,
``begin``/``end``, the per-step cost of ``step()`` around step 100 and around step
100,000 of one run (must be flat), and the cost of every call when timing is off.

Each figure is the best of many repeats of a short tight loop, minus the cost of the same
loop doing nothing (other processes share this machine; short loops and the best repeat
find the undisturbed moments). Usage::

    python benchmarks/bench_timing.py            # full run, writes docs/benchmarks.md
    python benchmarks/bench_timing.py --quick --no-write --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _report import machine, today, write_section

import trainer.timing.logger as L
from trainer.timing import (
    TimingLogger,
    log_timing,
    set_global_timing_logger,
    timed,
)

TARGET_REGION_US = 3.0
TARGET_DISABLED_US = 0.2
PER_STEP_REGIONS = 20  # regions per step in the per-step measurement


def _best_ns(loop: Callable[[int], float], n: int, repeats: int) -> float:
    return min(loop(n) for _ in range(repeats)) / n * 1e9


def _empty(n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        pass
    return time.perf_counter() - t


def _region(n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        with timed("forward"):
            pass
    return time.perf_counter() - t


def _nested(n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        with timed("forward"), timed("vrt"):
            pass
    return time.perf_counter() - t


class _Bare:
    """The cheapest possible Python context manager: Python's own floor for ``with``."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        return None


_BARE = _Bare()


def _bare_with(n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        with _BARE:
            pass
    return time.perf_counter() - t


def _log_timing(n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        log_timing("forward/vrt", 1.5)
    return time.perf_counter() - t


def _begin_end(lg: TimingLogger) -> Callable[[int], float]:
    def loop(n: int) -> float:
        begin, end = lg.begin, lg.end
        t = time.perf_counter()
        for _ in range(n):
            end(begin("backward/vrt"))
        return time.perf_counter() - t

    return loop


def _step_disabled(lg: TimingLogger) -> Callable[[int], float]:
    def loop(n: int) -> float:
        step = lg.step
        t = time.perf_counter()
        for _ in range(n):
            step()
        return time.perf_counter() - t

    return loop


def call_costs(n: int, repeats: int, log_root: str) -> dict[str, float]:
    """Nanoseconds per call, loop overhead removed."""
    out: dict[str, float] = {"load": os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0}
    base = _best_ns(_empty, n, repeats)
    out["loop_ns"] = base
    out["python_with_floor_ns"] = _best_ns(_bare_with, n, repeats) - base

    lg = TimingLogger(log_root, enable_console=False, enable_file=False, handle_sigterm=False)
    set_global_timing_logger(lg)
    out["region_ns"] = _best_ns(_region, n, repeats) - base
    out["nested_pair_ns"] = _best_ns(_nested, n, repeats) - base
    out["log_timing_ns"] = _best_ns(_log_timing, n, repeats) - base
    out["begin_end_ns"] = _best_ns(_begin_end(lg), n, repeats) - base
    lg.step()
    lg.close()

    set_global_timing_logger(None)
    out["off_no_logger_region_ns"] = _best_ns(_region, n, repeats) - base
    out["off_no_logger_log_timing_ns"] = _best_ns(_log_timing, n, repeats) - base

    off = TimingLogger(log_root, enabled=False)
    set_global_timing_logger(off)
    out["off_disabled_region_ns"] = _best_ns(_region, n, repeats) - base
    out["off_disabled_log_timing_ns"] = _best_ns(_log_timing, n, repeats) - base
    out["off_disabled_begin_end_ns"] = _best_ns(_begin_end(off), n, repeats) - base
    out["off_disabled_step_ns"] = _best_ns(_step_disabled(off), n, repeats) - base
    set_global_timing_logger(None)
    return out


def per_step_costs(
    total_steps: int, windows: list[int], window: int, log_root: str, enable_file: bool
) -> dict[str, Any]:
    """``step()`` time (µs) in windows of ``window`` steps starting at each of ``windows``,
    in one run of ``total_steps`` steps with PER_STEP_REGIONS regions per step."""
    lg = TimingLogger(
        log_root,
        enable_console=False,
        enable_file=enable_file,
        handle_sigterm=False,
        run_name="bench",
    )
    set_global_timing_logger(lg)
    names = [f"stage{i}" for i in range(PER_STEP_REGIONS - 2)]
    starts = sorted(windows)
    samples: dict[int, list[float]] = {s: [] for s in starts}
    region_loop: list[float] = []
    perf = time.perf_counter
    step = lg.step
    t_run = perf()
    for i in range(1, total_steps + 1):
        t0 = perf()
        with timed("forward"):
            for name in names:
                with timed(name):
                    pass
        log_timing("data", 0.25)
        t1 = perf()
        step(samples=1, scalars={"loss": 1.0 / i})
        t2 = perf()
        for s in starts:
            if s <= i < s + window:
                samples[s].append((t2 - t1) * 1e6)
                if s == starts[0]:
                    region_loop.append((t1 - t0) * 1e6)
    run_s = perf() - t_run
    lg.close()
    set_global_timing_logger(None)
    res: dict[str, Any] = {"total_steps": total_steps, "run_seconds": run_s, "windows": {}}
    for s, xs in samples.items():
        res["windows"][s] = {
            "median_us": statistics.median(xs),
            "mean_us": statistics.fmean(xs),
            "p90_us": sorted(xs)[int(0.9 * (len(xs) - 1))],
        }
    res["regions_per_step_median_us"] = statistics.median(region_loop)
    return res


def _fmt_window(w: dict[str, float]) -> str:
    return f"{w['median_us']:.1f} µs median, {w['mean_us']:.1f} mean, {w['p90_us']:.1f} p90"


def report(c: dict[str, float], steps: dict[str, dict[str, Any]], quick: bool) -> str:
    ns = c
    region_us = ns["region_ns"] / 1000
    off_us = max(ns["off_no_logger_region_ns"], ns["off_disabled_region_ns"]) / 1000
    lines = [
        "## Timing core, CPU cost",
        "",
        f"Machine: {machine()}. Date: {today()}. Command: `python benchmarks/bench_timing.py"
        + (" --quick" if quick else "")
        + f"`. Load average at start: {ns['load']:.1f}.",
        "Best of many short tight loops, loop overhead "
        f"({ns['loop_ns']:.0f} ns per iteration) subtracted. The machine is shared with other "
        "jobs, so figures vary by ~10-20% between runs.",
        "",
        "| call | cost | target |",
        "|---|---|---|",
        f'| `with timed("forward"): pass` (enter + exit, CPU clock) | {region_us:.2f} µs | '
        f"≤ {TARGET_REGION_US:.0f} µs: {'met' if region_us <= TARGET_REGION_US else 'NOT met'} |",
        f"| two nested regions (`forward`, `forward/vrt`) | {ns['nested_pair_ns'] / 1000:.2f} µs | |",
        f"| `log_timing(name, ms)` | {ns['log_timing_ns'] / 1000:.2f} µs | |",
        f"| `end(begin(name))` (hook API) | {ns['begin_end_ns'] / 1000:.2f} µs | |",
        f"| off, no logger: `with timed(...)` | {ns['off_no_logger_region_ns']:.0f} ns | "
        f"≤ {TARGET_DISABLED_US * 1000:.0f} ns: "
        f"{'met' if ns['off_no_logger_region_ns'] <= TARGET_DISABLED_US * 1000 else 'NOT met'} |",
        f"| off, disabled logger: `with timed(...)` | {ns['off_disabled_region_ns']:.0f} ns | "
        f"≤ {TARGET_DISABLED_US * 1000:.0f} ns: "
        f"{'met' if ns['off_disabled_region_ns'] <= TARGET_DISABLED_US * 1000 else 'NOT met'} |",
        f"| off: `log_timing` (no logger / disabled) | {ns['off_no_logger_log_timing_ns']:.0f} / "
        f"{ns['off_disabled_log_timing_ns']:.0f} ns | |",
        f"| off: `end(begin(name))` / `step()` on a disabled logger | "
        f"{ns['off_disabled_begin_end_ns']:.0f} / {ns['off_disabled_step_ns']:.0f} ns | |",
        "",
        "Most of the disabled cost is Python's `with` statement itself: `with` on a bare"
        f" do-nothing object costs {ns['python_with_floor_ns']:.0f} ns here; `timed()` adds"
        " one global read and one dict lookup and returns a shared no-op object.",
        "",
        f"Per-step cost of `step()` ({PER_STEP_REGIONS} regions per step, JSONL written, flushed"
        " every 50 steps), in windows of steps of one long run:",
        "",
        "| outputs | steps in run | window at step 100 | window at the last steps | ratio (median) |",
        "|---|---|---|---|---|",
    ]
    for label, res in steps.items():
        ws = res["windows"]
        first, last = sorted(ws)
        ratio = ws[last]["median_us"] / ws[first]["median_us"]
        lines.append(
            f"| {label} | {res['total_steps']:,} | {_fmt_window(ws[first])} | "
            f"from step {last:,}: {_fmt_window(ws[last])} | {ratio:.2f} |"
        )
    any_res = next(iter(steps.values()))
    lines += [
        "",
        f"The {PER_STEP_REGIONS} regions of one step themselves cost "
        f"{any_res['regions_per_step_median_us']:.1f} µs (median). Step cost is flat: statistics"
        " are running sums, the step's regions are a dict cleared every step, and buffered"
        " lines are written every 50 steps (or 2 s). The text log (one formatted block per"
        " step, the BRIEF's format) is most of the cost when on.",
        "",
        f"Summary: region {region_us:.2f} µs, disabled {off_us * 1000:.0f} ns at worst.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller counts (about 10 s)")
    p.add_argument(
        "--smoke", action="store_true", help="tiny counts, figures meaningless (test suite)"
    )
    p.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    p.add_argument("--json", help="also write the raw figures to this file")
    args = p.parse_args(argv)
    if args.smoke:
        (n, repeats), (total, window) = (300, 3), (400, 100)
    elif args.quick:
        (n, repeats), (total, window) = (2_000, 20), (3_000, 500)
    else:
        (n, repeats), (total, window) = (5_000, 200), (101_000, 1_000)
    last = total - window
    os.environ.pop(L.ENV_SWITCH, None)
    with tempfile.TemporaryDirectory(prefix="bench_timing_") as root:
        c = call_costs(n, repeats, root)
        steps = {
            "JSONL only": per_step_costs(total, [100, last], window, root, enable_file=False),
            "JSONL + text log": per_step_costs(total, [100, last], window, root, enable_file=True),
        }
    md = report(c, steps, args.quick or args.smoke)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps({"calls_ns": c, "per_step": steps}, indent=2))
    if not args.no_write:
        write_section("timing", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
