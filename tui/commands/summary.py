"""``tui summary RUN [--json]``: the stage tree with classes and statistics, no screen."""

from __future__ import annotations

import argparse
import json
import sys

from tui.commands._common import add_thresholds, add_window, thresholds
from tui.summary import open_run, summary_dict, summary_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run folder, a rank<R>.jsonl file or a timing_*.log")
    parser.add_argument("--json", action="store_true", help="print JSON (schema in docs/monitor.md)")
    add_thresholds(parser)
    add_window(parser)


def run(args: argparse.Namespace) -> int:
    red, yellow = thresholds(args)
    snap = open_run(args.run, window=args.window)
    if args.json:
        json.dump(summary_dict(snap, red, yellow), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console

    tty = sys.stdout.isatty()
    console = Console(file=sys.stdout, highlight=False, soft_wrap=True, force_terminal=None if tty else False,
                      no_color=not tty or None, width=None if tty else 200)
    console.print(summary_text(snap, red, yellow), end="")
    return 0
