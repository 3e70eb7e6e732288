"""``trainer demo``: the timing core on a small synthetic, CPU-only workload.

Interim version: it runs a loop shaped like a training step (data, a forward pass of
staged modules with a loop over blocks, loss, backward, optimizer) doing real CPU work,
times it with the timing core, writes a run under the log root and prints the summary.
No torch needed. (A later version runs the tiny trainer with the monitor on it.)
"""

from __future__ import annotations

import argparse
import math
import random

from trainer.clikit import UsageError
from trainer.timing import TimingLogger, log_timing, set_global_timing_logger, timed
from trainer.timing.records import DEFAULT_LOG_ROOT

STAGES = ("stage1", "stage2", "stage3", "stage8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=60, help="steps to run (default 60)")
    parser.add_argument(
        "--log-dir", default=DEFAULT_LOG_ROOT, help=f"log root (default {DEFAULT_LOG_ROOT})"
    )
    parser.add_argument("--run-name", default="demo", help="name part of the run id")
    parser.add_argument(
        "--size", type=int, default=24, help="matrix size of the synthetic work (default 24)"
    )
    parser.add_argument("--no-console", action="store_true", help="no live panel/lines")
    parser.add_argument("--seed", type=int, default=0)


def _matmul(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    cols = list(zip(*b, strict=True))
    return [[math.fsum(x * y for x, y in zip(row, col, strict=True)) for col in cols] for row in a]


def _block(x: list[list[float]], w: list[list[float]]) -> list[list[float]]:
    y = _matmul(x, w)
    return [[math.tanh(v) for v in row] for row in y]


def run(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if not 4 <= args.size <= 256:
        raise UsageError(f"--size must be between 4 and 256, got {args.size}")
    rng = random.Random(args.seed)
    n = args.size

    def rand_matrix() -> list[list[float]]:
        return [[rng.uniform(-0.3, 0.3) for _ in range(n)] for _ in range(n)]

    weights = {s: rand_matrix() for s in STAGES}
    blocks = {s: (1 + 2 * i) for i, s in enumerate(STAGES)}  # stage8 is the heavy one

    log = TimingLogger(
        args.log_dir,
        enable_console=not args.no_console,
        enable_file=True,
        console_update_interval=10,
        file_flush_interval=10,
        run_name=args.run_name,
        total_steps=args.steps,
        samples_per_step=1,
        config={"demo": {"steps": args.steps, "size": n, "seed": args.seed}},
    )
    set_global_timing_logger(log)
    print(f"demo: writing run {log.run_id} to {log.run_dir}")
    status, error = "completed", None
    try:
        log.mark_step_start()
        for step in range(args.steps):
            with timed("data"):
                x = rand_matrix()
            with timed("forward"):
                h = x
                for stage in STAGES:
                    with timed(stage):
                        for _ in range(blocks[stage]):
                            with timed("block"):
                                h = _block(h, weights[stage])
                with timed("loss"):
                    loss = sum(v * v for row in h for v in row) / (n * n)
            with timed("backward"):
                for stage in reversed(STAGES):
                    h = _block(h, weights[stage])
            with timed("optimizer"):
                lr = 1e-3
                for w in weights.values():
                    w[0][0] -= lr * loss
            # a value measured elsewhere (e.g. by a framework) enters the same step
            log_timing("allreduce", 0.05 + 0.02 * rng.random())
            log.step(samples=1, epoch=step // 20, scalars={"loss": loss, "lr": lr})
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException as e:
        status, error = "failed", e
        raise
    finally:
        log.close(status, error)
        set_global_timing_logger(None)
    log.print_summary()
    print(f"demo: records in {log.run_dir}")
    return 0
