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
from tui.report.summary import open_run, summary_dict, summary_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", metavar="RUN", help="a run folder, a rank<R>.jsonl file or a timing_*.log"
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
    add_nest(parser)
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        metavar="TF",
        help="the device's dense peak for the MFU (default: the known-GPU table, "
        "or STAGEWATCH_PEAK_TFLOPS)",
    )


def run(args: argparse.Namespace) -> int:
    red, yellow = thresholds(args)
    apply_index(args)
    peak = args.peak_tflops
    if peak is not None and not peak > 0:
        raise UsageError(f"--peak-tflops must be a positive number, got {peak}")
    snap = open_run(args.run, window=args.window, nest=nest_policy(args))
    window = args.span == "recent"
    with quiet_pipe():
        if args.json:
            json.dump(
                summary_dict(snap, red, yellow, sort=args.sort, window=window, peak_tflops=peak),
                sys.stdout,
                indent=2,
                allow_nan=False,
            )
            sys.stdout.write("\n")
        else:
            console = stdout_console()
            console.print(
                summary_text(snap, red, yellow, sort=args.sort, window=window, peak_tflops=peak),
                end="",
            )
        sys.stdout.flush()
    return 0
