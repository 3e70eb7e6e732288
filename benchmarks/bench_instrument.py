"""Overhead of ``stagewatch.instrument`` on a small transformer's CPU training step;
writes the "instrument" section of docs/benchmarks.md.

One training step (forward, backward, AdamW) of a small pre-norm transformer (4 layers,
width 128, 8 x 64 tokens, one torch thread: ~20 ms here) in five modes, interleaved: every
round runs a block of steps of each mode, in a rotating order, so that the load of other
processes on a shared machine falls on all modes alike:

- ``none``: no timing at all;
- ``hooks2``: no timing, but a do-nothing forward pre-hook and forward hook on each module
  ``instrument(depth=2)`` times: the floor any hook-based timing pays (torch's own hook
  dispatch);
- ``core``: the timing core only (``forward``/``backward``/``optimizer`` regions, ``step()``,
  JSONL and text log on);
- ``instrument2`` / ``instrument3``: the core plus ``instrument(model, depth=2)`` (7
  modules) or ``depth=3`` (23 modules: attention, MLP and norms of every layer);
- ``profiler``: ``torch.profiler`` over the same steps (CPU activity, no shapes, no stacks,
  no memory), the core off.

Figures are medians of the per-step wall time over all rounds. Usage::

    python benchmarks/bench_instrument.py                 # full run, writes docs/benchmarks.md
    python benchmarks/bench_instrument.py --quick --no-write
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _report import machine, today, write_section

import stagewatch
from stagewatch.timing.modules import select_modules

TARGET_PCT = 3.0
MODES = ("none", "hooks2", "core", "instrument2", "instrument3", "profiler")


def _nothing(*_: Any) -> None:
    return None


class Layer(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class SmallTransformer(nn.Module):
    """A token model: embedding, pre-norm layers, final norm, vocabulary head."""

    def __init__(self, vocab: int = 512, d: int = 128, layers: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Layer(d, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


class Bench:
    """One model, optimizer and batch; a step function per mode."""

    def __init__(
        self, batch: int, seq: int, log_dir: str, device: str = "cpu", width: int = 128
    ) -> None:
        torch.manual_seed(0)
        self.device = device
        self.model = SmallTransformer(d=width, heads=max(4, width // 64)).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.ids = torch.randint(0, 512, (batch, seq), device=device)
        self.log_dir = log_dir
        self.loggers: dict[str, stagewatch.TimingLogger] = {}

    def sync(self) -> None:
        """Wait for the GPU (the benchmark's own clock only; timing never does this)."""
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def plain_step(self) -> None:
        logits = self.model(self.ids)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), self.ids.flatten())
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def timed_step(self, log: stagewatch.TimingLogger) -> None:
        with log.region("forward"):
            logits = self.model(self.ids)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), self.ids.flatten())
        with log.region("backward"):
            loss.backward()
        with log.region("optimizer"):
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        log.step(samples=self.ids.shape[0])

    @contextlib.contextmanager
    def mode(self, name: str) -> Iterator[Callable[[], None]]:
        """The step function of ``name`` with its timing set up around the block."""
        if name == "none":
            yield self.plain_step
            return
        if name == "hooks2":
            handles = []
            for m in select_modules(self.model, 2, (), ()).values():
                handles.append(m.register_forward_pre_hook(_nothing, with_kwargs=True))
                handles.append(
                    m.register_forward_hook(_nothing, with_kwargs=True, always_call=True)
                )
            try:
                yield self.plain_step
            finally:
                for h in handles:
                    h.remove()
            return
        if name == "profiler":
            from torch.profiler import ProfilerActivity, profile

            with profile(
                activities=[ProfilerActivity.CPU],
                record_shapes=False,
                with_stack=False,
                profile_memory=False,
            ):
                yield self.plain_step
            return
        log = self.loggers.get(name)
        if log is None:  # one logger per mode for the whole run, as in a training run
            log = self.loggers[name] = stagewatch.TimingLogger(
                self.log_dir,
                enable_console=False,
                run_name=name,
                handle_sigterm=False,
                device=self.device,
                # slow-step capture off: a capture runs torch.profiler from one step() to a
                # later one of its logger, so across the other modes' blocks; started before
                # the "profiler" block it nested two profilers (a segfault in Kineto once)
                capture=False,
            )
        depth = {"core": 0, "instrument2": 2, "instrument3": 3}[name]
        handle = stagewatch.instrument(self.model, depth, logger=log) if depth else None
        try:
            yield lambda: self.timed_step(log)
        finally:
            if handle is not None:
                handle.remove()

    def close(self) -> None:
        for log in self.loggers.values():
            log.close()
        self.loggers = {}


def paired_setup(
    batch: int, seq: int, tmp: str, width: int, run_name: str
) -> tuple[Bench, stagewatch.TimingLogger]:
    """The paired benchmarks' model, warmed up (one torch thread), and their one logger
    (capture off: a captured step runs under ``torch.profiler``)."""
    torch.set_num_threads(1)
    b = Bench(batch, seq, tmp, width=width)
    for _ in range(5):
        b.plain_step()
    log = stagewatch.TimingLogger(
        tmp, enable_console=False, run_name=run_name, handle_sigterm=False, capture=False
    )
    return b, log


def median_diff_ms(a: list[float], b: list[float]) -> float:
    """Median of the paired differences ``a - b`` (seconds), in ms."""
    return statistics.median(x - y for x, y in zip(a, b, strict=True)) * 1e3


def paired_args(ap: argparse.ArgumentParser, pairs: int) -> None:
    """The paired benchmarks' shared options."""
    ap.add_argument("--pairs", type=int, default=pairs, help=f"steps per mode (default {pairs})")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=48)
    ap.add_argument("--width", type=int, default=128)


def paired_header(args: argparse.Namespace, r: dict[str, Any]) -> str:
    """The first line of a paired benchmark's output."""
    return (
        f"width {args.width}, batch {args.batch} x {args.seq}, depth {args.depth}, "
        f"{args.pairs} steps per mode; no timing {r['none_ms']:.2f} ms thread CPU; "
        f"load {r['load'][0]:.1f} -> {r['load'][1]:.1f}"
    )


def measure(
    rounds: int, block: int, batch: int, seq: int, device: str = "cpu", width: int = 128
) -> dict[str, Any]:
    if device == "cpu":
        torch.set_num_threads(1)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        b = Bench(batch, seq, tmp, device, width)
        for _ in range(5):  # warm up allocator and kernels
            b.plain_step()
        b.sync()
        times: dict[str, list[float]] = {m: [] for m in MODES}
        cpu: dict[str, list[float]] = {m: [] for m in MODES}
        for r in range(rounds):
            order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
            for m in order:
                with b.mode(m) as step:
                    step()  # the first step of a block (new hooks) not counted
                    b.sync()
                    for _ in range(block):
                        c0, t0 = time.thread_time(), time.perf_counter()
                        step()
                        b.sync()
                        t1, c1 = time.perf_counter(), time.thread_time()
                        times[m].append((t1 - t0) * 1000.0)
                        cpu[m].append((c1 - c0) * 1000.0)
        b.close()
        regions = _regions_of(b, tmp)
    per_call = per_module_cost(max(4, rounds // 2)) if device == "cpu" else None
    # CPU: the training thread's CPU time (what the timing adds on a CPU step; on a shared
    # machine, wall time also holds the waits for a core). GPU: wall time, synchronized.
    basis = cpu if device == "cpu" else times
    med = {m: statistics.median(v) for m, v in basis.items()}
    wall = {m: statistics.median(v) for m, v in times.items()}
    return {
        "median_ms": med,
        "basis": "thread CPU time" if device == "cpu" else "wall time",
        "wall_median_ms": wall,
        "wall_overhead_pct": {m: (wall[m] / wall["none"] - 1.0) * 100.0 for m in MODES},
        "steps": {m: len(v) for m, v in times.items()},
        "overhead_pct": {m: (med[m] / med["none"] - 1.0) * 100.0 for m in MODES},
        "vs_core_pct": {
            m: (med[m] / med["core"] - 1.0) * 100.0 for m in ("instrument2", "instrument3")
        },
        "regions": regions,
        "per_module_call_us": per_call,
        "batch": batch,
        "seq": seq,
        "width": width,
        "device": device,
        "rounds": rounds,
        "block": block,
        "load": (load0, os.getloadavg()[0]),  # 1-minute load average at the start and end
    }


def _regions_of(b: Bench, tmp: str) -> dict[str, int]:
    """How many regions one step of each instrumented mode records."""
    out = {}
    for m in ("core", "instrument2", "instrument3"):
        log = stagewatch.TimingLogger(
            tmp,
            enable_console=False,
            enable_file=False,
            enable_jsonl=False,
            handle_sigterm=False,
            device=b.device,
        )
        depth = {"core": 0, "instrument2": 2, "instrument3": 3}[m]
        h = stagewatch.instrument(b.model, depth, logger=log) if depth else None
        b.timed_step(log)
        b.timed_step(log)
        log.close()  # resolves the CUDA events of the last steps
        out[m] = len(log.get_summary())
        if h is not None:
            h.remove()
    return out


class _Res(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lin(x)


def per_module_cost(rounds: int, n: int = 50) -> float:
    """CPU µs that instrument adds per module call (forward + backward), from a chain of
    ``n`` tiny residual modules whose own work is small: the hooks' cost with warm caches."""
    model = nn.Sequential(*(_Res() for _ in range(n)))
    x = torch.randn(2, 4)
    with tempfile.TemporaryDirectory() as tmp:
        log = stagewatch.TimingLogger(
            tmp, enable_console=False, enable_file=False, enable_jsonl=False, handle_sigterm=False
        )
        got: dict[str, list[float]] = {"plain": [], "inst": []}
        for _ in range(rounds):
            for mode in got:
                h = stagewatch.instrument(model, 1, logger=log) if mode == "inst" else None
                model(x).sum().backward()
                for _ in range(5):
                    c0 = time.thread_time()
                    model(x).sum().backward()
                    got[mode].append(time.thread_time() - c0)
                    log._cur = {}  # the regions of this loop are not the point
                if h is not None:
                    h.remove()
        log.close()
    plain, inst = (statistics.median(got[m]) for m in ("plain", "inst"))
    return (inst - plain) / n * 1e6


def report(res: dict[str, Any]) -> str:
    med, ov = res["median_ms"], res["overhead_pct"]
    names = {
        "none": "no timing",
        "hooks2": "no timing; two do-nothing hooks on each of those 7 modules",
        "core": "timing core only (3 regions + `step()`, JSONL + text log)",
        "instrument2": "core + `instrument(model, depth=2)`",
        "instrument3": "core + `instrument(model, depth=3)`",
        "profiler": "`torch.profiler` (CPU activity, no shapes/stacks/memory)",
    }
    wall, wov = res["wall_median_ms"], res["wall_overhead_pct"]
    rows = [
        "| mode | regions/step | step, thread CPU (ms) | vs no timing | step, wall (ms) "
        "| vs no timing |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in MODES:
        n = res["regions"].get(m, "-")
        rows.append(
            f"| {names[m]} | {n} | {med[m]:.2f} | {ov[m]:+.1f} % | {wall[m]:.2f} | "
            f"{wov[m]:+.1f} % |"
        )
    ok = ov["instrument2"] <= TARGET_PCT
    return "\n".join(
        [
            "## `instrument`: per-module regions on a small transformer (CPU, issue 21)",
            "",
            f"{machine()}, torch {torch.__version__}, one torch thread, {today()}; "
            f"`benchmarks/bench_instrument.py`. One training step (forward, cross-entropy, "
            f"backward, AdamW) of a 4-layer pre-norm transformer (width 128, 4 heads, batch "
            f"{res['batch']} × {res['seq']} tokens). Modes interleaved: {res['rounds']} "
            f"rounds × {res['block']} steps each, rotating order; medians over "
            f"{res['steps']['none']} steps per mode. The verdict is on the training "
            "thread's CPU time per step (`time.thread_time`): on this shared machine the "
            "wall time also holds the waits for a free core (1-minute load average "
            f"{res['load'][0]:.1f} at the start, {res['load'][1]:.1f} at the end, on "
            f"{os.cpu_count()} cores), shown for reference. One logger per mode for the "
            "whole run, as in a training run; hooks installed at the start of each block "
            "(its first step not counted).",
            "",
            *rows,
            "",
            f"`instrument(depth=2)` costs {ov['instrument2']:+.1f} % of CPU against no timing "
            f"in this run ({'≤' if ok else 'over'} the target of {TARGET_PCT:.0f} %; the "
            "target is judged on repeated paired runs, `bench_instrument_ab.py --keep`, in "
            "the latest `instrument(depth=2)` section below: this design's block medians, "
            "with hooks installed anew for each block, swing by ±2 points from run to run) and "
            f"{res['vs_core_pct']['instrument2']:+.1f} % against the timing core alone; "
            f"depth 3 (23 modules) {ov['instrument3']:+.1f} % / "
            f"{res['vs_core_pct']['instrument3']:+.1f} %. `torch.profiler` with its lightest "
            f"settings costs {ov['profiler']:+.1f} %. With warm caches (a chain of 50 tiny "
            f"residual modules, timed alone) instrument adds "
            f"{res['per_module_call_us']:.0f} µs of CPU per module call, forward and "
            f"backward: {7 * res['per_module_call_us'] / med['none'] / 10:.1f} % of this "
            "step for its 7 modules. Inside the training step the overhead measured is "
            "larger than that and varies from run to run by several percent on this shared "
            "machine: read one run's figures with that noise in mind (the section on the "
            "hooks' cost, below, compares repeated runs).",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few rounds (a check, not a figure)")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=48)
    args = ap.parse_args(argv)
    rounds, block = (2, 3) if args.quick else (args.rounds, 10)
    res = measure(rounds, block, args.batch, args.seq)
    text = report(res)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    if not args.no_write and not args.quick:
        write_section("instrument", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
