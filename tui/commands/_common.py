"""Options shared by the monitor's sub-commands."""

from __future__ import annotations

import argparse

from trainer.clikit import UsageError
from tui.aggregate import DEFAULT_WINDOW


def _share(text: str) -> float:
    try:
        v = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    return v / 100.0 if v > 1 or text.endswith("%") else v


def add_thresholds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--red", type=_share, default=0.40, metavar="SHARE",
                        help="share of step wall time from which a region is red (0.40, or 40%%; default 0.40)")
    parser.add_argument("--yellow", type=_share, default=0.10, metavar="SHARE",
                        help="share from which a region is yellow (default 0.10)")


def add_window(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, metavar="STEPS",
                        help=f"steps in the recent window statistics (default {DEFAULT_WINDOW})")


def thresholds(args: argparse.Namespace) -> tuple[float, float]:
    red, yellow = args.red, args.yellow
    if not (0 < yellow <= red <= 1):
        raise UsageError(f"need 0 < --yellow ({yellow:g}) <= --red ({red:g}) <= 1")
    if getattr(args, "window", DEFAULT_WINDOW) < 2:
        raise UsageError("--window must be at least 2 steps")
    return red, yellow
