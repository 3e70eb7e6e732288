"""The hot path's outputs, byte for byte, against an earlier checkout (issue 21).

Runs one deterministic workload (a fake clock; region sets that change, repeated calls,
decimal ties such as 0.125 and 2.675, a non-ASCII and a ``%`` name, scalars, memory, evals;
the inline and the background writer) with this tree and with ``--base``, each in a fresh
process, and compares every file written: the JSONL records (the ``run_start`` line's pid
aside) and the classic text log must be the same bytes. Exit 0 when they are. Usage::

    python benchmarks/hotpath_same_bytes.py --base /tmp/base
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SETS = [
    ["data", "forward", "forward/enc", "forward/enc/l1", "forward/dec", "backward", "opt"],
    ["data", "forward", "forward/enc", "backward"],
    ["eval/x", "data", "x%y", "ünï/code"],
    [],
]
SPECIAL = [0.125, 0.005, 0.015, 2.675, 1.005, 0.00005, 0.12504999, 12345.6785, 1e-7, 0.0]


def workload(out: str, steps: int) -> None:
    """The run, in this process (``PYTHONPATH`` picks the tree)."""
    import random
    import time

    from stagewatch.timing import TimingLogger, regions

    rnd = random.Random(42)
    clock = [1000.0]
    regions._perf = lambda: clock[0]  # type: ignore[assignment]
    unix = [1765000000.0]

    def fake_time() -> float:
        unix[0] += 0.0123456789
        return unix[0]

    time.time = fake_time  # type: ignore[assignment]
    for mode in ("inline", "background"):
        lg = TimingLogger(
            out,
            enable_console=False,
            run_id=mode,
            collect_memory=False,
            handle_sigterm=False,
            background_writer=mode == "background",
            file_flush_interval=7,
            capture=False,
        )
        for i in range(steps):
            names = SETS[(i // 13) % len(SETS)] if i % 17 else SETS[i % 3]
            for n in names:
                for _ in range(1 + (i % 5 == 0 and n == "forward/enc")):
                    if rnd.random() < 0.3:
                        v = rnd.choice(SPECIAL)
                    else:
                        v = rnd.choice(
                            [rnd.uniform(0, 5), rnd.uniform(0, 500), rnd.expovariate(0.01)]
                        )
                    lg.log(n, v)
            clock[0] += rnd.choice([0.01, 0.1, 0.5, 1.3, 0.0]) + rnd.random() * 0.05
            lg.step(
                samples=rnd.choice([None, 4]),
                scalars={"loss": rnd.random(), "lr": 1e-4} if i % 3 else None,
                memory={"rss": rnd.randint(0, 10**10)} if i % 4 == 0 else None,
            )
            if i % 50 == 49:
                lg.log_eval(i + 1, {"acc": rnd.random()})
        lg.close()


def _run(tree: Path, out: Path, steps: int) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STAGEWATCH_TIMING")}
    env["PYTHONPATH"] = str(tree)
    args = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(out),
        "--steps",
        str(steps),
    ]
    subprocess.run(args, cwd=tree, env=env, check=True)


def _comparable(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix != ".jsonl":
        return data
    first, _, rest = data.partition(b"\n")
    head = json.loads(first)
    head.pop("pid", None)  # a fresh process each
    return json.dumps(head, sort_keys=True).encode() + b"\n" + rest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", help="the earlier checkout")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        workload(args.child, args.steps)
        return 0
    if not args.base:
        p.error("--base is required")
    with tempfile.TemporaryDirectory(prefix="same_bytes_") as tmp:
        a, b = Path(tmp) / "base", Path(tmp) / "this"
        _run(Path(args.base).resolve(), a, args.steps)
        _run(ROOT, b, args.steps)
        files = sorted(f.relative_to(a) for f in a.rglob("*") if f.is_file())
        mine = sorted(f.relative_to(b) for f in b.rglob("*") if f.is_file())
        bad = [str(f) for f in files if f not in mine or _comparable(a / f) != _comparable(b / f)]
        bad += [str(f) for f in mine if f not in files]
        for f in files:
            size = (a / f).stat().st_size
            print(f"{'DIFFERS' if str(f) in bad else 'same   '} {f} ({size:,} bytes)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
