"""Options shared by the monitor's sub-commands."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from stagewatch.errors import UsageError
from tui.model.aggregate import DEFAULT_WINDOW

if TYPE_CHECKING:
    from rich.console import Console

    from tui.source.nesting import NestPolicy


def percent(text: str) -> float:
    """A share given the way the monitor prints it, as a percentage: ``40`` or ``40%`` -> 0.40.

    A bare number of at most 1 (the old fraction form, ``0.4``) is refused rather than
    guessed: ``0.4`` could mean 0.4% or 40%.
    """
    s = text.strip()
    pct = s.endswith("%")
    try:
        v = float(s[:-1] if pct else s)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a percentage like 40 or 40%, got {text!r}"
        ) from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a percentage like 40 or 40%, got {text!r}")
    if not pct and 0 < v <= 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is ambiguous: give a percentage as printed, e.g. {v * 100:g} "
            f"(or {v * 100:g}%) for {v * 100:g}% of the step, or {text}% for {v:g}%"
        )
    if not 0 < v <= 100:
        raise argparse.ArgumentTypeError(f"a percentage must be in (0, 100], got {text!r}")
    return v / 100.0


def add_thresholds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--red",
        type=percent,
        default=0.40,
        metavar="PCT",
        help="share of step wall time from which a region is red, in percent as printed "
        "(40 or 40%%; default 40)",
    )
    parser.add_argument(
        "--yellow",
        type=percent,
        default=0.10,
        metavar="PCT",
        help="share from which a region is yellow, in percent (default 10)",
    )


def add_window(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        metavar="STEPS",
        help=f"steps in the recent window statistics (default {DEFAULT_WINDOW})",
    )


def add_span(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--span",
        choices=("whole", "recent"),
        default="whole",
        help="which steps the table, classes and advice are of: the whole run (default) or "
        "the last --window steps; the output names it",
    )


def thresholds(args: argparse.Namespace) -> tuple[float, float]:
    red, yellow = args.red, args.yellow
    if not (0 < yellow <= red <= 1):
        raise UsageError(f"need --yellow ({yellow * 100:g}%) <= --red ({red * 100:g}%)")
    if getattr(args, "window", DEFAULT_WINDOW) < 2:
        raise UsageError("--window must be at least 2 steps")
    return red, yellow


@contextlib.contextmanager
def quiet_pipe() -> Iterator[None]:
    """A reader that closes the pipe early (``| head``) ends the output quietly, exit 0."""
    try:
        yield
    except BrokenPipeError:
        # stdout is gone: point it at /dev/null so the interpreter's final flush is silent
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def add_index(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-index",
        action="store_true",
        help="neither use nor write the run index (<run>/.stagewatch-index): "
        "read every file in full",
    )


def apply_index(args: argparse.Namespace) -> None:
    from tui.source import index

    index.set_enabled(not getattr(args, "no_index", False))


def stdout_console() -> Console:
    """A Rich console on stdout for a command's text: colours on a terminal, plain and 200
    columns wide when piped (scripts, CI logs)."""
    from rich.console import Console

    tty = sys.stdout.isatty()
    return Console(
        file=sys.stdout,
        highlight=False,
        soft_wrap=True,
        force_terminal=None if tty else False,
        no_color=not tty or None,
        width=None if tty else 200,
    )


def add_nest(parser: argparse.ArgumentParser) -> None:
    """``--nest`` / ``--no-nest``: how a classic text log's top-level names nest."""
    parser.add_argument(
        "--nest",
        action="append",
        metavar="PARENT=CHILD[,CHILD...]",
        help="classic text logs: nest these top-level names under PARENT instead of "
        "inferring it from the numbers (repeatable; e.g. 'Forward total=VRT,Spike encoder')",
    )
    parser.add_argument(
        "--no-nest",
        action="store_true",
        help="classic text logs: read top-level names as written (no nesting inferred)",
    )


def nest_policy(args: argparse.Namespace) -> NestPolicy:
    """The text-log nesting the options ask for (UsageError, exit 2, for a bad value)."""
    from tui.source.nesting import NestPolicy

    try:
        return NestPolicy.from_args(getattr(args, "nest", None), getattr(args, "no_nest", False))
    except ValueError as e:
        raise UsageError(str(e)) from None
