"""``step()`` before and after (issue 21): training-thread time and all-thread CPU per step.

20 regions per step (``forward`` and 18 children timed with ``region``, ``data`` logged), then
``step(samples=1, scalars={"loss": ...})``. For each tree (``--base``: an earlier checkout;
this tree) and each output setting (JSONL only; JSONL + the classic text log), a fresh process
runs ``--steps`` steps after 300 warm-up steps and reports:

- the training thread's time in ``step()`` (perf_counter around the call): median, p90, p99;
- the CPU of all threads per step: ``time.process_time()`` over the steps and a final
  ``flush()`` (so work deferred to the flush is counted), minus the same loop's regions
  without ``step()``, divided by the steps.

Runs alternate (base, this tree, this tree with the background writer; round after round) so a
busy spell of the shared machine hits every side alike; each figure is the median over the
rounds. Writes section "hotpath" of docs/benchmarks.md. Usage::

    git worktree add --detach /tmp/base adec4d3
    python benchmarks/bench_hotpath.py --base /tmp/base --label "adec4d3 (before issue 21)"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REGIONS = 20
TARGET_STEP_US = 20.0
TARGET_CPU_US = 40.0


def child(text: bool, steps: int, background: bool) -> dict[str, Any]:
    """One measurement, in this process (``PYTHONPATH`` picks the tree)."""
    from stagewatch.timing import TimingLogger

    kw: dict[str, Any] = {"background_writer": True} if background else {}
    names = [f"forward/stage{i}" for i in range(REGIONS - 2)]
    with tempfile.TemporaryDirectory(prefix="bench_hotpath_") as root:
        lg = TimingLogger(root, enable_console=False, enable_file=text, handle_sigterm=False, **kw)
        region, log, step = lg.region, lg.log, lg.step
        perf, cpu = time.perf_counter, time.process_time

        def regions() -> None:
            with region("forward"):
                for name in names:
                    with region(name):
                        pass
            log("data", 0.25)

        for i in range(300):
            regions()
            step(samples=1, scalars={"loss": 1.0 / (i + 1)})
        lg.flush()
        us: list[float] = []
        c0 = cpu()
        for i in range(steps):
            regions()
            t = perf()
            step(samples=1, scalars={"loss": 1.0 / (i + 1)})
            us.append((perf() - t) * 1e6)
        lg.flush()
        c1 = cpu()
        for _ in range(steps):
            regions()
            lg._cur = {}  # the regions' values, discarded (both trees keep them here)
        c2 = cpu()
        dropped = getattr(getattr(lg, "_writer", None), "dropped_total", 0)
        lg.close()
    us.sort()
    n = len(us)
    return {
        "median_us": statistics.median(us),
        "p90_us": us[int(0.9 * (n - 1))],
        "p99_us": us[int(0.99 * (n - 1))],
        "max_us": us[-1],
        "cpu_us": ((c1 - c0) - (c2 - c1)) / steps * 1e6,
        "dropped": dropped,
    }


def breakdown(steps: int) -> dict[str, float]:
    """This tree's CPU per record in the writer's parts (µs): the queued records processed
    with no sink, with the JSONL sink, with the text log, with both; and ``step()``'s own."""
    from stagewatch.timing import TimingLogger

    names = [f"forward/stage{i}" for i in range(REGIONS - 2)]
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_hotpath_") as root:
        lg = TimingLogger(
            root,
            enable_console=False,
            handle_sigterm=False,
            file_flush_interval=10**9,
            writer_queue=10**9,
        )
        lg._kick_every = 10**9  # the queue is processed only where measured
        w = lg._writer
        assert w is not None
        (jsonl,) = [s for s in w.sinks if type(s).__name__ == "JsonlSink"]
        (text,) = [s for s in w.sinks if type(s).__name__ == "TextSink"]
        cpu = time.process_time

        def regions() -> None:
            with lg.region("forward"):
                for name in names:
                    with lg.region(name):
                        pass
            lg.log("data", 0.25)

        steps = min(steps, 300)  # a queue as long as a few flush intervals, not more
        for _ in range(10):
            for label, sinks in (("core", ()), ("jsonl", (jsonl,)), ("text", (text,))):
                w.sinks = sinks
                c0 = cpu()
                for i in range(steps):
                    regions()
                    lg.step(samples=1, scalars={"loss": 1.0 / (i + 1)})
                c1 = cpu()
                for _ in range(steps):
                    regions()
                    lg._cur = {}
                c2 = cpu()
                w.drain(True)
                c3 = cpu()
                out.setdefault("step", []).append(((c1 - c0) - (c2 - c1)) / steps * 1e6)
                out.setdefault(label, []).append((c3 - c2) / steps * 1e6)
        w.sinks = (text, jsonl)  # the JSONL sink last (it rounds the values in place)
        lg.close()
    xs = [0.00134 * (i + 1) for i in range(60)]
    spec = "%9.2f"  # the text log's conversion (its template is built at run time)
    out["float_ns"] = [
        timeit.timeit(lambda: [spec % x for x in xs], number=200) / 200 / 60 * 1e9
        for _ in range(10)
    ]
    return {k: statistics.median(v) if k != "float_ns" else min(v) for k, v in out.items()}


def _run(
    tree: Path, text: bool, steps: int, background: bool, breakdown_only: bool = False
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STAGEWATCH_TIMING")}
    env["PYTHONPATH"] = str(tree)
    args = [sys.executable, str(Path(__file__).resolve()), "--child", "--steps", str(steps)]
    args += ["--text"] if text else []
    args += ["--breakdown"] if breakdown_only else []
    args += ["--background"] if background else []
    out = subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


SIDES = ("before", "after", "after, background writer")
OUTPUTS = (("JSONL only", False), ("JSONL + text log", True))


def measure(base: Path, rounds: int, steps: int) -> dict[str, dict[str, list[dict[str, Any]]]]:
    res: dict[str, dict[str, list[dict[str, Any]]]] = {
        o: {s: [] for s in SIDES} for o, _ in OUTPUTS
    }
    for r in range(rounds):
        for out, text in OUTPUTS:
            for side in SIDES:
                tree = base if side == "before" else ROOT
                res[out][side].append(_run(tree, text, steps, side.endswith("writer")))
        res.setdefault("parts", {}).setdefault("after", []).append(  # type: ignore[arg-type]
            _run(ROOT, True, steps, False, breakdown_only=True)
        )
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    return res


def _med(xs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(x[key] for x in xs)


def report(res: dict[str, Any], label: str, rounds: int, steps: int, load: float) -> str:
    from benchmarks._report import machine, today

    keys = ("step", "core", "jsonl", "text", "float_ns")
    parts = {k: _med(res["parts"]["after"], k) for k in keys}
    lines = [
        "## `step()` hot path (issue 21): before and after, interleaved",
        "",
        f"Machine: {machine()}. Date: {today()}. Load average at start: {load:.1f}. "
        f"Command: `python benchmarks/bench_hotpath.py --base <checkout> --rounds {rounds} "
        f"--steps {steps}`; before = {label}.",
        "",
        f"{REGIONS} regions per step; a fresh process per figure, {steps:,} steps after 300 "
        f"warm-up steps; the three sides alternate, {rounds} rounds, each figure the median over "
        "the rounds. *step()*: the training thread's time in the call. *CPU per step*: "
        "`process_time` (all threads) over the steps and a final `flush()`, minus the same "
        "regions without `step()`. Targets: step() ≤ "
        f"{TARGET_STEP_US:.0f} µs median, CPU ≤ {TARGET_CPU_US:.0f} µs per step.",
        "",
        "| outputs | side | step() median | p90 | p99 | CPU per step, all threads (range) |",
        "|---|---|---|---|---|---|",
    ]
    for out, _ in OUTPUTS:
        for side in SIDES:
            xs = res[out][side]
            med, cpu = _med(xs, "median_us"), _med(xs, "cpu_us")
            ok_step = ok_cpu = ""
            if side != "before":
                ok_step = " (met)" if med <= TARGET_STEP_US else " (NOT met)"
                ok_cpu = " (met)" if cpu <= TARGET_CPU_US else " (NOT met)"
            drops = sum(x["dropped"] for x in xs)
            note = f" ({drops} records dropped)" if drops else ""
            lines.append(
                f"| {out} | {side}{note} | {med:.1f} µs{ok_step} | {_med(xs, 'p90_us'):.1f} µs "
                f"| {_med(xs, 'p99_us'):.0f} µs | {cpu:.1f} µs{ok_cpu} "
                f"({min(x['cpu_us'] for x in xs):.1f}–{max(x['cpu_us'] for x in xs):.1f}) |"
            )
    lines += [
        "",
        "Before, `step()` checked, accounted, encoded and (text log on) formatted each step's "
        "record in the call. After, it measures and queues the record; the writer does the "
        "rest for the queued records at each flush point (every `file_flush_interval` steps, "
        "2 s, a console interval, `flush()`, `close()`), so one step in 50 carries the batch "
        "(the p99 column): the CPU is the same work, done once per record, with the text "
        "log's tree order and template cached per region set. Then (after 57a850b) the "
        "block's numbers are formatted in C (`stagewatch/timing/_fmt.c`, the same bytes as "
        "`%`, tested against it with hypothesis; without a compiler or with "
        "`STAGEWATCH_PURE_PYTHON=1`, Python's `%`), the writer caches per region set what a "
        "record's processing needs and lists its values once for the statistics and the text "
        "log, the JSONL sink rounds the values in place (it is handed each record last) and "
        "the times' rounding costs half; `benchmarks/hotpath_same_bytes.py --base <checkout>` "
        "checks that the JSONL and the text log are the same bytes. "
        "With `background_writer=True` "
        "the batch runs on a thread; in this pure-Python loop it competes for the GIL with "
        "the loop, so it costs as much CPU and the training thread waits for the GIL instead "
        "(it pays off where the loop spends its time in code that releases the GIL, e.g. "
        "CUDA launches and kernels).",
        "",
        "Where the CPU per step goes after (the writer's parts timed apart, 300 queued "
        "records processed at once, median over the rounds): "
        f"`step()` itself {parts['step']:.1f} µs (clock, memory reading, scalars, the "
        f"record, the queue); limits and statistics {parts['core']:.1f} µs; "
        f"+ the JSONL file {parts['jsonl'] - parts['core']:.1f} µs; + the text log "
        f"{parts['text'] - parts['core']:.1f} µs (one template of 63 numbers per block, "
        "formatted by `_fmt.c`, where CPython's `%9.2f` costs "
        f"{parts['float_ns']:.0f} ns each on this machine; the values listed, the file "
        "written). "
        "The CUDA path queues the same records once their events "
        "complete (resolution one step behind, unchanged); its `step()` cost on a GPU is "
        "measured by the GPU suite's `timing` step (`gpu_timing_check.py`), owed to a lent "
        "device.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", help="the earlier checkout (a git worktree)")
    p.add_argument("--label", default="the base checkout")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    p.add_argument("--json", help="also write the raw figures here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--text", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--background", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--breakdown", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        if args.breakdown:
            print(json.dumps(breakdown(args.steps)))
        else:
            print(json.dumps(child(args.text, args.steps, args.background)))
        return 0
    if not args.base:
        p.error("--base is required (a checkout of the commit to compare with)")
    sys.path.insert(0, str(ROOT))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    res = measure(Path(args.base).resolve(), args.rounds, args.steps)
    md = report(res, args.label, args.rounds, args.steps, load)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    if not args.no_write:
        from benchmarks._report import write_section

        write_section("hotpath", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
