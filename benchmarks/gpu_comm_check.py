"""Exposed DDP communication on CUDA (issue 22): ``stagewatch.watch_ddp`` on a real device.

    python benchmarks/gpu_comm_check.py OUT [--steps 30] [--dry-run]

Two runs, each a DDP loop of a small MLP with several gradient buckets, timed by a CUDA
:class:`~stagewatch.TimingLogger` with ``stagewatch.watch_ddp``:

* ``nccl1``: NCCL, one process (NCCL refuses two ranks on one GPU): the CUDA-event path of
  ``comm/exposed`` on NCCL's stream;
* ``gloo2``: gloo, two processes sharing the GPU (CUDA tensors): rank 1 sleeps 20 ms per
  step before backward, so rank 0 shows the wait in its exposed communication.

For every step record it checks the bounds (``0 <= comm/exposed <= backward``, top-level
regions within the step) and writes ``OUT/gpu_comm_check.json`` and ``.md`` with the
median exposed ms per rank. ``--dry-run`` runs both on CPU with gloo (CI checks the script).
Exit 1 when a bound is broken or a run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, backend: str, device: str, root: str, steps: int) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    import stagewatch
    from stagewatch import TimingLogger, set_global_timing_logger, timed

    dist.init_process_group(backend, rank=rank, world_size=world)
    dev = torch.device(device)
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(8)]).to(dev)  # ~32 MB grads
    model = DDP(net, bucket_cap_mb=8)
    assert stagewatch.watch_ddp(model) is not None
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    log = TimingLogger(
        root, enable_console=False, run_id=backend + str(world), rank=rank, world_size=world,
        device=device, handle_sigterm=False,
    )  # fmt: skip
    set_global_timing_logger(log)
    x = torch.randn(64, 1024, device=dev)
    log.mark_step_start()
    for _ in range(steps):
        with timed("forward"):
            loss = model(x).square().mean()
        if rank == 1:
            with timed("slow"):
                time.sleep(0.02)
        with timed("backward"):
            loss.backward()
        with timed("optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)
        log.step()
    log.close()
    set_global_timing_logger(None)
    dist.destroy_process_group()


def _check(run: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"ranks": {}, "violations": []}
    for f in sorted(run.glob("rank*.jsonl")):
        recs = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        steps = [r for r in recs if r.get("kind") == "step"][3:]  # warm-up left out
        exposed = []
        for s in steps:
            regs = s["regions"]
            if "comm/exposed" not in regs:
                out["violations"].append(f"{f.name} step {s['step']}: no comm/exposed")
                continue
            e, b = regs["comm/exposed"][0], regs.get("backward", [float("inf")])[0]
            top = sum(v[0] for k, v in regs.items() if "/" not in k)
            if not 0.0 <= e <= b * 1.001 or top > s["wall_ms"] * 1.001:
                out["violations"].append(f"{f.name} step {s['step']}: exposed {e} bwd {b}")
            exposed.append(e)
        out["ranks"][f.stem] = {
            "steps": len(steps),
            "exposed_ms_median": statistics.median(exposed) if exposed else None,
            "backward_ms_median": statistics.median(s["regions"]["backward"][0] for s in steps)
            if steps
            else None,
        }
    return out


def _launch(world: int, backend: str, device: str, root: str, steps: int) -> None:
    import torch.multiprocessing as mp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_port()))
    mp.spawn(_worker, args=(world, backend, device, root, steps), nprocs=world, join=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--dry-run", action="store_true", help="CPU and gloo (checks the script)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [("gloo", 2, "cpu")] if a.dry_run else [("nccl", 1, "cuda"), ("gloo", 2, "cuda")]
    report: dict[str, Any] = {"dry_run": a.dry_run, "runs": {}}
    code = 0
    with tempfile.TemporaryDirectory() as tmp:
        for backend, world, device in runs:
            name = f"{backend}{world}"
            try:
                _launch(world, backend, device, tmp, a.steps)
                res = _check(Path(tmp) / name)
            except Exception as e:  # a failed run is a result, not a crash of the suite
                res = {"error": f"{type(e).__name__}: {e}"}
            report["runs"][name] = res
            if res.get("error") or res.get("violations"):
                code = 1
    (out / "gpu_comm_check.json").write_text(json.dumps(report, indent=1))
    lines = [
        "| run | rank | steps | exposed ms (median) | backward ms (median) |",
        "|---" * 5 + "|",
    ]
    for name, res in report["runs"].items():
        if "error" in res:
            lines.append(f"| {name} | — | — | {res['error']} | |")
            continue
        for rk, r in res["ranks"].items():
            lines.append(
                f"| {name} | {rk} | {r['steps']} | {r['exposed_ms_median']} | "
                f"{r['backward_ms_median']} |"
            )
        lines.extend(f"- bound broken: {v}" for v in res["violations"][:10])
    (out / "gpu_comm_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return code


if __name__ == "__main__":
    sys.exit(main())
