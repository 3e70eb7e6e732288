"""The run list: every run under the root, newest first, with its state."""

from __future__ import annotations

import re
import time

from rich.text import Text
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from tui.fmt import STATE_ICON, STATE_STYLE, literal, ok
from tui.model.snapshot import RunItem

_RUN_ID = re.compile(r"^(\d{8})-(\d{6})-(.+)-[0-9a-f]{4}$")


def run_label(item: RunItem) -> tuple[str, str]:
    """(name, start "MM-DD HH:MM") of a run: the name without the id's time and suffix, the
    start from its ``run_start`` record in local time (else the id's UTC time), so runs of
    one name are told apart by when they started."""
    m = _RUN_ID.match(item.run_id)
    name = m.group(3) if m else item.run_id
    if item.started is not None and ok(item.started):
        try:
            return name, time.strftime("%m-%d %H:%M", time.localtime(item.started))
        except (OverflowError, OSError, ValueError):
            pass
    if m:
        d, h = m.group(1), m.group(2)
        return name, f"{d[4:6]}-{d[6:8]} {h[:2]}:{h[2:4]}Z"
    return name, "—"


class RunList(OptionList):
    """Runs newest first with their state; pick with keys or the mouse."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.ids: list[str] = []
        self._shown: object = None

    @staticmethod
    def prompt(item: RunItem, width: int = 40) -> Text:
        """Two lines cut to ``width`` cells: the run's name, then its start date/time and step."""
        name, when = run_label(item)
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"{STATE_ICON.get(item.state, '?')} ", style=STATE_STYLE.get(item.state, ""))
        first = literal(name)
        first.truncate(max(4, width - 2), overflow="ellipsis")
        t.append_text(first)
        of = f"{item.step}" + (f"/{item.total_steps}" if item.total_steps else "")
        tries = (
            f"  {when}  {of}",
            f"{when}  {of}",
            f"  {when}  {item.step}",
            f"{when} {item.step}",
        )
        second = next((x for x in tries if len(x) <= width), tries[-1])
        t.append("\n" + second[:width], style="dim")
        return t

    def on_resize(self) -> None:
        if isinstance(self._shown, tuple):
            self.show(*self._shown[:2])  # lines are cut to the width: cut them again

    def show(self, runs: tuple[RunItem, ...], selected: str | None) -> None:
        # the options' own padding (1 cell each side) comes off the content width
        width = max(8, self.content_size.width - 2) if self.content_size.width else 30
        if (runs, selected, width) == self._shown:
            return
        self._shown = (runs, selected, width)
        ids = [r.run_id for r in runs]
        if ids != self.ids:
            self.clear_options()
            self.add_options(
                [Option(self.prompt(r, width), id=f"run-{i}") for i, r in enumerate(runs)]
            )
            self.ids = ids
        else:
            for i, r in enumerate(runs):
                self.replace_option_prompt_at_index(i, self.prompt(r, width))
        if selected in ids and self.highlighted != ids.index(selected):
            self.highlighted = ids.index(selected)
