"""The step-time sparkline."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from tui.fmt import fmt_ms
from tui.model.snapshot import RunSnapshot
from tui.view.widgets.base import show_text


class StepSpark(Vertical):
    """Recent step wall times (slowest rank per step)."""

    def compose(self) -> ComposeResult:
        yield Static(id="spark-label")
        yield Sparkline([], id="spark")

    def show(self, run: RunSnapshot | None) -> None:
        data = list(run.step_times) if run else []
        spark = self.query_one(Sparkline)
        if spark.data != data:
            spark.data = data
        label = self.query_one("#spark-label", Static)
        if data:
            show_text(
                label,
                Text(
                    f"step time, last {len(data)}: {fmt_ms(min(data))} – {fmt_ms(max(data))}",
                    style="dim",
                ),
            )
        else:
            show_text(label, Text("step time: no steps yet", style="dim"))
