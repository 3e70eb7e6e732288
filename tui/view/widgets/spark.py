"""The step-time sparkline."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from tui.fmt import fmt_ms
from tui.model.nesting import timed_only
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
        what = "timed total" if run is not None and timed_only(run.files) else "step time"
        if data:
            show_text(
                label,
                Text(
                    f"{what}, last {len(data)}: {fmt_ms(min(data))} – {fmt_ms(max(data))}",
                    style="dim",
                ),
            )
        else:
            show_text(label, Text(f"{what}: no steps yet", style="dim"))
