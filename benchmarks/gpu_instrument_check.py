"""GPU check of ``stagewatch.instrument`` (issue 21), one step of the GPU suite (<= 60 s).

1. **CUDA events from hooks**: a CUDA timing logger, ``instrument(model, depth=3)`` on a
   small transformer, 6 training steps under ``torch.cuda.set_sync_debug_mode("warn")``:
   every step record has ``forward/<path>`` and ``backward/<path>`` of every module, finite
   and non-negative; module regions fit in their parents; the hooks add no host sync (the
   sync warnings of an instrumented step against a plain one).
2. **Overhead**: the interleaved modes of ``bench_instrument.py`` (no timing, core only,
   depth 2, depth 3, torch.profiler) on the GPU step, the wall time of each step measured
   with a synchronize *by the benchmark* (timing itself never synchronizes).

Writes ``OUT/gpu_instrument_check.json`` and ``.md``; never ``docs/``. ``--dry-run`` runs
it tiny on the CPU (the suite's dry run and tests/test_gpu_suite.py).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_instrument import MODES, Bench, measure

import stagewatch


def _sync_warnings(fn: Any, cuda: bool) -> int:
    """Host syncs reported while ``fn`` runs (0 on the CPU: nothing to report)."""
    if not cuda:
        fn()
        return 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum(1 for w in caught if "synchroniz" in str(w.message).lower())


def events_check(device: str, batch: int, seq: int, width: int, steps: int) -> dict[str, Any]:
    """Regions from hooks on a CUDA logger: complete, sane, and without host syncs."""
    cuda = device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        b = Bench(batch, seq, tmp, device, width)
        for _ in range(3):
            b.plain_step()
        b.sync()
        plain_syncs = _sync_warnings(b.plain_step, cuda)
        log = stagewatch.TimingLogger(
            tmp, enable_console=False, run_name="events", handle_sigterm=False, device=device
        )
        h = stagewatch.instrument(b.model, 3, logger=log)
        paths = list(h.regions)
        b.timed_step(log)  # hooks' first use (lazy parameter hooks) outside the count
        hooked_syncs = _sync_warnings(lambda: [b.timed_step(log) for _ in range(steps)], cuda)
        h.remove()
        log.close()
        recs = [
            json.loads(line)
            for line in Path(tmp, log.run_id, "rank0.jsonl").read_text().splitlines()
        ]
    step_recs = [r for r in recs if r["kind"] == "step"]
    want = {f"{ph}/{p}" for ph in ("forward", "backward") for p in paths}
    missing = sorted(want - set(step_recs[-1]["regions"])) if step_recs else sorted(want)
    bad = []
    for r in step_recs:
        regs = {k: v[0] for k, v in r["regions"].items()}
        for k, v in regs.items():
            if not (math.isfinite(v) and v >= 0):
                bad.append(f"step {r['step']}: {k}={v}")
        for ph in ("forward", "backward"):
            mods = sum(v for k, v in regs.items() if k.count("/") == 2 and k.startswith(ph))
            if ph in regs and mods > regs[ph] * 1.05 + 0.05:
                bad.append(f"step {r['step']}: layers' {ph} {mods:.3f} > {ph} {regs[ph]:.3f} ms")
    last = {k: v[0] for k, v in step_recs[-1]["regions"].items()} if step_recs else {}
    return {
        "device": device,
        "modules": len(paths),
        "steps": len(step_recs),
        "missing": missing,
        "bad": bad[:20],
        "syncs_plain_step": plain_syncs,
        "syncs_instrumented_steps": hooked_syncs,
        "instrumented_steps": steps,
        "last_step_ms": {k: round(v, 4) for k, v in sorted(last.items())},
        "ok": bool(step_recs) and not missing and not bad and hooked_syncs <= plain_syncs * steps,
    }


def report(ev: dict[str, Any], ov: dict[str, Any], gpu: str) -> str:
    med, pct = ov["median_ms"], ov["overhead_pct"]
    rows = ["| mode | median step (ms) | vs no timing |", "|---|---:|---:|"]
    rows += [f"| {m} | {med[m]:.3f} | {pct[m]:+.1f} % |" for m in MODES]
    return "\n".join(
        [
            f"### instrument on {gpu}",
            "",
            f"CUDA events from hooks ({ev['modules']} modules, depth 3, {ev['steps']} step "
            f"records): {'complete and sane' if ev['ok'] else 'FAILED'}; missing "
            f"{ev['missing'] or 'none'}; problems {ev['bad'] or 'none'}; host syncs: "
            f"{ev['syncs_instrumented_steps']} over {ev['instrumented_steps']} instrumented "
            f"steps, {ev['syncs_plain_step']} in one plain step.",
            "",
            f"Overhead (batch {ov['batch']} × {ov['seq']} tokens, width {ov['width']}; "
            f"{ov['rounds']} rounds × {ov['block']} steps, interleaved):",
            "",
            *rows,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dry-run", action="store_true", help="tiny, on the CPU")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--block", type=int, default=10)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.dry_run:
        device, batch, seq, width, rounds, block = "cpu", 2, 16, 64, 1, 2
        gpu = "CPU (dry run)"
    else:
        if not torch.cuda.is_available():
            print("no CUDA device", file=sys.stderr)
            return 1
        device, batch, seq, width = "cuda", 16, 256, 512
        rounds, block = args.rounds, args.block
        gpu = torch.cuda.get_device_name()
    ev = events_check(device, batch, seq, width, steps=5)
    ov = measure(rounds, block, batch, seq, device, width)
    res = {"events": ev, "overhead": ov, "gpu": gpu, "seconds": time.perf_counter() - t0}
    (args.out / "gpu_instrument_check.json").write_text(json.dumps(res, indent=2))
    text = report(ev, ov, gpu)
    (args.out / "gpu_instrument_check.md").write_text(text + "\n")
    print(text)
    return 0 if ev["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
