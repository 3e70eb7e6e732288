"""``tui``: watch, replay and summarise stagewatch runs (never imports torch)."""

from __future__ import annotations

from stagewatch.cli import run_cli

COMMANDS: dict[str, tuple[str, str]] = {
    "watch": ("tui.commands.watch", "live monitor of every run under a log folder"),
    "replay": ("tui.commands.replay", "replay a finished (or running) run with pause/step/speed"),
    "summary": ("tui.commands.summary", "the stage tree as text or JSON, no screen needed"),
    "compare": ("tui.commands.compare", "regions of several runs side by side"),
    "export": ("tui.commands.export", "export a run as a Chrome/Perfetto trace or CSV"),
}


def main(argv: list[str] | None = None) -> int:
    from tui import __version__

    return run_cli(
        "tui", __doc__.splitlines()[0], COMMANDS, argv, version=f"tui (stagewatch) {__version__}"
    )
