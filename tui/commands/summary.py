"""``tui summary RUN [--json]``: the stage tree with classes and statistics, no screen."""

from __future__ import annotations

import argparse
import json
import sys

from stagewatch.errors import UsageError
from tui.commands._common import (
    add_index,
    add_nest,
    add_span,
    add_thresholds,
    add_window,
    apply_index,
    nest_policy,
    quiet_pipe,
    stdout_console,
    thresholds,
)
from tui.fmt import clean
from tui.report.summary import open_run, summary_dict, summary_text
from tui.source.check import newest_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run",
        metavar="RUN",
        help="a run folder, a rank<R>.jsonl or a timing*.log/.txt; a log folder: its newest run",
    )
    parser.add_argument(
        "--json", action="store_true", help="print JSON (schema in docs/monitor.md)"
    )
    parser.add_argument(
        "--sort",
        choices=("time", "name", "run"),
        default="time",
        help="order of sibling regions: time (share of the step, largest first; default), "
        "name, or run (the order they first ran in)",
    )
    add_span(parser)
    add_thresholds(parser)
    add_window(parser)
    add_index(parser)
    _add_limits(parser)
    add_nest(parser)
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        metavar="TF",
        help="the device's dense peak for the MFU (default: the known-GPU table, "
        "or STAGEWATCH_PEAK_TFLOPS)",
    )


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return v


def _add_limits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--depth",
        type=_positive,
        default=None,
        metavar="N",
        help="only regions at most N levels deep (1: top level only); TFLOP/s rows too",
    )
    parser.add_argument(
        "--top",
        type=_positive,
        default=None,
        metavar="N",
        help="only the N regions with the largest share (and their parents); TFLOP/s rows too",
    )


def _pick_run(path: str) -> str:
    """``path``, or the newest run of a log folder (named on stderr, as `tui watch` would
    show it first)."""
    run = newest_run(path)
    if run is None:
        return path
    print(
        f"tui summary: {clean(path)} is a log folder; its newest run: {clean(run)}", file=sys.stderr
    )
    return str(run)


def run(args: argparse.Namespace) -> int:
    red, yellow = thresholds(args)
    apply_index(args)
    peak = args.peak_tflops
    if peak is not None and not peak > 0:
        raise UsageError(f"--peak-tflops must be a positive number, got {peak}")
    snap = open_run(_pick_run(args.run), window=args.window, nest=nest_policy(args))
    window = args.span == "recent"
    kw = {"sort": args.sort, "window": window, "peak_tflops": peak}
    kw |= {"depth": args.depth, "top": args.top}
    with quiet_pipe():
        if args.json:
            json.dump(summary_dict(snap, red, yellow, **kw), sys.stdout, indent=2, allow_nan=False)
            sys.stdout.write("\n")
        else:
            console = stdout_console()
            console.print(summary_text(snap, red, yellow, **kw), end="")
        sys.stdout.flush()
    return 0
