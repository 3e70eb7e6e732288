"""CPU cost of the timing core; writes the "timing" section of docs/benchmarks.md.

Measures: a ``timed`` region (enter + exit, flat and nested), ``log_timing``,
``begin``/``end``, the per-step cost of ``step()`` after step 100 of a new run and after
step 100,000 of a long one (must be flat), and the cost of every call when timing is off.

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

from stagewatch.timing import (
    ENV_SWITCH,
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
        with timed("forward"):  # noqa: SIM117 - the nested form is what loops write
            with timed("vrt"):
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


def _one_step(lg: TimingLogger, names: list[str], i: int) -> float:
    """The regions of one step on ``lg``, then its ``step()``; returns step()'s µs."""
    region = lg.region
    with region("forward"):
        for name in names:
            with region(name):
                pass
    lg.log("data", 0.25)
    t = time.perf_counter()
    lg.step(samples=1, scalars={"loss": 1.0 / i})
    return (time.perf_counter() - t) * 1e6


def per_step_costs(far: int, window: int, log_root: str, enable_file: bool) -> dict[str, Any]:
    """``step()`` time (µs) of a fresh run over steps 101..100+window, and of a run that is
    already at step ``far`` over steps far+1..far+window.

    The two runs step alternately in the same loop, so both windows see the same machine
    load (other jobs share this machine); each step has PER_STEP_REGIONS regions.
    """

    def new() -> TimingLogger:
        return TimingLogger(
            log_root,
            enable_console=False,
            enable_file=enable_file,
            handle_sigterm=False,
            run_name="bench",
        )

    names = [f"forward/stage{i}" for i in range(PER_STEP_REGIONS - 2)]
    old = new()
    t0 = time.perf_counter()
    for i in range(1, far - 100 + 1):  # bring the old run to step far - 100
        _one_step(old, names, i)
    warm_s = time.perf_counter() - t0
    fresh = new()
    young_us: list[float] = []
    old_us: list[float] = []
    for k in range(1, 100 + window + 1):
        a = _one_step(fresh, names, k)
        b = _one_step(old, names, far - 100 + k)
        if k > 100:
            young_us.append(a)
            old_us.append(b)
    assert fresh.step_count == 100 + window and old.step_count == far + window
    fresh.close()
    old.close()

    def stats(xs: list[float]) -> dict[str, float]:
        return {
            "median_us": statistics.median(xs),
            "mean_us": statistics.fmean(xs),
            "p90_us": sorted(xs)[int(0.9 * (len(xs) - 1))],
        }

    return {
        "windows": {101: stats(young_us), far + 1: stats(old_us)},
        "far": far,
        "warm_seconds": warm_s,
    }


def _fmt_window(w: dict[str, float]) -> str:
    return f"{w['median_us']:.1f} µs median, {w['mean_us']:.1f} mean, {w['p90_us']:.1f} p90"


def before_after(
    before: dict[str, Any], c: dict[str, float], steps: dict[str, dict[str, Any]], label: str
) -> list[str]:
    """Lines comparing this run with the figures of an earlier version (``--before``)."""
    bc, bs = before["calls_ns"], before["per_step"]

    def first_median(res: dict[str, Any]) -> float:
        ws = res["windows"]
        return ws[min(ws, key=int)]["median_us"]

    rows = [
        ("region enter + exit", bc["region_ns"] / 1000, c["region_ns"] / 1000),
        ("two nested regions", bc["nested_pair_ns"] / 1000, c["nested_pair_ns"] / 1000),
        ("`log_timing`", bc["log_timing_ns"] / 1000, c["log_timing_ns"] / 1000),
    ]
    for k in steps:
        if k in bs:
            rows.append((f"`step()`, {k} (median)", first_median(bs[k]), first_median(steps[k])))
    out = [
        "",
        f"Before and after {label}, run back to back on this machine (BEFORE.json: "
        "`bench_timing.py --no-write --json BEFORE.json` in a checkout of the earlier commit, "
        "just before; load "
        f"{bc['load']:.1f} at start):",
        "",
        "| cost | before | after | after ÷ before |",
        "|---|---|---|---|",
    ]
    out += [f"| {n} | {a:.2f} µs | {b:.2f} µs | {b / a:.2f} |" for n, a, b in rows]
    return out


def report(
    c: dict[str, float],
    steps: dict[str, dict[str, Any]],
    quick: bool,
    window: int,
    before: dict[str, Any] | None = None,
    before_label: str = "",
) -> str:
    ns = c
    region_us = ns["region_ns"] / 1000
    off_us = max(ns["off_no_logger_region_ns"], ns["off_disabled_region_ns"]) / 1000
    lines = [
        "## Timing core, CPU cost",
        "",
        f"Machine: {machine()}. Date: {today()}. Command: `python benchmarks/bench_timing.py"
        + (" --quick" if quick else "")
        + (" --before BEFORE.json" if before is not None else "")
        + f"`. Load average at start: {ns['load']:.1f}.",
        "Best of many short tight loops, loop overhead "
        f"({ns['loop_ns']:.0f} ns per iteration) subtracted. The machine is shared with other "
        "jobs (see the load average), so figures vary between runs, by up to ~50% for the "
        "enabled costs.",
        "",
        "| call | cost | target |",
        "|---|---|---|",
        f'| `with timed("forward"): pass` (enter + exit, CPU clock) | {region_us:.2f} µs | '
        f"≤ {TARGET_REGION_US:.0f} µs: {'met' if region_us <= TARGET_REGION_US else 'NOT met'} |",
        f"| two nested regions (`forward`, `forward/vrt`) | "
        f"{ns['nested_pair_ns'] / 1000:.2f} µs | |",
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
        " every 50 steps), early in a run and late in a long run:",
        "",
        "| outputs | steps 101.. of a new run | steps after step N of a long run "
        "| ratio (median) |",
        "|---|---|---|---|",
    ]
    for label, res in steps.items():
        ws = res["windows"]
        first, last = sorted(ws)
        ratio = ws[last]["median_us"] / ws[first]["median_us"]
        lines.append(
            f"| {label} | {_fmt_window(ws[first])} | N = {res['far']:,}: {_fmt_window(ws[last])} "
            f"| {ratio:.2f} |"
        )
    lines += [
        "",
        "Both runs step alternately in one loop (so both see the same load), over windows of "
        f"{window:,} steps. Step cost is flat: statistics"
        " are running sums, the step's regions are a dict cleared every step, and buffered"
        " lines are written every 50 steps (or 2 s). The text log (one formatted block per"
        " step, the BRIEF's format) is most of the cost when on.",
        "",
        f"Summary: region {region_us:.2f} µs, disabled {off_us * 1000:.0f} ns at worst.",
    ]
    if before is not None:
        lines += before_after(before, c, steps, before_label or "the change")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller counts (about 10 s)")
    p.add_argument(
        "--smoke", action="store_true", help="tiny counts, figures meaningless (test suite)"
    )
    p.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    p.add_argument("--json", help="also write the raw figures to this file")
    p.add_argument(
        "--before",
        metavar="JSON",
        help="figures (--json) of an earlier version, run just before: adds a table",
    )
    p.add_argument("--before-label", default="", help="what changed, for that table's title")
    args = p.parse_args(argv)
    if args.smoke:
        (n, repeats), (far, window) = (300, 3), (400, 100)
    elif args.quick:
        (n, repeats), (far, window) = (2_000, 20), (5_000, 500)
    else:
        (n, repeats), (far, window) = (5_000, 200), (100_000, 1_000)
    os.environ.pop(ENV_SWITCH, None)
    with tempfile.TemporaryDirectory(prefix="bench_timing_") as root:
        c = call_costs(n, repeats, root)
        steps = {
            "JSONL only": per_step_costs(far, window, root, enable_file=False),
            "JSONL + text log": per_step_costs(far, window, root, enable_file=True),
        }
    before = json.loads(Path(args.before).read_text()) if args.before else None
    md = report(c, steps, args.quick or args.smoke, window, before, args.before_label)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps({"calls_ns": c, "per_step": steps}, indent=2))
    if not args.no_write:
        write_section("timing", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
