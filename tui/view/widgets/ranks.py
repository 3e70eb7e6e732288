"""The per-rank table of the selected region (or of the step wall time)."""

from __future__ import annotations

import math
import textwrap
import warnings
from typing import Any

import numpy as np
from rich.text import Text
from textual.widgets import Static

from tui.diagnosis import facts as _facts
from tui.fmt import CLASS_STYLE, class_of, clean, fmt_ms, fmt_pct, ok
from tui.model.efficiency import efficiency, region_line
from tui.model.nesting import timed_only
from tui.model.rankstats import StragglerVerdict
from tui.model.series import RECENT
from tui.model.snapshot import UNACCOUNTED, RunSnapshot
from tui.view.widgets.base import note_need, set_title, show_text
from tui.view.widgets.files import file_problems

RANK_W = {"last": 7, "avg": 7, "p95": 7, "max": 7, "share": 6, "diff": 7, "slow": 5}
HEADS = {
    "last": "last",
    "avg": "avg",
    "p95": "p95",
    "max": "max",
    "share": "share",
    "diff": "Δ mean",
    "slow": "slow",
}
STRIP_MIN, STRIP_MAX = 8, RECENT  # the heat strip's cells (one per recent step)
CAUSE_LINES = 4  # the verdict's lines at most, above the table (a third of a short panel)
# the heat strip: a step's value over the median rank's at that step -> colour
HEAT = ((0.30, "bold red"), (0.15, "dark_orange"), (0.05, "yellow"), (-0.05, "green"))
COLD = "blue"  # more than 5% below the median


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


def _layout(width: int, *, multi: bool, region: bool, strip: bool) -> tuple[list[str], int]:
    """(columns, heat strip cells): the strip goes in before p95 and max, which give way to it
    on a narrow panel."""
    if not strip:
        return rank_columns(width, multi=multi, region=region), 0
    cols = ["last", "avg"] + (["share"] if region else []) + (["diff", "slow"] if multi else [])
    base = 4 + sum(RANK_W[c] + 1 for c in cols)
    if width <= 0:
        return cols, STRIP_MAX
    for drop in ("slow", "last"):
        if base + 1 + STRIP_MIN <= width:
            break
        if drop in cols:
            cols.remove(drop)
            base -= RANK_W[drop] + 1
    room = width - base - 1
    strip_w = max(0, min(STRIP_MAX, room))
    for extra in ("p95", "max"):  # back in when the strip has all its cells
        if strip_w >= STRIP_MAX and room - strip_w >= RANK_W[extra] + 1:
            cols.insert(cols.index("avg") + 1 + ("p95" in cols), extra)
            room -= RANK_W[extra] + 1
    return cols, strip_w if strip_w >= STRIP_MIN else 0


def heat_cells(vals: np.ndarray, med: np.ndarray) -> list[tuple[str, str]]:
    """(character, style) per recent step: the rank's value against the median rank's."""
    out = []
    for v, m in zip(vals.tolist(), med.tolist(), strict=True):
        if v != v or m != m or m <= 0:
            out.append(("·", "dim"))
            continue
        r = v / m - 1.0
        style = next((st for lim, st in HEAT if r > lim), COLD)
        out.append(("█", style))  # one glyph: the colour says it (fonts draw ▁-▇ unevenly)
    return out


def _cause(run: RunSnapshot, verdict: Any) -> str:
    """Why the straggler is slow, as the diagnosis says it (issue 22's cause line, with its
    region, where the diagnosis has one; else the verdict's own cause text)."""
    line = getattr(_facts, "straggler_cause", None)
    if line is not None and isinstance(verdict, StragglerVerdict):
        return str(line(run, verdict) or "")
    c = getattr(verdict, "cause_text", None)
    if not callable(c):
        c = getattr(verdict, "cause", None)
    if callable(c):
        c = c()
    return c if isinstance(c, str) else ""


def _comm(verdict: Any) -> str:
    """Exposed communication per rank, where the diagnosis measures it."""
    line = getattr(_facts, "comm_line", None)
    if line is None or not isinstance(verdict, StragglerVerdict):
        return ""
    return str(line(verdict) or "")


def verdict_lines(run: RunSnapshot, width: int, most: int = CAUSE_LINES) -> tuple[list[str], str]:
    """The straggler's cause and who waits for it (or why no rank is named), wrapped to
    ``width``, at most ``most``; and their style."""
    lines, style = _verdict_all(run, width)
    return _cut(lines, width, most), style


def _verdict_all(run: RunSnapshot, width: int) -> tuple[list[str], str]:
    """:func:`verdict_lines` before the cut to ``most`` (the panel's row need counts them and
    its text cuts them: one diagnosis for both)."""
    verdict = getattr(run, "stragglers", None)
    if verdict is None or len(run.rank_info) < 2:
        return [], ""
    who = verdict.who_waits() if hasattr(verdict, "who_waits") else ""
    parts = [p for p in (_cause(run, verdict), who, _comm(verdict)) if p]
    lines: list[str] = []
    for p in parts:
        lines += textwrap.wrap(clean(p), width, break_on_hyphens=False) if width > 8 else [clean(p)]
    named = run.straggler is not None or getattr(verdict, "group", ())  # several ranks alike
    return lines, "bold red" if named else "dim"


def _cut(lines: list[str], width: int, most: int) -> list[str]:
    if len(lines) <= most:
        return lines
    lines = lines[:most]
    lines[-1] = lines[-1][: max(1, (width or len(lines[-1])) - 1)] + "…"
    return lines


def _slowness(run: RunSnapshot, row: Any, chosen: list[tuple[int, Any]]) -> dict[int, float]:
    """A sort key per rank, the slowest highest: the verdict's compute excess for the step
    (under DDP every rank's step is equally long), else the mean of what is shown."""
    verdict = getattr(run, "stragglers", None)
    if row is None and verdict is not None and getattr(verdict, "ranks", None):
        ex = {x.rank: x.excess_ms for x in verdict.ranks if ok(x.excess_ms)}
        if ex:
            return {r: ex.get(r, -math.inf) for r, _ in chosen}
    return {r: s.avg if ok(s.avg) else -math.inf for r, s in chosen}


def _strips(
    run: RunSnapshot, row: Any, ranks: list[int], cells: int
) -> dict[int, list[tuple[str, str]]]:
    """Each rank's heat strip over its last ``cells`` steps (the selected region, or the
    compute), against the median rank at each step."""
    series = getattr(run, "series", None)
    if series is None or cells <= 0:
        return {}
    vals = series.recent_of(row.name if row is not None else None)
    if vals is None or not vals.size:
        return {}
    vals = vals[:, -cells:].astype(np.float64)
    seen = np.flatnonzero(~np.isnan(vals).all(axis=0))
    vals = vals[:, seen[0] :] if len(seen) else vals[:, :0]  # steps before the run's first: none
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step no rank has yet
        med = nanmedian_cols(vals)
        if len(series.ranks) == 1:  # one rank: against its own recent median
            med = np.full(vals.shape[1], np.nanmedian(vals))
    pos = {r: i for i, r in enumerate(series.ranks)}
    return {r: heat_cells(vals[pos[r]], med) for r in ranks if r in pos}


def nanmedian_cols(a: np.ndarray) -> np.ndarray:
    """``np.nanmedian(a, axis=0)`` to the bit (NaN where a column has no value), in one sort:
    numpy takes a masked-array path for small arrays, ~1 ms for 64 ranks x 40 steps."""
    if not a.size:
        return np.full(a.shape[1], np.nan)
    n = a.shape[0] - np.isnan(a).sum(axis=0)
    s = np.sort(a, axis=0)  # NaN sort last
    cols = np.arange(a.shape[1])
    lo, hi = s[np.maximum(n - 1, 0) // 2, cols], s[n // 2, cols]
    with np.errstate(all="ignore"):
        med = np.where(n % 2 == 1, lo, (lo + hi) / 2)
    return np.where(n > 0, med, np.nan)


def _append_runs(t: Text, cells: list[tuple[str, str]]) -> None:
    """Cells appended a run of one style at a time (a span per cell costs Textual a style
    conversion each)."""
    start = 0
    for i in range(1, len(cells) + 1):
        if i == len(cells) or cells[i][1] != cells[start][1]:
            t.append("".join(ch for ch, _ in cells[start:i]), style=cells[start][1])
            start = i


def _cells(
    t: Text, cols: list[str], s: Any, region: bool, cls: str, diff: float, slow: int
) -> None:
    """One rank's figures, column by column."""
    for c in cols:
        w = RANK_W[c]
        if c == "last" and region and s.last == 0.0:
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
            t.append(f" {slow:>{w}}")


def rank_lines(run: RunSnapshot | None, region: str | None, window: bool, width: int) -> int:
    """The lines :func:`rank_text` makes when every rank is shown (without making them)."""
    if run is None:
        return 1
    row = run.region(region) if region else None
    n = len(run.rank_info) if row is None else len(row.ranks)
    eff = region_line(efficiency(run, window=window), row.name if row is not None else None)
    return len(verdict_lines(run, width)[0]) + 1 + n + (eff is not None)


def rank_text(
    run: RunSnapshot | None,
    region: str | None,
    window: bool,
    red: float,
    yellow: float,
    width: int = 0,
    height: int = 0,
) -> tuple[str, Text]:
    """(title, text) of the per-rank figures of ``region`` (or of the step wall time): the
    straggler's cause and who waits for it first, then one line per rank, slowest first,
    with a heat strip over its recent steps and the columns that fit ``width`` cells (0:
    all), as many ranks as fit ``height`` lines (0: all)."""
    title, text, _ = rank_view(run, region, window, red, yellow, width, height)
    return title, text


def rank_view(
    run: RunSnapshot | None,
    region: str | None,
    window: bool,
    red: float,
    yellow: float,
    width: int = 0,
    height: int = 0,
) -> tuple[str, Text, int]:
    """:func:`rank_text`'s (title, text), and the lines it makes when every rank is shown
    (:func:`rank_lines`), from one diagnosis of the run."""
    if run is None:
        return "ranks", Text(""), 1
    row = run.region(region) if region else None
    if row is None:
        # a classic text log holds timed totals, no step wall time
        title = "ranks · timed total" if timed_only(run.files) else "ranks · step wall time"
        per = [(ri.rank, ri.wall, ri.wall_window) for ri in run.rank_info]
    else:
        title = "ranks · unaccounted" if row.name == UNACCOUNTED else f"ranks · {row.name}"
        per = list(row.ranks)
    multi = len(per) > 1
    if multi:
        title += f" · {len(per)} ranks, slowest first"
    strip_ok = getattr(run, "series", None) is not None and (row is None or row.name != UNACCOUNTED)
    cols, strip_w = _layout(width, multi=multi, region=row is not None, strip=strip_ok)
    t = Text(no_wrap=True, overflow="ellipsis")
    # a short panel: the verdict leaves room for ranks (a third of the lines at most)
    vall, vstyle = _verdict_all(run, width)
    vlines = _cut(vall, width, max(1, min(CAUSE_LINES, height // 3 or 99)))
    for line in vlines:
        t.append(line + "\n", style=vstyle)
    chosen = [(r, win if window else whole) for r, whole, win in per]
    key = _slowness(run, row, chosen)
    if multi:
        chosen.sort(key=lambda x: (-key[x[0]], x[0]))
    eff = region_line(efficiency(run, window=window), row.name if row is not None else None)
    strip_head = ""
    if strip_w:
        label = "compute, last steps" if row is None and multi else "last steps"
        strip_head = " " + (label if len(label) <= strip_w else "recent")[:strip_w].ljust(strip_w)
    t.append(
        f"{'rank':>4}{strip_head}" + "".join(f" {HEADS[c]:>{RANK_W[c]}}" for c in cols) + "\n",
        style="bold",
    )
    room = len(chosen)
    if height > 0:
        room = max(1, height - len(vlines) - 1 - (1 if eff is not None else 0))
    shown = chosen if room >= len(chosen) else chosen[: max(1, room - 1)]
    avgs = [s.avg for _, s in chosen if ok(s.avg)]
    mean = sum(avgs) / len(avgs) if avgs else math.nan
    slow = {ri.rank: ri.slowest_steps for ri in run.rank_info}
    bad = {f.rank: why for f, why in file_problems(run) if f.rank is not None}
    strips = _strips(run, row, [r for r, _ in shown], strip_w)
    for rank, st in shown:
        diff = (st.avg - mean) / mean if ok(st.avg) and ok(mean) and mean > 0 else math.nan
        t.append(f"{rank:>4}", style="bold red" if rank == run.straggler else "")
        if strip_w:
            cells = strips.get(rank, [])
            t.append(" " + " " * (strip_w - len(cells)))
            _append_runs(t, cells)
        cls = class_of(st, red, yellow) if row is not None and row.name != UNACCOUNTED else "none"
        _cells(t, cols, st, row is not None, cls, diff, slow.get(rank, 0))
        if rank in bad:
            t.append(f" {clean(bad[rank])}", style="bold red")
        t.append("\n")
    if len(shown) < len(chosen):
        rest = chosen[len(shown) :]
        t.append(
            f"… {len(rest)} more ranks, faster (the fastest: rank {rest[-1][0]}"
            f" {fmt_ms(rest[-1][1].avg)})\n",
            style="dim",
        )
    if eff is not None:  # achieved TFLOP/s of the selected region (or the step) and MFU
        t.append(clean(eff[0]) + "\n", style=eff[1] or "cyan")
    need = len(_cut(vall, width, CAUSE_LINES)) + 1 + len(per) + (eff is not None)
    return title, t, need


class RankView(Static):
    """Per-rank figures of the selected region (or of the step wall time)."""

    _args: tuple | None = None

    def show(
        self, run: RunSnapshot | None, region: str | None, window: bool, red: float, yellow: float
    ) -> None:
        self._args = (run, region, window, red, yellow)
        size = self.content_size
        title, text, self._lines = rank_view(
            run, region, window, red, yellow, size.width, size.height
        )
        set_title(self, title)
        show_text(self, text)
        note_need(self, self.need())

    def need(self) -> int:
        """Rows (borders included) to show every line."""
        return getattr(self, "_lines", 1) + 2

    def on_resize(self) -> None:
        if self._args is not None:
            self.show(*self._args)
