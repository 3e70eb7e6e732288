"""Header, run list, per-rank view, step-time sparkline, advice and file status widgets.

Each takes a snapshot and renders it; none reads files or computes statistics.
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import OptionList, Sparkline, Static
from textual.widgets.option_list import Option

from tui.fmt import (
    CLASS_STYLE,
    STATE_ICON,
    STATE_STYLE,
    class_of,
    fmt_bytes,
    fmt_duration,
    fmt_ms,
    fmt_pct,
    fmt_rate,
    literal,
    ok,
)
from tui.snapshot import UNACCOUNTED, RunItem, RunSnapshot, WorldSnapshot


def show_text(widget: Static, text: Text) -> None:
    """Replace a fixed-size Static's text, only when it changed (no relayout, no repaint)."""
    key = (text.plain, tuple(text.spans), str(text.style))
    if getattr(widget, "_sw_shown", None) != key:
        widget._sw_shown = key  # type: ignore[attr-defined]
        widget.update(text, layout=False)


def set_title(widget: Widget, title: str) -> None:
    """Set a border title (as Text: never markup) only when it changed."""
    if getattr(widget, "_sw_title", None) != title:
        widget._sw_title = title  # type: ignore[attr-defined]
        widget.border_title = Text(title)


def header_text(
    run: RunSnapshot | None, *, window: bool, paused: bool, behind_step: int | None, root: str, age: float = 0.0
) -> Text:
    """The header lines (cut, never wrapped: a fixed height keeps the layout still)."""
    t = Text(no_wrap=True, overflow="ellipsis")
    if run is None:
        t.append("stagewatch", style="bold")
        t.append("  waiting for runs under ")
        t.append_text(literal(root))
        return t
    t.append_text(literal(run.run_id))
    t.append("  ")
    t.append(f"{STATE_ICON.get(run.state, '')} {run.state}", style=STATE_STYLE.get(run.state, ""))
    t.append("  step ")
    t.append(f"{run.step}", style="bold")
    if run.total_steps:
        t.append(f"/{run.total_steps} ({run.step / run.total_steps:.0%})")
    sps = run.samples_per_s_window if window else run.samples_per_s
    if ok(sps) and sps > 0:
        t.append(f"  {fmt_rate(sps)} samples/s")
    elif ok(run.steps_per_s_window):
        t.append(f"  {fmt_rate(run.steps_per_s_window)} steps/s")
    t.append(f"  ETA {fmt_duration(run.eta_s)}" if run.eta_s is not None else "  ETA —")
    if run.mem_peak is not None:
        t.append(f"  peak mem {fmt_bytes(run.mem_peak)}")
        if run.mem_total:
            t.append(f" of {fmt_bytes(run.mem_total)}")
    t.append(f"  ranks {len(run.ranks_seen)}/{run.world_size}")
    if paused:
        t.append("  ⏸ PAUSED", style="bold reverse yellow")
        if behind_step is not None and behind_step != run.step:
            t.append(f" (read to step {behind_step})", style="yellow")
    t.append("\n")
    w = run.wall_window if window else run.wall
    t.append(f"step {fmt_ms(w.avg)} avg", style="bold")
    t.append(f" · p95 {fmt_ms(w.p95)} · last {fmt_ms(w.last)}")
    t.append(f" · {'window ' + str(run.window_size) + ' steps' if window else 'whole run'}", style="cyan")
    loss = dict(run.scalars).get("loss")
    if loss is not None:
        t.append(f" · loss {loss:.4g}")
        if ok(run.loss_window):
            t.append(f" (avg {run.loss_window:.4g})")
    if run.evals:
        t.append(" · eval")
        for k, v in run.evals[:3]:
            t.append(" ")
            t.append_text(literal(k))
            t.append(f" {v:.4g}")
        if run.eval_step is not None:
            t.append(f" @{run.eval_step}")
    if run.straggler is not None:
        t.append(f" · straggler rank {run.straggler} (+{fmt_ms(run.straggler_excess)})", style="bold red")
    if run.state in ("running", "stale") and not run.replay:
        t.append(f" · last write {fmt_duration(run.idle_s + age)} ago", style="dim")
    t.append("\n")
    if run.replay:
        t.append(run.replay, style="bold cyan")
        t.append(" · space play/pause · ←/→ step · home/end · +/- speed · ", style="dim")
    if run.error:
        err = literal(run.error[:300])
        err.stylize("bold red")
        t.append_text(err)
    else:
        where = " · ".join(x for x in (run.host, run.device, run.gpu_name or "") if x)
        if where:
            t.append_text(literal(where))
            t.append(" · ")
        t.append(f"w: whole run ⇄ last {run.window_size} steps · ? help", style="dim")
    return t


class HeaderBar(Static):
    pass


class RunList(OptionList):
    """Runs newest first with their state; pick with keys or the mouse."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.ids: list[str] = []
        self._shown: object = None

    @staticmethod
    def prompt(item: RunItem, width: int = 40) -> Text:
        """Two lines, each cut to ``width`` cells (a long run id keeps its end: the name)."""
        rid = literal(item.run_id).plain
        if len(rid) > width - 2:
            rid = "…" + rid[len(rid) - (width - 3) :]
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"{STATE_ICON.get(item.state, '?')} ", style=STATE_STYLE.get(item.state, ""))
        t.append(rid)
        second = f"  {item.state} {item.step}" + (f"/{item.total_steps}" if item.total_steps else "")
        t.append("\n" + second[:width], style="dim")
        return t

    def show(self, runs: tuple[RunItem, ...], selected: str | None) -> None:
        width = max(8, self.size.width - 4) if self.size.width else 30
        if (runs, selected, width) == self._shown:
            return
        self._shown = (runs, selected, width)
        ids = [r.run_id for r in runs]
        if ids != self.ids:
            self.clear_options()
            self.add_options([Option(self.prompt(r, width), id=f"run-{i}") for i, r in enumerate(runs)])
            self.ids = ids
        else:
            for i, r in enumerate(runs):
                self.replace_option_prompt_at_index(i, self.prompt(r, width))
        if selected in ids and self.highlighted != ids.index(selected):
            self.highlighted = ids.index(selected)


def rank_text(run: RunSnapshot | None, region: str | None, window: bool, red: float, yellow: float) -> tuple[str, Text]:
    """(title, table) of the per-rank figures of ``region`` (or of the step wall time)."""
    if run is None:
        return "ranks", Text("")
    row = run.region(region) if region else None
    if row is None:
        title = "ranks · step wall time"
        per = [(ri.rank, ri.wall, ri.wall_window) for ri in run.rank_info]
    else:
        title = "ranks · unaccounted" if row.name == UNACCOUNTED else f"ranks · {row.name}"
        per = list(row.ranks)
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(f"{'rank':>4} {'last':>7} {'avg':>7} {'p95':>7} {'max':>7} {'share':>6} {'Δ mean':>7} {'slow':>5}\n", style="bold")
    chosen = [(r, win if window else whole) for r, whole, win in per]
    avgs = [s.avg for _, s in chosen if ok(s.avg)]
    mean = sum(avgs) / len(avgs) if avgs else math.nan
    slow = {ri.rank: ri.slowest_steps for ri in run.rank_info}
    for rank, s in chosen:
        cls = class_of(s, red, yellow) if row is not None and row.name != UNACCOUNTED else "none"
        diff = (s.avg - mean) / mean if ok(s.avg) and ok(mean) and mean > 0 else math.nan
        t.append(f"{rank:>4}", style="bold red" if rank == run.straggler else "")
        t.append(f" {fmt_ms(s.last):>7} {fmt_ms(s.avg):>7} {fmt_ms(s.p95):>7} {fmt_ms(s.max):>7}")
        t.append(f" {fmt_pct(s.share) if row is not None else '':>6}", style=CLASS_STYLE[cls])
        t.append(f" {f'{diff:+.1%}' if ok(diff) else '—':>7}", style="red" if ok(diff) and diff > 0.05 else "")
        t.append(f" {slow.get(rank, 0) if len(per) > 1 else '—':>5}\n")
    return title, t


class RankView(Static):
    """Per-rank figures of the selected region (or of the step wall time)."""

    def show(self, run: RunSnapshot | None, region: str | None, window: bool, red: float, yellow: float) -> None:
        title, text = rank_text(run, region, window, red, yellow)
        set_title(self, title)
        show_text(self, text)


class StepSpark(Vertical):
    """Recent step wall times (slowest rank per step)."""

    def compose(self):  # type: ignore[no-untyped-def]
        yield Static(id="spark-label")
        yield Sparkline([], id="spark")

    def show(self, run: RunSnapshot | None) -> None:
        data = list(run.step_times) if run else []
        spark = self.query_one(Sparkline)
        if spark.data != data:
            spark.data = data
        label = self.query_one("#spark-label", Static)
        if data:
            show_text(label, Text(f"step time, last {len(data)} steps: {fmt_ms(min(data))} … {fmt_ms(max(data))}", style="dim"))
        else:
            show_text(label, Text("step time: no steps yet", style="dim"))


class AdviceBox(Static):
    """What to change: lines from :func:`tui.advice.advice_for`."""

    def show(self, lines: list[str]) -> None:
        if not lines:
            show_text(self, Text("no advice yet", style="dim italic"))
            return
        t = Text()
        for i, line in enumerate(lines):
            if i:
                t.append("\n")
            t.append("• ")
            t.append_text(literal(line))
        show_text(self, t)


class FilesLine(Static):
    """Files read and malformed lines (never fatal, always shown)."""

    def show(self, run: RunSnapshot | None, world: WorldSnapshot) -> None:
        if run is None:
            show_text(self, Text(f"{len(world.runs)} runs", style="dim"))
            return
        t = Text(style="dim")
        t.append(f"{len(run.files)} file(s), {sum(f.lines for f in run.files)} lines")
        bad = [f for f in run.files if f.malformed]
        skipped = sum(f.skipped for f in run.files)
        if skipped:
            t.append(f" · {skipped} records of unknown kinds skipped")
        if bad:
            t.append(" · malformed: ", style="bold yellow")
            for i, f in enumerate(bad):
                if i:
                    t.append(", ")
                t.append_text(literal(f.path.rsplit("/", 1)[-1]))
                t.append(f" {f.malformed}", style="bold yellow")
            last = next((f.last_error for f in reversed(bad) if f.last_error), "")
            if last:
                t.append(" (last: ")
                t.append_text(literal(last[:120]))
                t.append(")")
        show_text(self, t)
