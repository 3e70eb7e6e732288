"""The comparison screen: runs side by side (a :class:`tui.report.compare.Comparison`).

``CompareScreen`` can be pushed by any app (the monitor, or :class:`CompareApp`, which
``tui compare`` opens on a terminal). Rows are the step and the stage tree; for each run its
time and share, and for runs after the first the difference and ratio vs the first.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tui.fmt import fmt_bytes, fmt_ms, fmt_rate, literal, ok
from tui.model.snapshot import UNACCOUNTED
from tui.report.compare import Comparison, fmt_diff, fmt_ratio, fmt_share, step_label
from tui.view.keys import Key
from tui.view.widgets.help import HelpScreen

COMPARE = "compare"
# the comparison screen's keys, for its help (the table's own keys are listed, not bound)
COMPARE_KEYS: tuple[Key, ...] = (
    Key("escape,q", "close", "Close the comparison", "General", (COMPARE,)),
    Key("question_mark,f1", "help", "Help: every key", "General", (COMPARE,)),
    Key("up,down", "", "Move through the regions", "Table", (COMPARE,)),
    Key("pageup,pagedown", "", "A page up/down", "Table", (COMPARE,)),
    Key("home,end", "", "First/last row", "Table", (COMPARE,)),
    Key("left,right", "", "Scroll the columns (many runs)", "Table", (COMPARE,)),
)


def compare_legend() -> Text:
    """What the colours of the comparison mean."""
    t = Text()
    t.append("red", style="red")
    t.append(" > 5% slower than the baseline (A) · ")
    t.append("green", style="green")
    t.append(" > 5% faster")
    return t


def legend(c: Comparison) -> Text:
    t = Text()
    for i, r in enumerate(c.runs):
        if i:
            t.append("\n")
        t.append(r.label, style="bold")
        t.append(" ")
        t.append_text(literal(r.run_id))
        t.append(
            f"  {r.state} · {r.steps} steps · {r.step_word} {c.stat} {fmt_ms(r.step_ms)}",
            style="dim",
        )
        if ok(r.samples_per_s) and r.samples_per_s > 0:
            ranks = f" ({r.world_size} ranks)" if r.world_size > 1 else ""
            t.append(f" · {fmt_rate(r.samples_per_s)} samples/s{ranks}", style="dim")
        if r.mem_peak is not None:
            t.append(f" · peak {fmt_bytes(r.mem_peak)}", style="dim")
        if i == 0:
            t.append("  baseline", style="italic")
    for w in c.warnings:
        t.append("\n⚠ ", style="bold yellow")
        seg = literal(w)
        seg.stylize("yellow")
        t.append_text(seg)
    return t


class CompareScreen(Screen[None]):
    """Regions of several runs side by side."""

    CSS_PATH = str(Path(__file__).with_name("compare.tcss"))  # absolute: any app pushes it
    BINDINGS = [  # noqa: RUF012
        Binding("escape,q", "close", "Close"),
        Binding("question_mark,f1", "help", "Help"),
        Binding("f10", "app.quit", "Quit", show=False),  # htop's habit
    ]

    def __init__(self, comparison: Comparison) -> None:
        super().__init__()
        self.comparison = comparison

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(legend(self.comparison), id="compare-legend")
            yield DataTable(id="compare-table", zebra_stripes=True, cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        c = self.comparison
        table = self.query_one(DataTable)
        table.add_column(f"region ({c.stat})", key="name")
        base = c.runs[0].label if c.runs else "A"
        for i, r in enumerate(c.runs):
            table.add_column(f"{r.label} time", key=f"ms{i}")
            table.add_column(f"{r.label} share", key=f"share{i}")
            if i:
                table.add_column(f"Δ vs {base}", key=f"diff{i}")
                table.add_column(f"× vs {base}", key=f"ratio{i}")
        for row in (c.step, *c.regions):
            leaf = row.name if row.name == UNACCOUNTED else row.name.rsplit("/", 1)[-1]
            leaf = step_label(c) if row is c.step else leaf
            name = literal("  " * row.depth + leaf)
            if row is c.step:
                name.stylize("bold")
            cells: list[Text | str] = [name]
            for i, (m, s, d, q) in enumerate(
                zip(row.ms, row.share, row.diff, row.ratio, strict=True)
            ):
                cells += [Text(fmt_ms(m), justify="right"), Text(fmt_share(s), justify="right")]
                if i:
                    style = "red" if ok(q) and q > 1.05 else "green" if ok(q) and q < 0.95 else ""
                    cells += [
                        Text(fmt_diff(d), style=style, justify="right"),
                        Text(fmt_ratio(q), style=style, justify="right"),
                    ]
            table.add_row(*cells, key=row.name)
        table.focus()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(COMPARE, 0.0, 0.0, COMPARE_KEYS, compare_legend()))

    def action_close(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()
        else:
            self.app.exit(0)


class CompareApp(App[int]):
    """``tui compare`` on a terminal: just the comparison screen."""

    TITLE = "stagewatch compare"

    def __init__(self, comparison: Comparison) -> None:
        super().__init__()
        self.comparison = comparison

    def on_mount(self) -> None:
        self.push_screen(CompareScreen(self.comparison))
