"""``tui export RUN --format chrome|csv [-o FILE]``: a Chrome/Perfetto trace or a per-step CSV."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from stagewatch import runs
from stagewatch.errors import UsageError
from tui.commands._common import add_nest, nest_policy, quiet_pipe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", metavar="RUN", help="a run folder, one rank<R>.jsonl file or a timing*.log/.txt"
    )
    parser.add_argument(
        "--format",
        choices=("chrome", "csv"),
        default="chrome",
        help="chrome: trace JSON for ui.perfetto.dev / chrome://tracing, one process "
        "per rank, regions as nested spans, captured profiler traces (traces/) merged on "
        "rank 0's clock (default); csv: one row per step and rank",
    )
    parser.add_argument(
        "--steps",
        metavar="FIRST:LAST",
        default=None,
        help="only these steps (inclusive; '100:200', '100:', ':50'); a long run's full "
        "trace can be too big for the trace viewer",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        default=None,
        help="output file (default: <run>/trace.json or <run>/steps.csv; '-' for stdout); "
        "never one of the run's own files",
    )
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")
    add_nest(parser)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def run_files(inputs: list[Path]) -> list[Path]:
    """The inputs and every other record or text-log file of their run folders (all are the
    run's data, whichever of them this export reads)."""
    out = list(inputs)
    for d in {p.parent for p in inputs}:
        try:
            out += runs.run_files(d)
        except OSError:
            pass
    return out


def check_output(out: Path, inputs: list[Path], force: bool) -> None:
    """UsageError unless ``out`` may be written: never an input (whatever the spelling: links,
    ``..``), and an existing file only with ``force``."""
    from tui.fmt import clean

    real = Path(os.path.realpath(out))
    for p in inputs:
        if real == Path(os.path.realpath(p)) or _same(out, p):
            raise UsageError(
                f"refusing to write {clean(out)}: it is one of the run's own files "
                "(its records would be lost); choose another -o"
            )
    if real.exists() and real.is_dir():
        raise UsageError(f"cannot write {clean(out)}: it is a folder")
    if (out.exists() or out.is_symlink()) and not force:
        raise UsageError(f"{clean(out)} exists: add --force to replace it, or choose another -o")
    if not real.parent.is_dir():
        raise UsageError(f"cannot write {clean(out)}: no such folder {clean(real.parent)}")


def run(args: argparse.Namespace) -> int:
    from tui.fmt import clean
    from tui.report.export import parse_steps, rank_files, write_chrome, write_csv

    nest = nest_policy(args)
    steps = None
    if args.steps:
        try:
            steps = parse_steps(args.steps)
        except ValueError:
            raise UsageError(
                f"--steps: expected FIRST:LAST (e.g. 100:200), got {args.steps!r}"
            ) from None
    files = rank_files(args.run)  # one-line error for a missing, empty or foreign run first
    run_path = Path(args.run)
    if args.output is None:
        folder = run_path if run_path.is_dir() else run_path.parent
        out_path: Path | None = folder / ("trace.json" if args.format == "chrome" else "steps.csv")
    else:
        out_path = None if args.output == "-" else Path(args.output)
    if out_path is not None:
        check_output(out_path, run_files([p for _, p in files]), args.force)
    write = write_chrome if args.format == "chrome" else write_csv
    if out_path is None:
        stats = None
        with quiet_pipe():
            stats = write(args.run, sys.stdout, steps, nest)
            sys.stdout.flush()
        if stats is None:  # the reader closed the pipe (`| head`): it has what it wanted
            return 0
    else:
        real = Path(os.path.realpath(out_path))  # through a link: written where it points
        tmp = real.with_name(f".{real.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "x", encoding="utf-8", newline="") as f:
                stats = write(args.run, f, steps, nest)
            if out_path.exists() and not args.force:  # appeared while we wrote
                raise UsageError(
                    f"{clean(out_path)} exists: add --force to replace it, or choose another -o"
                )
            os.replace(tmp, real)
        except OSError as e:
            raise UsageError(f"cannot write {clean(out_path)}: {e.strerror}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    where = clean(out_path) if out_path is not None else "stdout"
    what = f"{stats.events} events" if args.format == "chrome" else f"{stats.rows} rows"
    merged = f", {stats.traces} profiler trace(s)" if stats.traces else ""
    print(
        f"wrote {where}: {what} from {stats.ranks} rank(s), {stats.steps} steps{merged}",
        file=sys.stderr,
    )
    for why in stats.trace_errors:
        print(f"skipped a profiler trace: {clean(why)}", file=sys.stderr)
    if stats.malformed:
        print(
            f"skipped {stats.malformed} malformed line(s); first: {clean(stats.errors[0])}",
            file=sys.stderr,
        )
    return 0
