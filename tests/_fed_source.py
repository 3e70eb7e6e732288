"""A monitor source fed by the test (no reader thread), which records what the app asks of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Fed:
    """Stands for ``tui watch``'s LiveSource: the test posts the snapshots itself."""

    mode = "watch"

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.selected: list[str] = []
        self.full_asked = 0  # want_full() calls (a key asked for the panels' figures)
        self.full_gap = 0.0  # set by the app to its panel gap

    def run(self, post: Any) -> None:
        pass

    def stop(self) -> None:
        pass

    def select(self, run_id: str) -> None:
        self.selected.append(run_id)

    def want_full(self) -> None:
        self.full_asked += 1
