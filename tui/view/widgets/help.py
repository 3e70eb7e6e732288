"""The help screen, generated from the key bindings data (:data:`tui.view.keys.KEYS`)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.view.keys import Key, key_name, keys_for


def help_table(
    keys: tuple[Key, ...], red: float, yellow: float, legend: Text | None = None
) -> Table:
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False, expand=False)
    table.add_column("key", style="bold cyan", no_wrap=True)
    table.add_column("does")
    table.add_column("group", style="dim")
    groups = list(dict.fromkeys(k.group for k in keys))
    for g in groups:  # grouped, in the order the groups first appear
        for k in keys:
            if k.group == g:
                table.add_row(Text(k.display), Text(k.description), Text(k.group))
    table.add_row(
        Text(key_name("ctrl+p")),
        Text("Command palette (every action above, by name)"),
        Text("General"),
    )
    table.add_row(Text(""), Text(""), Text(""))
    if legend is None:
        legend = Text()
        legend.append("red", style="bold red")
        legend.append(f" ≥ {red:.0%} of step wall time · ")
        legend.append("yellow", style="yellow")
        legend.append(f" ≥ {yellow:.0%} · ")
        legend.append("green", style="green")
        legend.append(" below")
    table.add_row(Text("colours"), legend, Text(""))
    return table


class HelpScreen(ModalScreen[None]):
    """Every key of the current mode."""

    BINDINGS = [  # noqa: RUF012
        Binding("escape,q,question_mark,f1", "app.pop_screen", "Close help"),
    ]

    def __init__(
        self,
        mode: str,
        red: float,
        yellow: float,
        keys: tuple[Key, ...] | None = None,
        legend: Text | None = None,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.red = red
        self.yellow = yellow
        self.keys = keys_for(mode) if keys is None else keys  # another screen's keys
        self.legend = legend

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box") as box:
            box.border_title = f"stagewatch {self.mode} · keys"
            box.border_subtitle = "Esc to close"
            self.table = help_table(self.keys, self.red, self.yellow, self.legend)
            yield Static(self.table, id="help-table")
