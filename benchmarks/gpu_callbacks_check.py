"""GPU check of the framework callbacks: Lightning and the Hugging Face Trainer on CUDA.

Owed to a lent device (the callbacks are tested on CPU in tests/test_integration_*.py).
For each framework that is installed it trains the tests' tiny model a few steps on the
GPU with ``StagewatchCallback`` and checks, from the records written:

- the run is timed on CUDA (``run_start.device`` is ``cuda:N``: CUDA events, one step late);
- every step has the phases ``data/wait``, ``data/h2d``, ``forward``, ``backward``,
  ``optimizer`` and module regions, each with a plausible call count, and the top-level
  phases fit in the step's wall time;
- the host syncs the callback itself adds (``torch.cuda.set_sync_debug_mode("warn")``
  during the fit, warnings whose Python line is in ``stagewatch/``): with
  ``log_loss=False`` there must be none; with the default, one per step (the loss).

Usage::

    python benchmarks/gpu_callbacks_check.py --out DIR [--steps 6]
    python benchmarks/gpu_callbacks_check.py --out DIR --dry-run   # CPU: checks the script

Writes ``DIR/gpu_callbacks_check.json``; exit status 0 when every available framework
passes, 1 on a failure, 2 without a GPU (not on a dry run). A framework that is not
installed is reported as skipped, not failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

PHASES = ("data/wait", "data/h2d", "forward", "backward", "optimizer")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--dry-run", action="store_true", help="on the CPU, to check the script")
    return p.parse_args(argv)


def _records(log_root: Path) -> tuple[Any, list[Any]]:
    from _integration_helpers import run_records, steps

    recs = run_records(log_root)[0]
    return recs[0], steps(recs)


def _check_steps(start: Any, got: list[Any], want_steps: int, cuda: bool) -> list[str]:
    """What is wrong with one run's records (empty: nothing)."""
    problems = []
    if cuda and not str(start.device).startswith("cuda"):
        problems.append(f"run_start.device is {start.device!r}, not CUDA")
    if len(got) != want_steps:
        problems.append(f"{len(got)} step records, expected {want_steps}")
    for s in got:
        missing = [p for p in PHASES if p not in s.regions]
        if missing:
            problems.append(f"step {s.step}: no {missing}")
        if not any(n.startswith("forward/") for n in s.regions):
            problems.append(f"step {s.step}: no module regions")
        top = sum(ms for n, (ms, _) in s.regions.items() if "/" not in n)
        top += sum(s.regions[p][0] for p in ("data/wait", "data/h2d") if p in s.regions)
        if top > s.wall_ms * 1.02:
            problems.append(f"step {s.step}: phases {top:.2f} ms > wall {s.wall_ms:.2f} ms")
    return problems


def _syncs_from_stagewatch(run: Callable[[], None], cuda: bool) -> int:
    """Host syncs warned while ``run()`` trains whose stack passes through stagewatch/."""
    if not cuda:
        run()
        return 0
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # torch names the Python line that made the syncing call as the warning's file
    return sum(
        "synchroniz" in str(w.message) and f"{Path('stagewatch')}" in str(w.filename)
        for w in caught
    )


def check_lightning(work: Path, n: int, cuda: bool) -> dict[str, Any]:
    try:
        import _lightning_job as job
    except ImportError as e:
        return {"skipped": f"lightning not installed ({e})"}
    from stagewatch.integrations.lightning import StagewatchCallback

    out: dict[str, Any] = {}
    accel = "gpu" if cuda else "cpu"
    for log_loss in (False, True):
        root = work / f"lightning-loss{int(log_loss)}"
        cb = StagewatchCallback(str(root), log_loss=log_loss, enable_console=False)
        syncs = _syncs_from_stagewatch(
            lambda cb=cb, root=root: job.fit(
                str(root), max_steps=n, callback=cb, accelerator=accel
            ),
            cuda,
        )
        start, got = _records(root)
        out[f"log_loss={log_loss}"] = {
            "device": start.device,
            "syncs_from_stagewatch": syncs,
            "problems": _check_steps(start, got, n, cuda),
            "step_ms": [round(s.wall_ms, 3) for s in got],
            "last_regions": {k: list(v) for k, v in got[-1].regions.items()} if got else {},
        }
    return out


def check_hf(work: Path, n: int, cuda: bool) -> dict[str, Any]:
    try:
        import _hf_job as job
    except ImportError as e:
        return {"skipped": f"transformers not installed ({e})"}
    from stagewatch.integrations.hf import StagewatchCallback

    out: dict[str, Any] = {}
    for log_loss in (False, True):
        root = work / f"hf-loss{int(log_loss)}"
        cb = StagewatchCallback(str(root), log_loss=log_loss, depth=3, enable_console=False)
        syncs = _syncs_from_stagewatch(
            lambda cb=cb, root=root: job.train(
                str(root), str(work / "hf-out"), max_steps=n, accumulate=2,
                checkpointing=True, callback=cb, use_cpu=not cuda,
            ),
            cuda,
        )  # fmt: skip
        start, got = _records(root)
        out[f"log_loss={log_loss}"] = {
            "device": start.device,
            "syncs_from_stagewatch": syncs,
            "problems": _check_steps(start, got, n, cuda),
            "step_ms": [round(s.wall_ms, 3) for s in got],
            "last_regions": {k: list(v) for k, v in got[-1].regions.items()} if got else {},
        }
    return out


def verdict(results: dict[str, Any], n: int) -> list[str]:
    """The failures: record problems, and syncs beyond the loss's one per step."""
    bad = []
    for fw, res in results.items():
        for mode, r in res.items() if "skipped" not in res else ():
            bad += [f"{fw} {mode}: {p}" for p in r["problems"]]
            allowed = n if mode == "log_loss=True" else 0
            if r["syncs_from_stagewatch"] > allowed:
                bad.append(f"{fw} {mode}: {r['syncs_from_stagewatch']} syncs (at most {allowed})")
    return bad


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("gpu_callbacks_check: no CUDA GPU", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, check in (("lightning", check_lightning), ("hf", check_hf)):
            try:
                results[name] = check(Path(tmp), args.steps, cuda)
            except Exception:
                results[name] = {"error": {"problems": [traceback.format_exc()[-2000:]],
                                           "syncs_from_stagewatch": 0}}  # fmt: skip
    failures = verdict(results, args.steps)
    report = {"cuda": cuda, "steps": args.steps, "results": results, "failures": failures}
    (args.out / "gpu_callbacks_check.json").write_text(json.dumps(report, indent=1))
    for f in failures:
        print("FAIL", f)
    print("gpu_callbacks_check:", "ok" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
