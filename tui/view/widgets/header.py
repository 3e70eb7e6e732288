"""The header (three lines fitted to the width) and the notice bar under it."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import Static

from tui.fmt import (
    STATE_ICON,
    STATE_STYLE,
    clean,
    fmt_bytes,
    fmt_duration,
    fmt_ms,
    fmt_rate,
    literal,
    ok,
)
from tui.model.nesting import nest_briefs, timed_only
from tui.model.snapshot import RunItem, RunSnapshot
from tui.view.keys import HINT, REPLAY, WATCH
from tui.view.widgets.base import show_text
from tui.view.widgets.runlist import run_label

KEEP = 9  # a header field of this priority is never dropped (cut only when nothing else fits)
ENDED = ("finished", "failed", "interrupted")


Part = tuple  # (text, priority) or (text, priority, shorter text)


def fit_line(parts: list[Part], width: int, sep: str = "  ", flex: int | None = None) -> Text:
    """Join ``parts`` ((text, priority[, short])) into one line of at most ``width`` cells.

    The lowest priorities are dropped first until the line fits; then the parts that have a
    shorter form take it; part ``flex`` (a name) is then cut from the end with "…" to use
    the room left (at least 12 cells).
    """
    # [text, priority, short form, flex, cells]: the cells kept beside each text (the loops
    # below measure the line after every change; the header is fitted on every snapshot)
    items = [
        [p[0], p[1], p[2] if len(p) > 2 else None, i == flex, n]
        for i, p in enumerate(parts)
        if (n := p[0].cell_len)
    ]
    if width > 0:
        floor = 12 if flex is not None else 0
        gaps = len(sep)

        def need() -> int:
            n = sum(it[4] for it in items) + gaps * max(0, len(items) - 1)
            return n - sum(max(0, it[4] - floor) for it in items if it[3])

        while need() > width:
            droppable = [it for it in items if it[1] < KEEP and not it[3]]
            if not droppable:
                break
            low = min(droppable, key=lambda it: it[1])
            if low[2] is not None:  # its short form before nothing (a long nesting brief)
                low[0], low[2], low[4] = low[2], None, low[2].cell_len
                continue
            items.remove(low)
        for it in sorted(items, key=lambda it: it[1]):
            if need() <= width:
                break
            if it[2] is not None:
                it[0], it[2], it[4] = it[2], None, it[2].cell_len
        over = sum(it[4] for it in items) + gaps * max(0, len(items) - 1) - width
        for it in items:
            if it[3] and over > 0:
                cut = it[0].copy()
                cut.truncate(max(floor, it[4] - over), overflow="ellipsis")
                it[0] = cut
    out = Text(no_wrap=True, overflow="ellipsis")
    for i, it in enumerate(items):
        if i:
            out.append(sep)
        out.append_text(it[0])
    return out


def _joined_cells(parts: list[Part], sep: str) -> int:
    """The cells of ``fit_line(parts, 0, sep)`` (every part kept), without making it."""
    cells = [n for p in parts if (n := p[0].cell_len)]
    return sum(cells) + len(sep) * max(0, len(cells) - 1)


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
    line1 = _line1(run, window, paused, behind_step)
    if width and _joined_cells(line1, "  ") > width:  # the id does not fit: its name
        name, _ = run_label(
            RunItem(run.run_id, run.path, run.state, run.step, run.total_steps, run.started)
        )
        line1[0] = (literal(name), KEEP)
    t = fit_line(line1, width, flex=0)
    t.append("\n")
    t.append_text(fit_line(_line2(run, window, span), width, sep=" · "))
    t.append("\n")
    t.append_text(fit_line(_line3(run, age, idle_s), width, sep=" · "))
    return t


def _line1(run: RunSnapshot, window: bool, paused: bool, behind_step: int | None) -> list[Part]:
    """The run, its state (or the replay's), step, throughput, ETA, paused."""
    replay = run.replay
    line1: list[Part] = [(literal(run.run_id), KEEP)]
    if replay:
        line1.append((_seg(replay, "bold cyan"), KEEP))
    else:
        state = f"{STATE_ICON.get(run.state, '')} {run.state}"
        line1.append((_seg(state, STATE_STYLE.get(run.state, "")), KEEP))
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
    elif ok(run.steps_per_s_window) and not timed_only(run.files):  # no step time: no rate
        line1.append((_seg(f"{fmt_rate(run.steps_per_s_window)} steps/s"), KEEP))
    if not replay and run.state not in ENDED:
        eta = f"ETA {_safe(fmt_duration, run.eta_s)}" if run.eta_s is not None else "ETA —"
        line1.append((_seg(eta), KEEP))
    if paused:
        p = _seg("⏸ PAUSED", "bold reverse yellow")
        if behind_step is not None and behind_step != run.step:
            p.append(f" (read to step {behind_step})", style="yellow")
        line1.append((p, KEEP))
    return line1


def _line2(run: RunSnapshot, window: bool, span: str | None) -> list[Part]:
    """The straggler, memory, the step time and the span the figures are of."""
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
    if timed_only(run.files):  # the original logger's log: no step wall time in it
        line2.append(
            (
                _seg(f"timed total {fmt_ms(w.avg)} avg (no step time)", "bold"),
                KEEP - 1,
                _seg(f"timed {fmt_ms(w.avg)} avg", "bold"),
            )
        )
    else:
        line2.append((_seg(f"step {fmt_ms(w.avg)} avg", "bold"), KEEP - 1))
    line2.append((_seg(f"p95 {fmt_ms(w.p95)}"), 2))
    line2.append((_seg(f"last {fmt_ms(w.last)}"), 3))
    span = span or (f"last {run.window_size} steps" if window else "whole run")
    plain_span = span.split(" (")[0]  # "whole run (40 steps)" -> "whole run" when short of room
    line2.append(
        (_seg(span, "cyan"), KEEP, _seg(plain_span, "cyan") if span != plain_span else None)
    )
    line2.append((_seg(f"ranks {len(run.ranks_seen)}/{run.world_size}"), 1))
    caps = getattr(run, "captures", ())
    if caps:
        step, rank = caps[-1]
        n = f"⏺ {len(caps)} trace{'s' if len(caps) > 1 else ''}"
        line2.append((_seg(f"{n} (last step {step} r{rank})", "magenta"), 4, _seg(n, "magenta")))
    return line2


def _line3(run: RunSnapshot, age: float, idle_s: float | None) -> list[Part]:
    """The error, loss, evals, the last write, where it runs and the keys' hint."""
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
    if run.state in ("running", "stale") and not run.replay:
        idle = idle_s if idle_s is not None else run.idle_s + age
        style = "magenta" if run.state == "stale" else "dim"
        line3.append((_seg(f"last write {_safe(fmt_duration, idle)} ago", style), 7))
    for brief in nest_briefs(run.files):  # a text log's nesting, inferred or given
        line3.append((literal(brief), 4, literal(brief.split(":")[0])))
    if not run.error:
        where = " · ".join(x for x in (run.host, run.device, run.gpu_name or "") if x)
        if where:
            line3.append((literal(where), 2))
    line3.append((_seg(HINT[REPLAY if run.replay else WATCH], "dim"), 0))
    return line3


class HeaderBar(Static):
    """The run's figures in three lines (:func:`header_text`), fitted to the bar's width."""

    def show(self, run: RunSnapshot | None, **fields: Any) -> None:
        """``fields``: :func:`header_text`'s, but the width."""
        width = self.content_size.width or max(0, self.app.size.width - 2)
        show_text(self, header_text(run, width=width, **fields))


def notice_text(reader_error: str | None, new_run: str | None) -> Text | None:
    """The notice: the reader's failure first, else a new run to switch to (None: nothing)."""
    if reader_error:
        line = (str(reader_error).splitlines() or [""])[0][:300]
        t = Text(
            "⚠ " if line.startswith("reader failed") else "⚠ reader failed: ", style="bold red"
        )
        t.append_text(literal(line))
        t.stylize("bold red", 0, len(t))
        t.append(" · figures as last read · tui watch exits 1", style="dim")
        return t
    if new_run is not None:
        t = Text("● new run ", style="bold green")
        t.append_text(literal(new_run))
        t.append(" — n to switch", style="bold")
        return t
    return None


class NoticeBar(Static):
    """One line that only shows when there is something to say (a new run, a reader error)."""

    def show(self, reader_error: str | None, new_run: str | None) -> None:
        text = notice_text(reader_error, new_run)
        self.set_class(text is not None, "shown")
        show_text(self, text if text is not None else Text(""))
