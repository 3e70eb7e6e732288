"""Header, run list, per-rank view, step-time sparkline, advice and file status widgets.

Each takes a snapshot and renders it; none reads files or computes statistics.
"""

from __future__ import annotations

import math
import re
import textwrap
import time
from typing import Any

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
    clean,
    fmt_bytes,
    fmt_duration,
    fmt_ms,
    fmt_pct,
    fmt_rate,
    literal,
    ok,
)
from tui.model.efficiency import efficiency, region_line
from tui.model.snapshot import UNACCOUNTED, FileInfo, RunItem, RunSnapshot, WorldSnapshot


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


KEEP = 9  # a header field of this priority is never dropped (cut only when nothing else fits)
ENDED = ("finished", "failed", "interrupted")


Part = tuple  # (text, priority) or (text, priority, shorter text)


def fit_line(parts: list[Part], width: int, sep: str = "  ", flex: int | None = None) -> Text:
    """Join ``parts`` ((text, priority[, short])) into one line of at most ``width`` cells.

    The lowest priorities are dropped first until the line fits; then the parts that have a
    shorter form take it; part ``flex`` (a name) is then cut from the end with "…" to use
    the room left (at least 12 cells).
    """
    items = [
        [p[0], p[1], p[2] if len(p) > 2 else None, i == flex]
        for i, p in enumerate(parts)
        if p[0].cell_len
    ]
    if width > 0:
        floor = 12 if flex is not None else 0

        def need() -> int:
            n = sum(t.cell_len for t, *_ in items) + len(sep) * max(0, len(items) - 1)
            return n - sum(max(0, it[0].cell_len - floor) for it in items if it[3])

        while need() > width:
            droppable = [it for it in items if it[1] < KEEP and not it[3]]
            if not droppable:
                break
            items.remove(min(droppable, key=lambda it: it[1]))
        for it in sorted(items, key=lambda it: it[1]):
            if need() <= width:
                break
            if it[2] is not None:
                it[0], it[2] = it[2], None
        over = sum(t.cell_len for t, *_ in items) + len(sep) * max(0, len(items) - 1) - width
        for it in items:
            if it[3] and over > 0:
                cut = it[0].copy()
                cut.truncate(max(floor, it[0].cell_len - over), overflow="ellipsis")
                it[0] = cut
    out = Text(no_wrap=True, overflow="ellipsis")
    for i, it in enumerate(items):
        if i:
            out.append(sep)
        out.append_text(it[0])
    return out


def _safe(fmt: Any, x: Any) -> str:
    """``fmt(x)``, or "—" for a value out of its range (10**400 bytes, an infinite ETA)."""
    try:
        return fmt(x)
    except (OverflowError, ValueError, TypeError):
        return "—"


def _seg(text: str, style: str = "") -> Text:
    return Text(text, style=style)


def header_text(
    run: RunSnapshot | None,
    *,
    window: bool,
    paused: bool,
    behind_step: int | None,
    root: str,
    age: float = 0.0,
    width: int = 0,
    idle_s: float | None = None,
    span: str | None = None,
) -> Text:
    """The three header lines, each fitted to ``width`` cells (0: no limit).

    Step, throughput, ETA, memory and the straggler are kept at any width; the run name is
    cut and the least important fields (percentages, ranks, p95...) dropped first. In a
    replay the state is the replay's (position, play/pause), never "running" with an ETA.
    ``idle_s`` (seconds since the files last grew, as of now) overrides the snapshot's age,
    so a paused screen does not make a live run look stalled. ``span`` names the steps the
    figures are of, as the other panels name them.
    """
    if run is None:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("stagewatch", style="bold")
        t.append("  waiting for runs under ")
        t.append_text(literal(root))
        return t
    replay = run.replay
    line1: list[Part] = [(literal(run.run_id), KEEP)]
    if replay:
        line1.append((_seg(replay, "bold cyan"), KEEP))
    else:
        line1.append(
            (
                _seg(
                    f"{STATE_ICON.get(run.state, '')} {run.state}", STATE_STYLE.get(run.state, "")
                ),
                KEEP,
            )
        )
    if not replay:
        step = Text("step ")
        step.append(f"{run.step}", style="bold")
        if run.total_steps:
            step.append(f"/{run.total_steps}")
        line1.append((step, KEEP))
        if run.total_steps:
            line1.append((_seg(f"({min(run.step / run.total_steps, 9.99):.0%})", "dim"), 1))
    elif run.total_steps:
        line1.append((_seg(f"run planned {run.total_steps} steps", "dim"), 1))
    sps = run.samples_per_s_window if window else run.samples_per_s
    if ok(sps) and sps > 0:
        label = " samples/s global" if run.world_size > 1 else " samples/s"
        line1.append((_seg(f"{fmt_rate(sps)}{label}"), KEEP))
    elif ok(run.steps_per_s_window):
        line1.append((_seg(f"{fmt_rate(run.steps_per_s_window)} steps/s"), KEEP))
    if not replay and run.state not in ENDED:
        line1.append(
            (
                _seg(f"ETA {_safe(fmt_duration, run.eta_s)}" if run.eta_s is not None else "ETA —"),
                KEEP,
            )
        )
    if paused:
        p = _seg("⏸ PAUSED", "bold reverse yellow")
        if behind_step is not None and behind_step != run.step:
            p.append(f" (read to step {behind_step})", style="yellow")
        line1.append((p, KEEP))

    line2: list[Part] = []
    verdict = getattr(run, "stragglers", None)  # the diagnosis' verdict, when it gives one
    brief = clean(verdict.brief()) if hasattr(verdict, "brief") else None
    if run.straggler is not None:
        long = brief or f"straggler rank {run.straggler} +{fmt_ms(run.straggler_excess)}"
        short = f"straggler rank {run.straggler} +{fmt_ms(run.straggler_excess)}"
        line2.append(
            (_seg(long, "bold red"), KEEP, _seg(short, "bold red") if short != long else None)
        )
    elif run.world_size > 1 and brief != "":
        line2.append((_seg(brief or "no straggler", "green"), 4))
    if run.mem_peak is not None:
        m = f"peak mem {_safe(fmt_bytes, run.mem_peak)}"
        if run.mem_total:
            line2.append((_seg(f"{m} of {_safe(fmt_bytes, run.mem_total)}"), KEEP, _seg(m)))
        else:
            line2.append((_seg(m), KEEP))
    w = run.wall_window if window else run.wall
    line2.append((_seg(f"step {fmt_ms(w.avg)} avg", "bold"), KEEP - 1))
    line2.append((_seg(f"p95 {fmt_ms(w.p95)}"), 2))
    line2.append((_seg(f"last {fmt_ms(w.last)}"), 3))
    span = span or (f"last {run.window_size} steps" if window else "whole run")
    plain_span = span.split(" (")[0]  # "whole run (40 steps)" -> "whole run" when short of room
    line2.append(
        (_seg(span, "cyan"), KEEP, _seg(plain_span, "cyan") if span != plain_span else None)
    )
    line2.append((_seg(f"ranks {len(run.ranks_seen)}/{run.world_size}"), 1))

    line3: list[Part] = []
    if run.error:
        err = literal(run.error[:300])
        err.stylize("bold red")
        line3.append((err, KEEP))
    loss = dict(run.scalars).get("loss")
    if loss is not None and ok(loss):
        lt = Text(f"loss {loss:.4g}")
        if ok(run.loss_window):
            lt.append(f" (avg {run.loss_window:.4g})")
        line3.append((lt, 6))
    if run.evals:
        et = Text("eval")
        for k, v in run.evals[:3]:
            et.append(" ")
            et.append_text(literal(k))
            et.append(f" {v:.4g}" if ok(v) else " —")
        if run.eval_step is not None:
            et.append(f" @{run.eval_step}")
        line3.append((et, 5))
    if run.state in ("running", "stale") and not replay:
        idle = idle_s if idle_s is not None else run.idle_s + age
        line3.append(
            (
                _seg(
                    f"last write {_safe(fmt_duration, idle)} ago",
                    "magenta" if run.state == "stale" else "dim",
                ),
                7,
            )
        )
    if not run.error:
        where = " · ".join(x for x in (run.host, run.device, run.gpu_name or "") if x)
        if where:
            line3.append((literal(where), 2))
    hint = "space play · ←/→ step · Home/End · +/- speed · ? help" if replay else "? help"
    line3.append((_seg(hint, "dim"), 0))

    if width and fit_line(line1, 0).cell_len > width:  # the id does not fit: its name
        name, _ = run_label(
            RunItem(run.run_id, run.path, run.state, run.step, run.total_steps, run.started)
        )
        line1[0] = (literal(name), KEEP)
    t = fit_line(line1, width, flex=0)
    t.append("\n")
    t.append_text(fit_line(line2, width, sep=" · "))
    t.append("\n")
    t.append_text(fit_line(line3, width, sep=" · "))
    return t


class HeaderBar(Static):
    pass


class NoticeBar(Static):
    """One line that only shows when there is something to say (a new run, a reader error)."""

    def show(self, text: Text | None) -> None:
        self.set_class(text is not None, "shown")
        show_text(self, text if text is not None else Text(""))


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


RANK_W = {"last": 7, "avg": 7, "p95": 7, "max": 7, "share": 6, "diff": 7, "slow": 5}


def rank_columns(width: int, *, multi: bool, region: bool) -> list[str]:
    """The rank table's columns that fit ``width`` cells, the least useful dropped first."""
    cols = (
        ["last", "avg", "p95", "max"]
        + (["share"] if region else [])
        + (["diff", "slow"] if multi else [])
    )
    for drop in ("max", "p95", "slow", "last"):
        if width <= 0 or 4 + sum(RANK_W[c] + 1 for c in cols) <= width:
            break
        if drop in cols:
            cols.remove(drop)
    return cols


def rank_text(
    run: RunSnapshot | None,
    region: str | None,
    window: bool,
    red: float,
    yellow: float,
    width: int = 0,
) -> tuple[str, Text]:
    """(title, table) of the per-rank figures of ``region`` (or of the step wall time),
    with the columns that fit ``width`` cells (0: all)."""
    if run is None:
        return "ranks", Text("")
    row = run.region(region) if region else None
    if row is None:
        title = "ranks · step wall time"
        per = [(ri.rank, ri.wall, ri.wall_window) for ri in run.rank_info]
    else:
        title = "ranks · unaccounted" if row.name == UNACCOUNTED else f"ranks · {row.name}"
        per = list(row.ranks)
    cols = rank_columns(width, multi=len(per) > 1, region=row is not None)
    heads = {
        "last": "last",
        "avg": "avg",
        "p95": "p95",
        "max": "max",
        "share": "share",
        "diff": "Δ mean",
        "slow": "slow",
    }
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(
        f"{'rank':>4}" + "".join(f" {heads[c]:>{RANK_W[c]}}" for c in cols) + "\n", style="bold"
    )
    chosen = [(r, win if window else whole) for r, whole, win in per]
    avgs = [s.avg for _, s in chosen if ok(s.avg)]
    mean = sum(avgs) / len(avgs) if avgs else math.nan
    slow = {ri.rank: ri.slowest_steps for ri in run.rank_info}
    bad = {f.rank: why for f, why in file_problems(run) if f.rank is not None}
    for rank, s in chosen:
        cls = class_of(s, red, yellow) if row is not None and row.name != UNACCOUNTED else "none"
        diff = (s.avg - mean) / mean if ok(s.avg) and ok(mean) and mean > 0 else math.nan
        t.append(f"{rank:>4}", style="bold red" if rank == run.straggler else "")
        for c in cols:
            w = RANK_W[c]
            if c == "last" and row is not None and s.last == 0.0:
                t.append(f" {'—':>{w}}")  # did not run in the last step
            elif c in ("last", "avg", "p95", "max"):
                t.append(f" {fmt_ms(getattr(s, c)):>{w}}")
            elif c == "share":
                t.append(f" {fmt_pct(s.share):>{w}}", style=CLASS_STYLE[cls])
            elif c == "diff":
                t.append(
                    f" {f'{diff:+.1%}' if ok(diff) else '—':>{w}}",
                    style="red" if ok(diff) and diff > 0.05 else "",
                )
            else:
                t.append(f" {slow.get(rank, 0):>{w}}")
        if rank in bad:
            t.append(f" {bad[rank]}", style="bold red")
        t.append("\n")
    eff = region_line(efficiency(run, window=window), row.name if row is not None else None)
    if eff is not None:  # achieved TFLOP/s of the selected region (or the step) and MFU
        t.append(eff[0] + "\n", style=eff[1] or "cyan")
    verdict = getattr(run, "stragglers", None)
    if row is None and hasattr(verdict, "who_waits") and len(per) > 1:
        who = verdict.who_waits()
        if who:  # wrapped by hand: the table lines are never wrapped
            start = len(t)
            t.append(
                "\n".join(
                    textwrap.wrap(clean(who), width, break_on_hyphens=False)
                    if width > 8
                    else [clean(who)]
                )
            )
            t.stylize("bold red" if run.straggler is not None else "dim", start)
    return title, t


class RankView(Static):
    """Per-rank figures of the selected region (or of the step wall time)."""

    _args: tuple | None = None

    def show(
        self, run: RunSnapshot | None, region: str | None, window: bool, red: float, yellow: float
    ) -> None:
        self._args = (run, region, window, red, yellow)
        title, text = rank_text(run, region, window, red, yellow, self.content_size.width)
        set_title(self, title)
        show_text(self, text)

    def on_resize(self) -> None:
        if self._args is not None:
            self.show(*self._args)


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
            show_text(
                label,
                Text(
                    f"step time, last {len(data)}: {fmt_ms(min(data))} – {fmt_ms(max(data))}",
                    style="dim",
                ),
            )
        else:
            show_text(label, Text("step time: no steps yet", style="dim"))


class AdviceBox(Static):
    """What to change: lines from :func:`tui.diagnosis.advice.advice_for`, as many as fit, then a line
    saying how many more there are (``tui summary`` lists them all)."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.lines: list[str] = []
        self.hidden = 0

    def show(self, lines: list[str]) -> None:
        self.lines = list(lines)
        self._fit()

    def on_resize(self) -> None:
        self._fit()

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
        wrapped = [item.wrap(self.app.console, width) for item in items]
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


FILE_SIGN = {
    "missing": "✖ removed",
    "unreadable": "✖ unreadable",
    "not-regular": "✖ not a regular file",
    "symlink-loop": "✖ symlink loop",
}


def file_problems(run: RunSnapshot) -> list[tuple[FileInfo, str]]:
    """Rank files that are gone or cannot be read, with a short why (figures from them are
    the last ones read). The reader's ``state``/``problem`` fields are read defensively."""
    out = []
    for f in run.files:
        state = getattr(f, "state", "ok") or "ok"
        if state == "ok":
            continue
        sign = FILE_SIGN.get(state, f"✖ {clean(state)}")
        problem = clean(getattr(f, "problem", "") or "")
        out.append((f, f"{sign}: {problem[:80]}" if problem and state != "missing" else sign))
    return out


class FilesLine(Static):
    """Files read and malformed lines (never fatal, always shown)."""

    def show(self, run: RunSnapshot | None, world: WorldSnapshot) -> None:
        if run is None:
            show_text(self, Text(f"{len(world.runs)} runs", style="dim"))
            return
        t = Text(style="dim")
        t.append(f"{len(run.files)} file(s), {sum(f.lines for f in run.files)} lines")
        for f, why in file_problems(run):
            t.append(" · ")
            t.append_text(literal(f.path.rsplit("/", 1)[-1]))
            t.append(f" {why}", style="bold red")
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
