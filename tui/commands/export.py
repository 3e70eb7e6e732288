"""``tui export RUN --format chrome|csv [-o FILE]``: a Chrome/Perfetto trace or a per-step CSV."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trainer.clikit import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run folder or one rank<R>.jsonl file")
    parser.add_argument("--format", choices=("chrome", "csv"), default="chrome",
                        help="chrome: trace JSON for ui.perfetto.dev / chrome://tracing, one process "
                        "per rank, regions as nested spans (default); csv: one row per step and rank")
    parser.add_argument("--steps", metavar="FIRST:LAST", default=None,
                        help="only these steps (inclusive; '100:200', '100:', ':50'); a long run's full "
                        "trace can be too big for the trace viewer")
    parser.add_argument("-o", "--output", metavar="FILE", default=None,
                        help="output file (default: <run>/trace.json or <run>/steps.csv; '-' for stdout)")


def run(args: argparse.Namespace) -> int:
    from tui.export import parse_steps, rank_files, write_chrome, write_csv

    steps = None
    if args.steps:
        try:
            steps = parse_steps(args.steps)
        except ValueError:
            raise UsageError(f"--steps: expected FIRST:LAST (e.g. 100:200), got {args.steps!r}") from None
    rank_files(args.run)  # one-line error for a missing or empty run before creating a file
    run_path = Path(args.run)
    if args.output is None:
        folder = run_path if run_path.is_dir() else run_path.parent
        out_path: str | None = str(folder / ("trace.json" if args.format == "chrome" else "steps.csv"))
    else:
        out_path = None if args.output == "-" else args.output
    write = write_chrome if args.format == "chrome" else write_csv
    if out_path is None:
        try:
            stats = write(args.run, sys.stdout, steps)
            sys.stdout.flush()
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    else:
        tmp = f"{out_path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                stats = write(args.run, f, steps)
            os.replace(tmp, out_path)
        except OSError as e:
            raise UsageError(f"cannot write {out_path}: {e.strerror}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    where = out_path or "stdout"
    what = f"{stats.events} events" if args.format == "chrome" else f"{stats.steps} rows"
    print(f"wrote {where}: {what} from {stats.ranks} rank(s), {stats.steps} steps", file=sys.stderr)
    if stats.malformed:
        print(f"skipped {stats.malformed} malformed line(s); first: {stats.errors[0]}", file=sys.stderr)
    return 0
