"""The reader of ``tui watch`` at 64 ranks, scripted (no Textual, no wall-clock pacing): where
its CPU goes, phase by phase. Used for the ``scale`` section of docs/benchmarks.md.

64 rank files (40 regions) are appended in step; 8 times a simulated second the reader
ticks and makes a light snapshot, every 8th a full one (as ``LiveSource`` posts them). It
prints the thread CPU of each phase as a share of one core over the simulated seconds.
``--prof``: cProfile of the whole loop. Run it with ``PYTHONPATH`` set to another checkout
to compare (interleave the two; the machine's load moves every figure)::

    python benchmarks/profile_scale.py --rate 10 [--prof]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())
sys.path.insert(0, str(Path(os.getcwd()) / "benchmarks"))

from bench_tui import start_line

from stagewatch.records import encode
from tui.source import index
from tui.source.live import LiveSource
from tui.testing import step_records

RANKS = 64
TICKS_PER_S = 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=10.0, help="steps a second per rank")
    ap.add_argument("--seconds", type=int, default=10, help="simulated seconds")
    ap.add_argument("--prof", action="store_true", help="cProfile of the loop")
    args = ap.parse_args()
    index.set_enabled(False)
    root = Path(tempfile.mkdtemp(prefix="sw-scale-"))
    run = root / "20261126-120000-scale-0001"
    run.mkdir()
    for r in range(RANKS):
        (run / f"rank{r}.jsonl").write_text(
            start_line(run.name, rank=r, world_size=RANKS, total_steps=10**6)
        )
    n = int(args.rate * args.seconds) + 50
    gens = [list(step_records(n, rank=r, n_regions=40)) for r in range(RANKS)]
    files = [open(run / f"rank{r}.jsonl", "a") for r in range(RANKS)]  # noqa: SIM115

    def write(i: int) -> None:
        for f, g in zip(files, gens, strict=True):
            f.write(encode(g[i]))
            f.flush()

    src = LiveSource(root, poll=True)
    for i in range(30):  # warm: 30 steps read and shown
        write(i)
    src.reader.tick()
    src.build(full=True)
    prof = cProfile.Profile() if args.prof else None
    spent = {"tick": 0.0, "light": 0.0, "full": 0.0}
    written = 30.0
    if prof:
        prof.enable()
    for t in range(TICKS_PER_S * args.seconds):
        upto = written + args.rate / TICKS_PER_S
        for i in range(int(written), int(upto)):
            write(i)
        written = upto
        full = t % TICKS_PER_S == TICKS_PER_S - 1
        a = time.thread_time()
        src.reader.tick()
        b = time.thread_time()
        src.build(full=full)
        c = time.thread_time()
        spent["tick"] += b - a
        spent["full" if full else "light"] += c - b
    if prof:
        prof.disable()
    for f in files:
        f.close()
    total = sum(spent.values())
    parts = ", ".join(f"{k} {v / args.seconds * 100:.1f}%" for k, v in spent.items())
    print(
        f"{RANKS} ranks x {args.rate:g} steps/s: reader {total / args.seconds * 100:.1f}% "
        f"of a core ({parts})"
    )
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
