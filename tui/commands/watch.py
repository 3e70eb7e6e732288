"""``tui watch ROOT``: every run under a log folder, live."""

from __future__ import annotations

import argparse
import os

from trainer.clikit import UsageError
from trainer.timing.records import DEFAULT_LOG_ROOT
from tui.commands._common import add_thresholds, add_window, thresholds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", metavar="ROOT", nargs="?", default=DEFAULT_LOG_ROOT,
                        help=f"log folder holding run folders, or one run folder (default {DEFAULT_LOG_ROOT})")
    parser.add_argument("--poll", action="store_true",
                        help="poll the files only (no filesystem events; for network filesystems)")
    parser.add_argument("--interval", type=float, default=None, metavar="SECONDS",
                        help="seconds between scans (default 1.0, or 0.25 with --poll)")
    parser.add_argument("--stale", type=float, default=60.0, metavar="SECONDS",
                        help="a running run whose files stop growing this long is shown as stale (default 60)")
    add_thresholds(parser)
    add_window(parser)


def run(args: argparse.Namespace) -> int:
    red, yellow = thresholds(args)
    parent = os.path.dirname(os.path.abspath(args.root))
    if not os.path.exists(args.root) and not os.path.isdir(parent):
        raise UsageError(f"no such folder: {args.root}")
    # a log folder that does not exist yet is fine: the screen waits for the first run
    if args.interval is not None and args.interval <= 0:
        raise UsageError("--interval must be > 0")
    from tui.app import MonitorApp
    from tui.live import LiveSource

    src = LiveSource(args.root, poll=args.poll, interval=args.interval, window=args.window, stale_after=args.stale)
    MonitorApp(src, red=red, yellow=yellow).run()
    return 0
