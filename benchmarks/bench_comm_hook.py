"""The cost of ``stagewatch.watch_ddp``'s comm hook per step (CPU, gloo, one process).

    python benchmarks/bench_comm_hook.py [--steps 200] [--rounds 5]

Three DDP models of the same small MLP (4 buckets): DDP's own (C++) all-reduce, a bare
Python comm hook doing the same all-reduce (what any Python hook costs), and the hook that
times it (``comm/exposed``, ``comm/launch``, ``comm/total`` into an enabled
logger), timed in interleaved rounds; prints the median step time of each and the ratio.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    import stagewatch

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.manual_seed(0)
    x = torch.randn(16, 256)
    models = {}
    for mode in ("ddp", "pyhook", "watched"):
        net = nn.Sequential(*[nn.Linear(256, 256) for _ in range(4)])
        models[mode] = DDP(net, bucket_cap_mb=0.25)
    with tempfile.TemporaryDirectory() as tmp:
        log = stagewatch.TimingLogger(tmp, enable_console=False, handle_sigterm=False)
        stagewatch.set_global_timing_logger(log)
        assert stagewatch.watch_ddp(models["watched"]) is not None

        def bare(_state, bucket):  # type: ignore[no-untyped-def]
            fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
            return fut.then(lambda f: f.value()[0])

        models["pyhook"].register_comm_hook(None, bare)
        times: dict[str, list[float]] = {m: [] for m in models}
        for _ in range(a.rounds):
            for mode, model in models.items():
                for _ in range(a.steps):
                    t0 = time.perf_counter()
                    model(x).square().mean().backward()
                    times[mode].append(time.perf_counter() - t0)
                    log.step()
        stagewatch.set_global_timing_logger(None)
        log.close()
    dist.destroy_process_group()
    med = {m: statistics.median(v) * 1e3 for m, v in times.items()}
    print(f"torch {torch.__version__}, {a.rounds} interleaved rounds x {a.steps} steps")
    for m, v in med.items():
        print(f"{m:8} median forward+backward {v:.3f} ms")
    for base in ("ddp", "pyhook"):
        d = med["watched"] - med[base]
        print(f"watched/{base} {med['watched'] / med[base]:.3f} ({d * 1e3:+.0f} µs per step)")


if __name__ == "__main__":
    main()
