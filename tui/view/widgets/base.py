"""What every widget of the screen does to show text: replace it only when it changed."""

from __future__ import annotations

from rich.text import Text
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static

from tui.fmt import literal


def show_text(widget: Static, text: Text) -> None:
    """Replace a fixed-size Static's text, only when it changed (no relayout, no repaint)."""
    key = (text.plain, tuple(text.spans), str(text.style))
    if getattr(widget, "_sw_shown", None) != key:
        widget._sw_shown = key  # type: ignore[attr-defined]
        widget.update(text, layout=False)


def set_title(widget: Widget, title: str) -> None:
    """Set a border title (as Text: never markup, control characters escaped) when it changed."""
    if getattr(widget, "_sw_title", None) != title:
        widget._sw_title = title  # type: ignore[attr-defined]
        widget.border_title = literal(title)


class NeedChanged(Message):
    """A panel now needs another number of rows (the screen shares its height anew)."""


def note_need(widget: Widget, need: int) -> None:
    """Post :class:`NeedChanged` when ``widget``'s row need differs from the last one noted."""
    if getattr(widget, "_sw_need", None) != need:
        widget._sw_need = need  # type: ignore[attr-defined]
        widget.post_message(NeedChanged())
