"""Where ``instrument(depth)``'s cost in a training step goes: an ablation, one process.

The training step of ``bench_instrument.py``'s small transformer runs in these modes,
alternating every step (ABC.. ..CBA), hooks installed before each step and removed after it
(outside the measured time), as in ``bench_instrument_ab.py``:

- ``none``: no timing;
- ``hooks2``: a do-nothing forward pre-hook and forward hook on each timed module (torch's
  hook dispatch: the floor of any module-hook timing);
- ``node_hooks``: a forward hook that hangs a do-nothing autograd hook on each timed
  module's output node, the way ``instrument`` does (``_register_hook_dict``): the floor of
  any per-module backward timing through Python autograd hooks (the node's Python object,
  the registration, and in the backward the engine taking the GIL, wrapping the gradient
  in a Python tensor and calling the hook);
- ``core``: the timing core only (``forward``/``backward``/``optimizer`` regions, ``step()``);
- ``fwd_regions``: core + ``instrument`` with its backward part off (no call records, no
  autograd hooks: the forward regions only);
- ``bwd_noop``: core + ``instrument`` whose autograd hooks are registered and run but do
  nothing (the call records and hooks' registration and dispatch, without their bodies);
- ``instrument``: core + ``instrument``.

Figures: medians of the per-step differences to ``none`` of the training thread's CPU time
(``time.thread_time``), and the garbage collections that ran inside the measured steps.

    python benchmarks/bench_instrument_ablation.py --pairs 400
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from bench_instrument import (
    Bench,
    _nothing,
    median_diff_ms,
    paired_args,
    paired_header,
    paired_setup,
)

import stagewatch
from stagewatch.timing import calls, probe
from stagewatch.timing.modules import select_modules

MODES = ("none", "hooks2", "node_hooks", "core", "fwd_regions", "bwd_noop", "instrument")

Undo = Callable[[], None] | None


class _NoopCall(calls.Call):
    """A call record whose autograd hooks do nothing (done at once: the module's queue of
    calls is emptied at its next forward, as after a real backward)."""

    __slots__ = ()

    def start(self, *_: Any) -> None:
        self.state = 2

    def only_input(self, *_: Any) -> None:
        return None

    first_input = only_input


@contextlib.contextmanager
def _noop_calls() -> Iterator[None]:
    probe.Call = _NoopCall  # type: ignore[misc]
    try:
        yield
    finally:
        probe.Call = calls.Call  # type: ignore[misc]


def _out_hook(proxy: torch.Tensor) -> Callable[..., None]:
    def hook(module: Any, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            out.grad_fn._register_hook_dict(proxy)

    return hook


def install(mode: str, b: Bench, log: Any, depth: int) -> tuple[Callable[[], None], Undo]:
    """The step function of ``mode`` and what takes its hooks away."""
    mods = list(select_modules(b.model, depth, (), ()).values())
    if mode == "none":
        return b.plain_step, None
    if mode == "hooks2":
        hs = [m.register_forward_pre_hook(_nothing, with_kwargs=True) for m in mods]
        hs += [m.register_forward_hook(_nothing, with_kwargs=True, always_call=True) for m in mods]
        return b.plain_step, lambda: [h.remove() for h in hs] and None
    if mode == "node_hooks":
        proxy = torch.empty(0)
        proxy._backward_hooks = {0: _nothing}
        hs = [m.register_forward_hook(_out_hook(proxy)) for m in mods]
        return b.plain_step, lambda: [h.remove() for h in hs] and None
    timed = lambda: b.timed_step(log)  # noqa: E731
    if mode == "core":
        return timed, None
    h = stagewatch.instrument(b.model, depth, logger=log)
    if mode == "fwd_regions":
        h.grad_enabled = lambda: False  # no call records: the forward regions only
    if mode == "bwd_noop":

        def step() -> None:
            with _noop_calls():
                timed()

        return step, h.remove
    return timed, h.remove


def _collections() -> int:
    return sum(s["collections"] for s in gc.get_stats())


def measure(pairs: int, depth: int, batch: int, seq: int, width: int) -> dict[str, Any]:
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        b, log = paired_setup(batch, seq, tmp, width, "ablation")
        cpu: dict[str, list[float]] = {m: [] for m in MODES}
        gcs = dict.fromkeys(MODES, 0)
        for i in range(pairs + 1):
            for m in MODES if i % 2 == 0 else MODES[::-1]:
                step, undo = install(m, b, log, depth)
                g0 = _collections()
                c0 = time.thread_time()
                step()
                c1 = time.thread_time()
                if i:  # the first round warms every mode up
                    cpu[m].append(c1 - c0)
                    gcs[m] += _collections() - g0
                if undo is not None:
                    undo()
        log.close()
    ref = cpu["none"]
    return {
        "none_ms": statistics.median(ref) * 1e3,
        "vs_none_ms": {m: median_diff_ms(cpu[m], ref) for m in MODES},
        "gc": gcs,
        "load": (load0, os.getloadavg()[0]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    paired_args(ap, 400)
    args = ap.parse_args(argv)
    r = measure(args.pairs, args.depth, args.batch, args.seq, args.width)
    print(paired_header(args, r))
    print("| mode | vs no timing (ms) | % | gc runs |")
    print("|---|---:|---:|---:|")
    for m in MODES:
        v = r["vs_none_ms"][m]
        print(f"| {m} | {v:+.3f} | {100 * v / r['none_ms']:+.2f} % | {r['gc'][m]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
