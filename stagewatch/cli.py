"""Shared sub-command dispatch for the ``trainer`` and ``tui`` CLIs (torch-free).

A sub-command is a module with ``add_arguments(parser)`` and ``run(args) -> int``; it is
imported only when chosen, so ``--help`` and the monitor start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from stagewatch.errors import UsageError

__all__ = ["UsageError", "printable", "run_cli"]


def printable(s: object) -> str:
    """``s`` with every non-printable character (ESC, BEL, CR, ...) written as an escape, so
    an error naming a hostile file or path cannot drive the terminal (the monitor's ``clean``
    does the same)."""
    s = str(s)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


def run_cli(
    prog: str,
    description: str,
    commands: dict[str, tuple[str, str]],
    argv: list[str] | None,
    version: str | None = None,
    install_hint: str = "",
) -> int:
    """Parse ``argv``, import the chosen sub-command's module and run it. ``version``: the
    text ``--version`` prints; ``install_hint``: how to get what a command needs when it
    imports a package that is not installed (e.g. an extra)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=prog, description=description)
    if version is not None:
        parser.add_argument("--version", action="version", version=version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs = {name: sub.add_parser(name, help=h, description=h) for name, (_, h) in commands.items()}
    name = next((a for a in argv if not a.startswith("-")), None)
    module = None
    if name in commands:
        try:
            module = importlib.import_module(commands[name][0])
        except ModuleNotFoundError as e:
            if e.name and e.name == commands[name][0]:
                print(f"{prog}: command {name!r} is not available in this build", file=sys.stderr)
                return 2
            if not _missing(prog, name, e, install_hint):
                raise
            return 2
        module.add_arguments(subs[name])
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(module.run(args) or 0)
    except UsageError as e:
        print(f"{prog} {name}: error: {printable(e)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # a command importing what it needs when it runs
        if not _missing(prog, name, e, install_hint):
            raise
        return 2
    except KeyboardInterrupt:
        return 130


def _missing(prog: str, command: str, e: ModuleNotFoundError, hint: str) -> bool:
    """Say which package a command needs and how to install it (True when said): for a
    package that is not ours, when the CLI has a hint."""
    top = (e.name or "").partition(".")[0]
    if not hint or not top or top in ("stagewatch", "trainer", "tui"):
        return False
    print(f"{prog} {command}: needs {top}, which is not installed; {hint}", file=sys.stderr)
    return True
