"""The per-rank table of the selected region (or of the step wall time)."""

from __future__ import annotations

import math
import textwrap

from rich.text import Text
from textual.widgets import Static

from tui.fmt import CLASS_STYLE, class_of, clean, fmt_ms, fmt_pct, ok
from tui.model.efficiency import efficiency, region_line
from tui.model.snapshot import UNACCOUNTED, RunSnapshot
from tui.view.widgets.base import note_need, set_title, show_text
from tui.view.widgets.files import file_problems

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
        self._lines = text.plain.rstrip("\n").count("\n") + 1
        set_title(self, title)
        show_text(self, text)
        note_need(self, self.need())

    def need(self) -> int:
        """Rows (borders included) to show every line."""
        return getattr(self, "_lines", 1) + 2

    def on_resize(self) -> None:
        if self._args is not None:
            self.show(*self._args)
