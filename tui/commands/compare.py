"""``tui compare RUN_A RUN_B ... [--json | --text]``: regions side by side, vs the first run."""

from __future__ import annotations

import argparse
import json
import sys

from trainer.clikit import UsageError
from tui.commands._common import add_window


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", metavar="RUN", nargs="+",
                        help="run folders (or rank<R>.jsonl files); the first is the baseline")
    parser.add_argument("--stat", choices=("avg", "p50"), default="avg",
                        help="whole-run statistic per region: avg (default) or p50 (median, ignores a slow first step)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON")
    out.add_argument("--text", action="store_true", help="print a text table even on a terminal")
    add_window(parser)


def run(args: argparse.Namespace) -> int:
    if len(args.runs) < 2:
        raise UsageError("give at least two runs to compare (the first is the baseline)")
    from tui.compare import compare_paths, comparison_dict, comparison_text

    c = compare_paths(args.runs, args.stat, args.window)
    if args.json:
        json.dump(comparison_dict(c), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
        return 0
    tty = sys.stdout.isatty()
    if tty and not args.text:
        from tui.widgets.compare import CompareApp

        CompareApp(c).run()
        return 0
    from rich.console import Console

    console = Console(file=sys.stdout, highlight=False, soft_wrap=True, force_terminal=None if tty else False,
                      no_color=not tty or None, width=None if tty else 200)
    console.print(comparison_text(c), end="")
    return 0
