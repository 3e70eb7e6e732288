"""``tui watch ROOT``: every run under a log folder, live."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from stagewatch.errors import UsageError
from stagewatch.records import DEFAULT_LOG_ROOT
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
        "root",
        metavar="ROOT",
        nargs="?",
        default=DEFAULT_LOG_ROOT,
        help=f"log folder holding run folders, or one run folder (default {DEFAULT_LOG_ROOT}); "
        "a folder holding log folders is searched one level down",
    )
    parser.add_argument(
        "--poll",
        action="store_true",
        help="poll the files only (no filesystem events; for network filesystems)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds between scans (default 1.0, or 0.25 with --poll)",
    )
    parser.add_argument(
        "--stale",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a running run whose files stop growing this long is shown as stale (default 60)",
    )
    add_thresholds(parser)
    add_window(parser)
    add_index(parser)
    add_nest(parser)


def resolve_root(root: str) -> str:
    """The folder to watch: ``root`` itself when it is a run folder, a log folder (run folders
    in it) or not there yet; the one log folder below it when ``root`` holds log folders
    rather than runs (``runs/`` holding ``logs/``). UsageError for a file, or for a folder
    holding several log folders (naming them)."""
    from stagewatch.runs import is_run_dir, run_folders
    from tui.fmt import clean

    p = Path(root)
    if p.is_file() or (p.exists() and not p.is_dir()):
        raise UsageError(
            f"{clean(root)} is a file: tui watch takes a log folder (or one run folder); "
            "for one file use `tui summary FILE` or `tui replay FILE`"
        )
    if not p.exists():
        if not p.absolute().parent.is_dir():
            raise UsageError(f"no such folder: {clean(root)}")
        return root  # a log folder that does not exist yet: the screen waits for the first run
    if not os.access(p, os.R_OK | os.X_OK):
        raise UsageError(f"cannot read folder {clean(root)}: permission denied")
    if is_run_dir(p):
        return root
    subs = run_folders(p)
    if not subs or any(is_run_dir(s) for s in subs):
        return root  # a log folder (possibly still empty)
    roots = [s for s in subs if any(is_run_dir(r) for r in run_folders(s))]
    if len(roots) == 1:
        print(
            f"tui watch: no runs in {clean(root)}; "
            f"watching the log folder below it: {clean(roots[0])}",
            file=sys.stderr,
        )
        return str(roots[0])
    if roots:
        names = ", ".join(clean(r) for r in roots[:6]) + (", ..." if len(roots) > 6 else "")
        raise UsageError(f"{clean(root)} holds log folders, not runs: watch one of {names}")
    return root


def run(args: argparse.Namespace) -> int:
    red, yellow = thresholds(args)
    apply_index(args)
    nest = nest_policy(args)
    if args.interval is not None and args.interval <= 0:
        raise UsageError("--interval must be > 0")
    root = resolve_root(args.root)
    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        raise UsageError(
            "the live monitor needs a terminal; without one use `tui summary RUN` (text or --json)"
        )
    from tui.source.live import LiveSource
    from tui.view.app import MonitorApp

    src = LiveSource(
        root, poll=args.poll, interval=args.interval, window=args.window, stale_after=args.stale
    )
    src.reader.nest = nest
    app = MonitorApp(src, red=red, yellow=yellow)
    app.run()
    if app.return_code:  # the screen itself crashed (Textual printed the traceback)
        return app.return_code
    if src.failed:  # the reader failed while watching: say it once more, exit non-zero
        from tui.fmt import clean

        print(f"tui watch: {clean(src.last_error or 'a run could not be read')}", file=sys.stderr)
        return 1
    return 0
