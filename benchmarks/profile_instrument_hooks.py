"""What ``instrument(depth)``'s hook bodies cost inside a training step, and torch's floor.

The training step of ``bench_instrument.py``'s small transformer, with this tree's
``instrument`` installed once (as in training). Each hook body (``Probe.enter``/``leave``, the
autograd hooks ``Call.start``/``only_input``/``first_input``/``finish``) is wrapped in a
``perf_counter`` reading; printed: per hook, the median over steps of its time summed over
one step (µs). The wrapper adds ~0.3 µs per call.

``--floor``: instead, a do-nothing forward pre-hook and a forward hook on the same modules
that hangs a do-nothing autograd hook on the output's node the way ``instrument`` does,
each of its torch calls timed: ``out.grad_fn`` (a new Python object for the node), the
``_backward_hooks`` assignment on the proxy tensor, ``_register_hook_dict`` and
``_sequence_nr``: what any per-module backward timing through Python hooks pays.

    python benchmarks/profile_instrument_hooks.py --steps 300
    python benchmarks/profile_instrument_hooks.py --floor
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from bench_instrument import paired_setup

import stagewatch
from stagewatch.timing import calls, probe
from stagewatch.timing.modules import select_modules

_pc = time.perf_counter
_acc: dict[str, float] = collections.defaultdict(float)


def _wrap(cls: type, name: str) -> None:
    f = getattr(cls, name)

    def timed(*a: Any, **k: Any) -> Any:
        t = _pc()
        r = f(*a, **k)
        _acc[name] += _pc() - t
        return r

    setattr(cls, name, timed)


def _nothing(*_: Any) -> None:
    return None


def _floor_hooks(model: Any, depth: int) -> None:
    proxy = torch.empty(0)

    def pre(m: Any, args: Any, kwargs: Any) -> None:
        _acc["pre (empty)"] += 0.0

    def post(m: Any, args: Any, kwargs: Any, out: Any) -> None:
        t0 = _pc()
        node = out.grad_fn
        t1 = _pc()
        proxy._backward_hooks = {0: _nothing}
        t2 = _pc()
        node._register_hook_dict(proxy)
        t3 = _pc()
        node._sequence_nr()
        t4 = _pc()
        _acc["grad_fn"] += t1 - t0
        _acc["_backward_hooks ="] += t2 - t1
        _acc["_register_hook_dict"] += t3 - t2
        _acc["_sequence_nr"] += t4 - t3

    for m in select_modules(model, depth, (), ()).values():
        m.register_forward_pre_hook(pre, with_kwargs=True)
        m.register_forward_hook(post, with_kwargs=True, always_call=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--floor", action="store_true", help="torch's cost of hooking a node")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        b, log = paired_setup(4, 48, tmp, 128, "hooks")
        if args.floor:
            _floor_hooks(b.model, args.depth)
        else:
            for n in ("enter", "leave"):
                _wrap(probe.Probe, n)
            for n in ("start", "only_input", "first_input", "finish"):
                _wrap(calls.Call, n)
            stagewatch.instrument(b.model, args.depth, logger=log)
        for _ in range(5):
            b.timed_step(log)
        per: dict[str, list[float]] = collections.defaultdict(list)
        for _ in range(args.steps):
            _acc.clear()
            b.timed_step(log)
            for k, v in _acc.items():
                per[k].append(v)
            per["total"].append(sum(_acc.values()))
        log.close()
    print(
        " ".join(f"{k}={statistics.median(v) * 1e6:.1f}" for k, v in per.items()),
        "(µs per step, medians)",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
