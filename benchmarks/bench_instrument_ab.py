"""Paired before/after of ``stagewatch.instrument`` in one process, one step at a time.

``instrument.py`` of another checkout (``--base``, e.g. a ``git worktree`` of an older
commit) is loaded beside this tree's, with the base's own hook modules (``modules``,
``calls``, ``probe``) and this tree's timing core (``regions``, the logger); the training
step of ``bench_instrument.py``'s small transformer then runs in four modes, alternating
every step (ABCD DCBA ...): no timing, the timing core only (``forward``/``backward``/
``optimizer`` regions and ``step()``, one logger), core + the base's ``instrument(depth)``,
core + this tree's. Hooks are installed before each step and removed after it (outside the
measured time). Figures: medians of the per-step differences
of the training thread's CPU time (``time.thread_time``) between neighbouring steps, which
cancels the slow drift of a shared machine's load better than blocks of steps do; and their
means, which also hold what a median leaves out: the steps where the logger's writer
processes its queue on the training thread (every 50 steps or 2 s by default).

    python benchmarks/bench_instrument_ab.py --base /work/wt/base-instr --pairs 300
    python benchmarks/bench_instrument_ab.py --base ../old --width 32 --batch 1 --seq 8

Slow-step capture is off (``capture=False``): a captured step runs under
``torch.profiler``. Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_instrument import median_diff_ms, paired_args, paired_header, paired_setup

import stagewatch.timing.instrument as this_tree

MODES = ("none", "core", "base", "this")


# the modules of instrument's hooks, loaded from the base in import order
HOOK_MODULES = ("modules", "calls", "forward", "probe", "instrument")


def load_base(checkout: Path) -> Any:
    """The base checkout's ``instrument`` with the base's own hook modules (``calls``,
    ``modules``, ``probe`` where it has them), loaded beside this tree's: each is put in
    ``sys.modules`` under its real name while the next one imports it, then this tree's
    modules are put back. The timing core (``regions``, the logger) is this tree's."""
    timing = checkout / "stagewatch" / "timing"
    if not (timing / "instrument.py").is_file():
        raise SystemExit(
            f"bench_instrument_ab: {timing}/instrument.py: no such file (--base is a checkout)"
        )
    saved = {n: sys.modules.get(f"stagewatch.timing.{n}") for n in HOOK_MODULES}
    mod = None
    try:
        for n in HOOK_MODULES:
            path = timing / f"{n}.py"
            if not path.is_file():
                continue
            name = f"stagewatch.timing.{n}"
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
            sys.modules[f"stagewatch.timing._base_{n}"] = mod
    finally:
        for n, m in saved.items():
            if m is not None:
                sys.modules[f"stagewatch.timing.{n}"] = m
    return mod


# a module's hook dicts, and a parameter's: what --keep switches between the modes
MODULE_HOOKS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


# a forward in a module's own __dict__ (instrument's timed forward), or none
FORWARD = "__dict__['forward']"
_NONE = object()


def hook_state(model: Any) -> list[tuple[Any, str, Any]]:
    """The hooks on ``model``'s modules and parameters now, each dict taken away (replaced
    by an empty one), and the modules' own ``forward`` (a timed one): ``(object, attribute,
    value)`` to put back with :func:`set_hooks`."""
    out: list[tuple[Any, str, Any]] = []
    for m in model.modules():
        for a in MODULE_HOOKS:
            out.append((m, a, getattr(m, a)))
            setattr(m, a, type(getattr(m, a))())
        out.append((m, FORWARD, m.__dict__.pop("forward", _NONE)))
    for p in model.parameters():
        out.append((p, "_post_accumulate_grad_hooks", p._post_accumulate_grad_hooks))
        p._post_accumulate_grad_hooks = None
    return out


def set_hooks(state: list[tuple[Any, str, Any]] | None, bare: list[tuple[Any, str, Any]]) -> None:
    for obj, attr, d in state if state is not None else bare:
        if attr != FORWARD:
            setattr(obj, attr, d)
        elif d is _NONE:
            obj.__dict__.pop("forward", None)
        else:
            obj.__dict__["forward"] = d


def measure(
    base: Any, pairs: int, depth: int, batch: int, seq: int, width: int, keep: bool = False
) -> dict:
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        b, log = paired_setup(batch, seq, tmp, width, "ab")
        impl = {"base": base, "this": this_tree}
        # --keep: each tree's hooks installed once for the whole run, as in training (their
        # first calls' checks and the DDP look-out run once), and switched in by mode
        kept: dict[str, Any] = {}
        if keep:
            for m in impl:
                h = impl[m].instrument(b.model, depth, logger=log)
                for _ in range(3):
                    b.timed_step(log)
                kept[m] = (h, hook_state(b.model))
            bare = hook_state(b.model)

        def run(mode: str) -> float:
            h = None
            if keep:
                set_hooks(kept[mode][1] if mode in kept else None, bare)
                step = b.plain_step if mode == "none" else lambda: b.timed_step(log)
            elif mode == "none":
                step = b.plain_step
            else:
                if mode in impl:
                    h = impl[mode].instrument(b.model, depth, logger=log)
                step = lambda: b.timed_step(log)  # noqa: E731
            c0 = time.thread_time()
            step()
            c1 = time.thread_time()
            if h is not None:
                h.remove()
            return c1 - c0

        for m in MODES:
            run(m)
        cpu: dict[str, list[float]] = {m: [] for m in MODES}
        for i in range(pairs):
            for m in MODES if i % 2 == 0 else MODES[::-1]:
                cpu[m].append(run(m))
        if keep:
            set_hooks(None, bare)
            for h, state in kept.values():
                set_hooks(state, bare)
                h.remove()
        log.close()
    return _figures(cpu, load0)


def _mean_diff_ms(a: list[float], b: list[float]) -> float:
    return statistics.fmean(x - y for x, y in zip(a, b, strict=True)) * 1e3


def _figures(cpu: dict[str, list[float]], load0: float) -> dict:
    """Medians of the paired differences, and their means (every step: the writer's
    batches too)."""
    return {
        "none_ms": statistics.median(cpu["none"]) * 1e3,
        "vs_none_ms": {m: median_diff_ms(cpu[m], cpu["none"]) for m in MODES},
        "mean_vs_none_ms": {m: _mean_diff_ms(cpu[m], cpu["none"]) for m in MODES},
        "vs_core_ms": {m: median_diff_ms(cpu[m], cpu["core"]) for m in MODES},
        "this_minus_base_ms": median_diff_ms(cpu["this"], cpu["base"]),
        "load": (load0, os.getloadavg()[0]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="checkout to compare against")
    paired_args(ap, 300)
    ap.add_argument(
        "--keep",
        action="store_true",
        help="install each tree's hooks once and switch them in by mode (as in training), "
        "not before every step",
    )
    args = ap.parse_args(argv)
    base = load_base(args.base)
    r = measure(base, args.pairs, args.depth, args.batch, args.seq, args.width, args.keep)
    print(paired_header(args, r))
    print("| mode | vs no timing (ms) | % | vs core (ms) | mean vs no timing (ms) | % |")
    print("|---|---:|---:|---:|---:|---:|")
    for m in MODES:
        v, mv = r["vs_none_ms"][m], r["mean_vs_none_ms"][m]
        print(
            f"| {m} | {v:+.3f} | {100 * v / r['none_ms']:+.1f} % | {r['vs_core_ms'][m]:+.3f} "
            f"| {mv:+.3f} | {100 * mv / r['none_ms']:+.1f} % |"
        )
    d = r["this_minus_base_ms"]
    print(f"this - base, paired: {d:+.3f} ms per step ({100 * d / r['none_ms']:+.1f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
