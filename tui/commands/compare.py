"""``tui compare RUN_A RUN_B ... [--json | --text]``: regions side by side, vs the first run.

With ``--max-regression-pct P`` it is a CI gate: exit 1 when a run is slower than the
baseline (step time, or ``--region NAME``) by more than P percent.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from stagewatch.errors import UsageError
from tui.commands._common import (
    add_index,
    add_nest,
    add_window,
    apply_index,
    nest_policy,
    quiet_pipe,
    stdout_console,
)


def _pct(text: str) -> float:
    try:
        v = float(text.strip().rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a percentage like 5 or 5%, got {text!r}"
        ) from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"expected a percentage >= 0, got {text!r}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs",
        metavar="RUN",
        nargs="+",
        help="run folders (or rank<R>.jsonl files); the first is the baseline",
    )
    parser.add_argument(
        "--stat",
        choices=("avg", "p50"),
        default="avg",
        help="whole-run statistic per region: avg (default) or p50 (median, ignores a slow "
        "first step)",
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON")
    out.add_argument("--text", action="store_true", help="print a text table even on a terminal")
    parser.add_argument(
        "--max-regression-pct",
        type=_pct,
        default=None,
        metavar="PCT",
        help="CI gate: exit 1 when a run's step time (or --region) is more than PCT%% slower "
        "than the baseline's; prints one verdict line per run (on stderr with --json)",
    )
    parser.add_argument(
        "--region",
        metavar="NAME",
        default=None,
        help="with --max-regression-pct: gate on this region (full name, e.g. forward/vrt) "
        "instead of the step time",
    )
    add_window(parser)
    add_index(parser)
    add_nest(parser)


def run(args: argparse.Namespace) -> int:
    if len(args.runs) < 2:
        raise UsageError("give at least two runs to compare (the first is the baseline)")
    if args.region is not None and args.max_regression_pct is None:
        raise UsageError("--region only applies with --max-regression-pct")
    apply_index(args)
    from tui.report.compare import compare_paths, comparison_dict, comparison_text, regression_check

    c = compare_paths(args.runs, args.stat, args.window, nest_policy(args))
    gate = None
    if args.max_regression_pct is not None:
        gate = regression_check(
            c, args.max_regression_pct, args.region
        )  # UsageError for an unknown region
    gated = gate is not None
    with quiet_pipe():
        if args.json:
            d = comparison_dict(c)
            if gate is not None:
                d["gate"] = gate.as_dict()
            json.dump(d, sys.stdout, indent=2, allow_nan=False)
            sys.stdout.write("\n")
        elif sys.stdout.isatty() and not args.text and not gated:
            from tui.view.widgets.compare import CompareApp

            CompareApp(c).run()
        else:
            console = stdout_console()
            console.print(comparison_text(c), end="")
        sys.stdout.flush()
    if gate is None:
        return 0
    stream = sys.stderr if args.json else sys.stdout
    for line in gate.lines:
        print(line, file=stream)
    return 1 if gate.failed else 0
