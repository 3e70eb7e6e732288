"""What inferring a classic text log's nesting costs (issue 20, item 1).

A generated log in the original logger's format (the issue's shape: forward total, VRT with
8 stages nested by the log, spike encoder and attention at top level), read whole by
``RunSource.load`` with the nesting inferred and with ``--no-nest``, interleaved, best of N
CPU seconds each. Prints one markdown table; paste it into docs/benchmarks.md.

Usage: python benchmarks/bench_text_nesting.py [--steps 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tui.source.nesting import NestPolicy
from tui.source.reader import RunSource
from tui.testing import text_log_block

STAGES = [(1, 90), (2, 269), (3, 95), (4, 100), (5, 90), (6, 80), (7, 137), (8, 965)]


def write_log(path: Path, steps: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for s in range(1, steps + 1):
            stages = [(f"Stage{i}", v * rng.uniform(0.97, 1.03)) for i, v in STAGES]
            vrt = sum(v for _, v in stages) + rng.uniform(40, 60)
            enc, sa = 200 * rng.uniform(0.95, 1.05), 150 * rng.uniform(0.95, 1.05)
            fwd = vrt + enc + sa + rng.uniform(24, 44)
            regions = [
                ("Forward total", fwd, []),
                ("VRT", vrt, stages),
                ("Spike encoder", enc, []),
                ("Spike self-attention", sa, []),
            ]
            f.write(text_log_block(s, regions, fwd + vrt + enc + sa))


def cpu_of_load(path: Path, policy: NestPolicy) -> tuple[float, int]:
    t0 = time.process_time()
    snap = RunSource(path, use_index=False, nest=policy).load().snapshot()
    return time.process_time() - t0, snap.step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "timing_rank0.log"
        write_log(path, a.steps)
        size = os.path.getsize(path)
        best = {"inferred": float("inf"), "off": float("inf")}
        for _ in range(a.repeats):  # interleaved: a busy spell hits both
            for name, mode in (("inferred", "auto"), ("off", "off")):
                cpu, steps = cpu_of_load(path, NestPolicy(mode))
                assert steps == a.steps, (name, steps)
                best[name] = min(best[name], cpu)
    print(f"{a.steps} steps, {size / 2**20:.1f} MiB, best of {a.repeats} (CPU s of a whole read)")
    print("| nesting | CPU s | µs per step |")
    print("|---|---|---|")
    for name, cpu in best.items():
        print(f"| {name} | {cpu:.2f} | {cpu / a.steps * 1e6:.0f} |")
    print(f"ratio inferred / off: {best['inferred'] / best['off']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
