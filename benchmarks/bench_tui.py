"""Monitor benchmarks; writes section "tui" of docs/benchmarks.md (issue 13's figures).

All in one run, interleaved (each kind of child process in turn, best of N, so that a busy
spell of the shared machine hits every kind):

1. Whole-run read of a generated run (100,000 steps x 3 ranks x 40 regions by default,
   412 MiB): CPU of ``RunSource.load`` in one process (no index) over the CPU of bare
   ``json.loads`` of every line of the same files; the wall time with ranks read in
   parallel processes; a reopen through the run index (after a first read saved it).
2. ``tui replay``'s time to first screen on the same run: launch -> first rendered world,
   through the same path as the command (check_run, ReplaySource, MonitorApp), with and
   without the index.
3. ``tui watch`` while a writer process appends 3 ranks at 20 steps/s: CPU of the monitor
   process (screen + reader thread; the writer is another process), latency from a line
   written to its value rendered.
4. CPU of an idle ``watch`` (finished runs and a silent running one).
5. The timing core's ``step()`` cost (the writer), as ``bench_timing.per_step_costs``.

Usage: python benchmarks/bench_tui.py [--steps 100000] [--ranks 3] [--regions 40] [--repeats 3]
                                     [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine, today, write_section  # noqa: E402
from stagewatch.records import Step, encode  # noqa: E402
from tui.testing import region_names, start_line  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "stagewatch-bench-tui"


def make_run(steps: int, ranks: int, regions: int) -> Path:
    """The generated run (cached between invocations: writing it takes a while)."""
    run = CACHE / f"run-{steps}-{ranks}-{regions}"
    done = run / ".complete"
    if done.exists():
        return run
    run.mkdir(parents=True, exist_ok=True)
    names = region_names(regions)
    for r in range(ranks):
        rng = random.Random(r)
        with open(run / f"rank{r}.jsonl", "w") as f:
            f.write(start_line(run.name, rank=r, world_size=ranks, total_steps=steps))
            t = 1_764_160_000.0
            for s in range(1, steps + 1):
                reg = {n: (round(ms * (1 + rng.uniform(-0.05, 0.05)), 4), 1) for n, ms in names}
                wall = sum(v for k, (v, _) in reg.items() if "/" not in k) * 1.02
                t += wall / 1000
                f.write(
                    encode(
                        Step(
                            step=s,
                            time=t,
                            wall_ms=wall,
                            regions=reg,
                            samples=1,
                            memory={"allocated": 2 * 10**10, "peak": 3 * 10**10},
                            scalars={"loss": 1.0 / s, "lr": 1e-4},
                        )
                    )
                )
    done.touch()
    return run


_CHILD_LOADS = """
import json, resource, sys, time
c0 = time.process_time()
t0 = time.perf_counter()
n = 0
for p in sys.argv[1:]:
    with open(p, 'rb') as f:
        for line in f:
            json.loads(line); n += 1
dt = time.perf_counter() - t0
cpu = time.process_time() - c0
print(json.dumps({"s": dt, "cpu": cpu, "lines": n,
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

_CHILD_READ = """
import json, resource, sys, time
t_proc = time.perf_counter()
from tui.source import index
from tui.source.decode import scan_regions
from tui.source.reader import RunSource
mode = sys.argv[3]
index.set_enabled(mode in ("reopen", "save"))
c0 = time.process_time()
t0 = time.perf_counter()
src = RunSource(sys.argv[1]).load(parallel=mode == "parallel")
snap = src.snapshot()
dt = time.perf_counter() - t0
if mode == "save":  # the generated run has no run_end and was just written: index it anyway
    src.save_index(force=True)
cpu = time.process_time() - c0
ch = resource.getrusage(resource.RUSAGE_CHILDREN)
assert snap.step == int(sys.argv[2]), snap.step
assert src.from_index == (mode == "reopen"), (mode, src.from_index)
print(json.dumps({"s": dt, "cpu": cpu + ch.ru_utime + ch.ru_stime, "regions": len(snap.regions),
                  "process_s": time.perf_counter() - t_proc,
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "child_rss_kb": ch.ru_maxrss,
                  "malformed": snap.malformed, "steps": snap.wall.steps,
                  "fast_path": scan_regions is not None}))
"""

_CHILD_FIRST_SCREEN = """
import json, sys, time
t_launch = float(sys.argv[2])
from tui.source import index
index.set_enabled(sys.argv[3] == "index")
from tui.view.app import MonitorApp
from tui.source.check import check_run
from tui.source.replay import ReplaySource

class Probe(MonitorApp):
    done = False
    def _render_world(self, force_tree=False):
        super()._render_world(force_tree)
        w = self.world
        if w is not None and w.selected is not None and not self.done:
            self.done = True
            print(json.dumps({"first_screen_s": time.time() - t_launch, "step": w.selected.step,
                              "status": w.selected.replay}), flush=True)
            self.exit()

check_run(sys.argv[1])
Probe(ReplaySource(sys.argv[1], speed=10.0)).run(headless=True, size=(160, 48))
"""


def _child(code: str, *args: str, env: dict[str, str] | None = None) -> dict:
    full_env = {**os.environ, **env} if env else None
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        env=full_env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_read(steps: int, ranks: int, regions: int, repeats: int = 3) -> dict:
    """Whole-run read, parallel read, index reopen and replay's first screen, interleaved."""
    run = make_run(steps, ranks, regions)
    files = sorted(str(p) for p in run.glob("rank*.jsonl"))
    size = sum(os.path.getsize(p) for p in files)
    idx = run / ".stagewatch-index"
    if idx.exists():
        idx.unlink()
    first = _child(_CHILD_FIRST_SCREEN, str(run), repr(time.time()), "noindex")  # no index yet
    saved = _child(_CHILD_READ, str(run), str(steps), "save")  # the first indexed read writes it
    assert idx.exists(), "no index written"
    loads, serial, pure, par, reopen, screens = [], [], [], [], [], []
    for _ in range(repeats):
        loads.append(_child(_CHILD_LOADS, *files))
        serial.append(_child(_CHILD_READ, str(run), str(steps), "serial"))
        # the reader without its C fast path (as where tui.source._regions could not be built)
        pure.append(
            _child(_CHILD_READ, str(run), str(steps), "serial", env={"STAGEWATCH_PURE_PYTHON": "1"})
        )
        par.append(_child(_CHILD_READ, str(run), str(steps), "parallel"))
        reopen.append(_child(_CHILD_READ, str(run), str(steps), "reopen"))
        screens.append(_child(_CHILD_FIRST_SCREEN, str(run), repr(time.time()), "index"))
        screens.append(_child(_CHILD_FIRST_SCREEN, str(run), repr(time.time()), "noindex"))

    def best(xs: list[dict], k: str) -> float:
        return min(x[k] for x in xs)

    c_loads = best(loads, "cpu")
    assert not any(x["fast_path"] for x in pure), (
        "STAGEWATCH_PURE_PYTHON did not switch the fast path off"
    )
    return {
        "steps": steps,
        "ranks": ranks,
        "regions": serial[0]["regions"],
        "lines": loads[0]["lines"],
        "mb": size / 2**20,
        "index_kb": idx.stat().st_size / 1024,
        "repeats": repeats,
        "loads_s": best(loads, "s"),
        "loads_cpu": c_loads,
        "serial_s": best(serial, "s"),
        "serial_cpu": best(serial, "cpu"),
        "cpu_ratio": best(serial, "cpu") / c_loads,
        "pure_s": best(pure, "s"),
        "pure_cpu": best(pure, "cpu"),
        "pure_ratio": best(pure, "cpu") / c_loads,
        "pure_rss_mb": best(pure, "rss_kb") / 1024,
        "fast_path": all(x["fast_path"] for x in serial),
        "parallel_s": best(par, "s"),
        "parallel_cpu": best(par, "cpu"),
        "parallel_ratio": best(par, "s") / best(loads, "s"),
        "save_s": saved["s"],
        "reopen_s": best(reopen, "s"),
        "reopen_cpu": best(reopen, "cpu"),
        "reopen_ratio": best(reopen, "cpu") / c_loads,
        "reopen_process_s": best(reopen, "process_s"),
        "first_screen_noindex_cold_s": first["first_screen_s"],
        "first_screen_s": min(x["first_screen_s"] for x in screens[0::2]),
        "first_screen_noindex_s": min(x["first_screen_s"] for x in screens[1::2]),
        "first_screen_status": screens[0].get("status"),
        "rss_mb": best(serial, "rss_kb") / 1024,
        "loads_rss_mb": best(loads, "rss_kb") / 1024,
        "parallel_rss_mb": max(x["rss_kb"] for x in par) / 1024,
        "parallel_child_rss_mb": max(x["child_rss_kb"] for x in par) / 1024,
        "load": os.getloadavg()[0],
    }


_CHILD_WRITER = """
import json, sys, time
from stagewatch.records import encode
from tui.testing import step_records
run, rate, n, ranks, delay = (
    sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
)
files = [open(f"{run}/rank{r}.jsonl", "a") for r in range(ranks)]
gens = [step_records(n, rank=r, n_regions=40) for r in range(ranks)]
time.sleep(delay)
written = {}
t0 = time.monotonic()
for i, recs in enumerate(zip(*gens)):
    time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
    for f, rec in zip(files, recs):
        f.write(encode(rec))
        f.flush()
    written[recs[0].step] = time.monotonic()
print(json.dumps(written))
"""


def bench_latency(
    rate: float = 20.0, seconds: float = 10.0, ranks: int = 3, poll: bool = False
) -> dict:
    """``tui watch`` of a run a writer process appends to: CPU of this (the monitor) process
    while it writes, and latency from a step written to it rendered (CLOCK_MONOTONIC is one
    clock for both processes)."""
    from tui.source.live import LiveSource
    from tui.view.app import MonitorApp

    root = Path(tempfile.mkdtemp(prefix="sw-lat-"))
    run = root / "20261126-120000-latency-0001"
    run.mkdir()
    shown: dict[
        int, float
    ] = {}  # when the header first showed the step (what a person reads first)
    built: dict[int, float] = {}  # when the snapshot holding the step was made
    panels: dict[int, float] = {}  # when the tree and the other panels first showed it
    cpu: dict[str, float] = {}
    renders = [0]

    def note(seen: dict[int, float], w: object) -> None:
        if w and w.selected and w.selected.rank_info:  # type: ignore[attr-defined]
            step = min(ri.step for ri in w.selected.rank_info)  # type: ignore[attr-defined]
            now = time.monotonic()
            for s in range(max(seen, default=0) + 1, step + 1):
                seen[s] = now
                if seen is shown:
                    built[s] = w.made_at  # type: ignore[attr-defined]

    class Probe(MonitorApp):
        def _render_header(self) -> None:
            super()._render_header()
            note(shown, getattr(self, "header_world", self.world))

        def _render_world(self, force_tree: bool = False) -> None:
            super()._render_world(force_tree)
            renders[0] += 1
            note(panels, self.world)

    for r in range(ranks):
        (run / f"rank{r}.jsonl").write_text(
            start_line(run.name, rank=r, world_size=ranks, total_steps=10**6)
        )
    n = int(rate * seconds)
    out: dict[str, str] = {}

    async def watch() -> None:
        src = LiveSource(root, poll=poll)
        app = Probe(src)
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause(2.0)  # start-up and the first read
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _CHILD_WRITER,
                    str(run),
                    str(rate),
                    str(n),
                    str(ranks),
                    "1.0",
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            await pilot.pause(1.2)  # the writer's start-up: measure while it writes
            c0, w0, r0, p0 = time.process_time(), time.monotonic(), src.reader_cpu_s, src.posts
            f0 = getattr(src, "full_posts", src.posts)  # code before light snapshots: all full
            m0 = time.thread_time()  # this thread runs the app's event loop: the screen
            n0 = renders[0]
            while proc.poll() is None:
                # a bare sleep, not pilot.pause(): that pokes every widget and repaints the
                # screen 20 times a second, the test driver's cost (~5% of a core here), not
                # the monitor's
                await asyncio.sleep(0.05)
            dt = time.monotonic() - w0
            cpu["pct"] = (time.process_time() - c0) / dt * 100
            cpu["reader_pct"] = (src.reader_cpu_s - r0) / dt * 100
            cpu["screen_pct"] = (time.thread_time() - m0) / dt * 100
            cpu["posts_per_s"] = (src.posts - p0) / dt
            cpu["full_per_s"] = (getattr(src, "full_posts", src.posts) - f0) / dt
            cpu["dt"] = dt
            renders[0] -= n0
            out["written"] = proc.stdout.read() if proc.stdout else "{}"
            t_end = time.monotonic() + 2.0
            while max(shown, default=0) < n and time.monotonic() < t_end:
                await pilot.pause(0.05)

    asyncio.run(watch())
    written = {int(k): v for k, v in json.loads(out["written"].strip().splitlines()[-1]).items()}
    series = [(shown[s] - written[s]) * 1000 for s in sorted(written) if s in shown]
    if os.environ.get("BENCH_DEBUG"):
        print("latency series (ms):", [round(x) for x in series])
    lat = sorted(series)
    snap_lat = sorted((built[s] - written[s]) * 1000 for s in written if s in built)
    panel_lat = sorted((panels[s] - written[s]) * 1000 for s in written if s in panels) or [
        math.nan
    ]
    return {
        "rate": rate,
        "ranks": ranks,
        "samples": len(lat),
        "missing": len(written) - len(lat),
        "p50": statistics.median(lat),
        "p95": lat[int(0.95 * (len(lat) - 1))],
        "max": lat[-1],
        "poll": poll,
        "snap_p50": statistics.median(snap_lat),
        "snap_p95": snap_lat[int(0.95 * (len(snap_lat) - 1))],
        "cpu_pct": cpu.get("pct", math.nan),
        "reader_pct": cpu.get("reader_pct", math.nan),
        "screen_pct": cpu.get("screen_pct", math.nan),
        "posts_per_s": cpu.get("posts_per_s", math.nan),
        "renders": renders[0],
        "load": os.getloadavg()[0],
        "full_per_s": cpu.get("full_per_s", math.nan),
        "panels_p50": statistics.median(panel_lat),
        "panels_p95": panel_lat[int(0.95 * (len(panel_lat) - 1))],
        "panels_per_s": renders[0] / max(1e-9, cpu.get("dt", math.nan)),
    }


def bench_writer(far: int = 3000, window: int = 2000) -> dict:
    """The timing core's ``step()`` cost (JSONL written), via bench_timing."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_timing import PER_STEP_REGIONS, per_step_costs

    with tempfile.TemporaryDirectory(prefix="sw-writer-") as d:
        r = per_step_costs(far, window, d, enable_file=True)
    w = r["windows"][101]
    # the timing core imports msgspec only if it encodes with it (this process has not
    # imported the monitor, which does)
    encoder = "msgspec" if "msgspec" in sys.modules else "json"
    return {
        "regions": PER_STEP_REGIONS,
        "median_us": w["median_us"],
        "p90_us": w["p90_us"],
        "far_median_us": r["windows"][far + 1]["median_us"],
        "encoder": encoder,
    }


_CHILD_IDLE = """
import sys
from tui.view.app import MonitorApp
from tui.source.live import LiveSource
MonitorApp(LiveSource(sys.argv[1])).run(headless=True, size=(160, 48))
"""


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_idle(seconds: float = 30.0, warmup: float = 12.0) -> dict:
    from tui.testing import write_run

    root = Path(tempfile.mkdtemp(prefix="sw-idle-"))
    for i in range(5):
        write_run(root, f"20261126-1{i}0000-done-000{i}", steps=500, ranks=3, n_regions=40)
    write_run(root, "20261126-200000-silent-0009", steps=200, ranks=3, n_regions=40, status=None)
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD_IDLE, str(root)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(warmup)  # start-up and first read of every run, on a busy machine
        c0, t0 = _cpu_s(proc.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = _cpu_s(proc.pid), time.monotonic()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {
        "seconds": t1 - t0,
        "cpu_pct": (c1 - c0) / (t1 - t0) * 100,
        "runs": 6,
        "load": os.getloadavg()[0],
    }


def render(rep: dict, lat: dict, idle: dict, wr: dict, before: dict | None = None) -> str:
    """The markdown section (``before``: the writer measured on the previous encoder)."""

    def mark(ok: bool) -> str:
        return "met" if ok else "**not met**"

    writer = f"{wr['median_us']:.1f} µs median, {wr['p90_us']:.1f} µs p90 ({wr['encoder']} encoder)"
    if before:
        writer = (
            f"before ({before['encoder']} encoder): {before['median_us']:.1f} µs median; after: "
            + writer
        )
    return f"""## tui (monitor)

Machine: {machine()}. Date: {today()}. `python benchmarks/bench_tui.py`: one run, child
processes of each kind interleaved, best of {rep["repeats"]}; \
load average {rep["load"]:.1f} at the end of the reads.
The run: {rep["steps"]:,} steps x {rep["ranks"]} ranks x {rep["regions"]} \
regions ({rep["lines"]:,} lines, {rep["mb"]:.0f} MiB, in the page cache).

| measure | result | target |
|---|---|---|
| bare `json.loads` of every line, one process | \
{rep["loads_s"]:.2f} s wall, {rep["loads_cpu"]:.2f} s CPU | |
| whole-run read (`RunSource.load`, no \
index{"" if rep.get("fast_path", True) else "; **C fast path not built**"}), \
one process: CPU ÷ `json.loads` CPU | \
**{rep["cpu_ratio"]:.2f}** ({rep["serial_cpu"]:.2f} s CPU, \
{rep["serial_s"]:.2f} s wall, peak RSS {rep["rss_mb"]:.0f} MB) | \
≤ 0.5: {mark(rep["cpu_ratio"] <= 0.5)} |
| the same without the C fast path (`STAGEWATCH_PURE_PYTHON=1`: as where `tui.source._regions` \
could not be built) | {rep["pure_ratio"]:.2f} ({rep["pure_cpu"]:.2f} s CPU) | |
| the same, ranks in parallel processes (as `tui summary` reads a big run) | \
{rep["parallel_s"]:.2f} s wall ({rep["parallel_ratio"]:.2f}× \
`json.loads` wall), {rep["parallel_cpu"]:.2f} s CPU in all | |
| reopen through the run index ({rep["index_kb"]:.0f} KiB): CPU ÷ `json.loads` CPU | \
**{rep["reopen_ratio"]:.4f}** ({rep["reopen_cpu"] * 1000:.0f} ms CPU, \
{rep["reopen_s"] * 1000:.0f} ms wall; the whole process with its imports \
{rep["reopen_process_s"]:.2f} s) | ≤ 0.02: {mark(rep["reopen_ratio"] <= 0.02)} |
| `tui replay` launch → first screen rendered, index present | \
**{rep["first_screen_s"]:.2f} s** | ≤ 1 s: {mark(rep["first_screen_s"] <= 1.0)} |
| the same without an index (`--no-index`; the very first open: \
{rep["first_screen_noindex_cold_s"]:.2f} s) | {rep["first_screen_noindex_s"]:.2f} s | \
≤ 1 s: {mark(rep["first_screen_noindex_s"] <= 1.0)} |
| `tui watch`, a writer process appending {lat["ranks"]} ranks × {lat["rate"]:g} \
steps/s: CPU of the monitor process | **{lat["cpu_pct"]:.1f}% of a core** (reader \
thread {lat["reader_pct"]:.1f}%, screen {lat.get("screen_pct", math.nan):.1f}%; \
{lat["posts_per_s"]:.1f} snapshots/s, {lat.get("full_per_s", math.nan):.1f} of them full; \
panels redrawn {lat.get("panels_per_s", math.nan):.1f}/s) | ≤ 10%: {mark(lat["cpu_pct"] <= 10)} |
| latency, line written → its step shown (the header) | \
p50 {lat["p50"]:.0f} ms, p95 {lat["p95"]:.0f} ms, \
max {lat["max"]:.0f} ms ({lat["samples"]} steps) | p95 ≤ 150 ms: {mark(lat["p95"] <= 150)} |
| latency, line written → snapshot built | \
p50 {lat["snap_p50"]:.0f} ms, p95 {lat["snap_p95"]:.0f} ms | |
| latency, line written → tree and other panels redrawn with it | \
p50 {lat.get("panels_p50", math.nan):.0f} ms, p95 {lat.get("panels_p95", math.nan):.0f} ms | |
| CPU of an idle `watch` ({idle["runs"]} runs, one running but silent), over \
{idle["seconds"]:.0f} s | {idle["cpu_pct"]:.2f}% of a core | ≤ 2%: {mark(idle["cpu_pct"] <= 2)} |
| the timing core's `step()` ({wr["regions"]} regions, JSONL written) | {writer} | |

How: every line is decoded by `msgspec` into a typed struct (the types and ranges of
`tui.source.decode.LIMITS`, on the shared limits in `stagewatch.records`) with its `regions` object
kept raw; a small C extension (`tui/source/_regions.c`) checks that raw object against the rank's
last region schema (names byte-equal, strict JSON numbers converted exactly, the typed
decoder's ranges) and writes its `[ms, calls]` pairs straight into the slice's arrays, so no
Python object is made per value. A line it refuses (a new schema, an escaped name, a number it
cannot convert exactly, anything malformed) goes to the full typed decoder, which decides:
the same results either way (tested with hypothesis against `msgspec` and on mutated runs).
Steps are folded into the statistics 512 lines at a time with numpy (region columns assigned
once per schema, sums accumulated in file order, bounded histograms \
for percentiles). The run index is saved beside a run once it has ended
(or stayed idle 5 minutes): the folded state and each file's position, keyed by size, mtime
and hashes of the first and last 4 KiB read; a reopen checks the keys, restores the state
and reads only what was appended since. `tui replay` reads only the first bytes of each
file before its first screen. `tui watch` posts at most 8 snapshots a second (a change after
a quiet spell at once); the header (step, ETA) shows every one, the tree and the other panels
are redrawn at most once a second (a replay playing: twice), from full snapshots only (the
last step of a busy spell at the gap's end; a key, another run or a state change at once);
the snapshots between are light (no per-region figures). The watch figures are measured with the app
driven by a bare event-loop sleep (not Pilot, whose every pause repaints the \
screen). The machine is shared with other jobs (2 cores, ~8 sessions): load
average {lat["load"]:.1f} during the watch run, \
{idle["load"]:.1f} during the idle run; CPU shares are of one core.

*Read CPU*: {rep["cpu_ratio"]:.2f}× `json.loads` \
with the C fast path, {rep["pure_ratio"]:.2f}× without
(2.3-2.7× before issue 13). Measured apart on a 20,000-line slice (one process, GC paused as
the reader pauses it), per 40-region line: the raw-regions decode ~2 µs, the C check and
conversion ~0.8 µs, the Python loop around them ~1.5 µs, the fold ~2 µs, reading and splitting
the file ~1 µs. Without the extension every region value becomes a Python object (tuple,
float) and is flattened into numpy: about twice the CPU. The ratio moves by about ±0.1 between runs
of this script with the machine's load.
*Watch CPU*: the screen (the event loop's thread) uses \
{lat.get("screen_pct", math.nan):.1f}% of a core, the
reader thread {lat["reader_pct"]:.1f}%, other threads (file watching) \
{lat["cpu_pct"] - lat["reader_pct"] - lat.get("screen_pct", math.nan):.1f}%. Between panel
redraws the reader builds light snapshots (the header's fields, each as the full snapshot
has it, without the per-region merge: ~1.4 ms instead of ~3.8 ms); file events come from
watchdog's observer asking only for writes, creations, removals and renames (without that
filter its threads also carried the opens and closes of the reader's own reads: ~1.9% of a
core); the start-up's objects are frozen out of the cyclic collector. A panel redraw costs \
~25 ms of the screen thread (Textual composing ~40 changed lines, the tree ~14 ms of it), \
hence once a second; the header's ~8 redraws a second ~3 points in all (~2 ms of each Textual
composing the frame). The latency target needs a snapshot every ~125 ms. Headless: in a terminal,
writing the frames out adds to the screen's share.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--ranks", type=int, default=3)
    ap.add_argument("--regions", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone"
    )
    ap.add_argument(
        "--only",
        choices=("read", "watch", "idle", "writer"),
        default=None,
        help="one measurement, printed",
    )
    ap.add_argument(
        "--writer-before",
        metavar="OUT",
        default=None,
        help="output of an earlier run (on the previous encoder): its writer figure is shown as "
        "'before'",
    )
    ap.add_argument(
        "--from",
        dest="from_file",
        metavar="OUT",
        default=None,
        help="re-render the section from the JSON lines this script printed earlier",
    )
    args = ap.parse_args()
    before = None
    if args.writer_before:
        before = next(
            json.loads(x)
            for x in Path(args.writer_before).read_text().splitlines()
            if x.startswith("{") and '"encoder"' in x
        )
    if args.from_file:
        recs = [
            json.loads(x)
            for x in Path(args.from_file).read_text().splitlines()
            if x.startswith("{")
        ]
        rep = next(r for r in recs if "cpu_ratio" in r)
        lat = next(r for r in recs if "p95" in r)
        idle = next(r for r in recs if "runs" in r)
        wr = next(r for r in recs if "encoder" in r)
        md = render(rep, lat, idle, wr, before)
        print(md)
        if not args.no_write:
            write_section("tui", md)
        return
    if args.only:
        fn = {
            "read": lambda: bench_read(args.steps, args.ranks, args.regions, args.repeats),
            "watch": bench_latency,
            "idle": bench_idle,
            "writer": bench_writer,
        }[args.only]
        print(json.dumps(fn()), flush=True)
        return

    t = time.perf_counter()
    make_run(args.steps, args.ranks, args.regions)
    print(f"run ready ({time.perf_counter() - t:.1f}s)", flush=True)
    wr = bench_writer()  # first: before this process imports the monitor (and msgspec)
    print(json.dumps(wr), flush=True)
    rep = bench_read(args.steps, args.ranks, args.regions, args.repeats)
    print(json.dumps(rep), flush=True)
    lat = bench_latency()
    print(json.dumps(lat), flush=True)
    idle = bench_idle()
    print(json.dumps(idle), flush=True)
    md = render(rep, lat, idle, wr, before)
    print(md)
    if not args.no_write:
        write_section("tui", md)


if __name__ == "__main__":
    main()
