"""``tui replay RUN``: a finished (or still running) run played back on the monitor screen."""

from __future__ import annotations

import argparse

from tui.commands._common import (
    add_index,
    add_nest,
    add_thresholds,
    add_window,
    apply_index,
    nest_policy,
    thresholds,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", metavar="RUN", help="a run folder, a rank<R>.jsonl file or a timing*.log/.txt"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=10.0,
        metavar="STEPS_PER_S",
        help="steps shown per second (default 10; + and - double and halve it)",
    )
    parser.add_argument("--paused", action="store_true", help="start paused at the first step")
    add_thresholds(parser)
    add_window(parser)
    add_index(parser)
    add_nest(parser)


def run(args: argparse.Namespace) -> int:
    from stagewatch.errors import UsageError

    red, yellow = thresholds(args)
    apply_index(args)
    nest = nest_policy(args)
    if args.speed <= 0:
        raise UsageError("--speed must be > 0")
    from tui.source.check import check_run

    check_run(args.run)  # one-line error for a missing or empty run, from the first bytes only
    import sys

    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        raise UsageError(
            "the replay screen needs a terminal; without one use `tui summary RUN` (text or --json)"
        )
    from tui.source.replay import ReplaySource
    from tui.view.app import MonitorApp

    src = ReplaySource(
        args.run, speed=args.speed, window=args.window, playing=not args.paused, nest=nest
    )
    if args.paused:
        src.forward(1)
    MonitorApp(src, red=red, yellow=yellow).run()
    return 0
