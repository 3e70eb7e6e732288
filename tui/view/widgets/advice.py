"""The advice box: as many advice lines as fit, then how many more there are."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import Static

from tui.fmt import literal
from tui.view.widgets.base import note_need, show_text


class AdviceBox(Static):
    """What to change: the snapshot's advice lines (judged by the source), as many as fit,
    then a line saying how many more there are (``tui summary`` lists them all)."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.lines: list[str] = []
        self.hidden = 0

    def show(self, lines: list[str]) -> None:
        self.lines = list(lines)
        self._fit()
        note_need(self, self.need())

    def on_resize(self) -> None:
        self._fit()
        note_need(self, self.need())

    def need(self) -> int:
        """Rows (borders included) to show every advice line at the current width."""
        if not self.lines:
            return 3
        width = self.content_size.width
        if width <= 2:
            return 2 + len(self.lines)
        return 2 + sum(len(w) for w in self._wrapped(width))

    def _wrapped(self, width: int) -> list[Any]:
        """Each advice item wrapped to ``width`` (kept while the lines and width stay: the
        box and the screen's height sharing both ask)."""
        key = (tuple(self.lines), width)
        if getattr(self, "_wrap_key", None) != key:
            items = [Text.assemble("• ", literal(x)) for x in self.lines]
            self._wrap_key = key
            self._wrap = [item.wrap(self.app.console, width) for item in items]
        return self._wrap

    def _fit(self) -> None:
        lines = self.lines
        if not lines:
            self.hidden = 0
            show_text(self, Text("no advice yet", style="dim italic"))
            return
        width, height = self.content_size.width, self.content_size.height
        items = [Text.assemble("• ", literal(x)) for x in lines]
        if width <= 2 or height <= 0:  # not laid out yet
            self.hidden = 0
            show_text(self, Text("\n").join(items))
            return
        wrapped = self._wrapped(width)
        keep, used = len(items), 0
        if sum(len(w) for w in wrapped) > height:
            keep = 0
            for w in wrapped:
                if used + len(w) > height - 1:
                    break
                used += len(w)
                keep += 1
        rows: list[Text] = [line for w in wrapped[:keep] for line in w]
        if keep == 0:  # even the first item is too long: its start, cut with "…"
            room = height - 1 if len(items) > 1 else height
            first = list(wrapped[0])[: max(1, room)]
            first[-1] = first[-1].copy()
            first[-1].truncate(max(1, width - 1))
            first[-1].append("…")
            rows, keep = first, 1
        self.hidden = len(items) - keep
        if self.hidden:
            rows.append(Text(f"… {self.hidden} more (see tui summary)", style="dim italic"))
        show_text(self, Text("\n").join(rows))
