"""What every widget of the screen does to show text: replace it only when it changed."""

from __future__ import annotations

from rich.text import Text
from textual.content import Content
from textual.geometry import Region
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
    """Set a border title (as Text: never markup, control characters escaped) when it changed.

    Only the top border row is repainted: ``border_title``'s setter repaints the whole widget
    (every row of a boxed panel through Textual's styles, and of a box holding the tree, the
    tree's area), while the titles that change on every panel redraw (the span's step count)
    change that row alone."""
    if getattr(widget, "_sw_title", None) == title:
        return
    widget._sw_title = title  # type: ignore[attr-defined]
    text = literal(title)
    width = widget.outer_size.width
    if not widget.is_mounted or not width or not hasattr(widget, "_border_title"):
        widget.border_title = text  # the public path (also before the first layout)
        return
    # what the setter stores (textual.widget._BorderTitle.__set__), without its full repaint
    widget._border_title = widget.render_str(Content.from_rich_text(text)).expand_tabs(4).split()[0]
    offset = widget.content_offset  # refresh() regions are relative to the content area
    widget.refresh(Region(-offset.x, -offset.y, width, 1))


class NeedChanged(Message):
    """A panel now needs another number of rows (the screen shares its height anew)."""


def note_need(widget: Widget, need: int) -> None:
    """Post :class:`NeedChanged` when ``widget``'s row need differs from the last one noted."""
    if getattr(widget, "_sw_need", None) != need:
        widget._sw_need = need  # type: ignore[attr-defined]
        widget.post_message(NeedChanged())
