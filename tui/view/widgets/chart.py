"""The selected region's time over the whole run, drawn in braille dots.

Per rank (a line for each of the slowest few ranks), or across ranks: the band between the
fastest and the slowest rank with the median drawn over it (a key toggles). The data are the
snapshot's downsampled series (:class:`tui.model.series.SeriesSet`): one point per bucket of
steps, whatever the run's length.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from rich.text import Text
from textual.widgets import Static

from tui.fmt import clean, fmt_ms
from tui.model.series import SeriesSet
from tui.model.snapshot import RunSnapshot
from tui.view.widgets.base import set_title, show_text

PER_RANK = "per rank"
BANDS = "min/median/max"
MAX_LINES = 6  # ranks drawn in per-rank mode (the slowest ones)
RANK_COLOURS = ("cyan", "magenta", "yellow", "green", "blue", "bright_white")
GUTTER = 8  # the y axis labels' columns

# braille dot bits by (x in the cell 0..1, y in the cell 0..3, top first)
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


class Canvas:
    """A grid of braille cells, ``2 × cols`` by ``4 × rows`` dots; each cell takes the colour
    of the last series that drew in it."""

    def __init__(self, cols: int, rows: int) -> None:
        self.cols, self.rows = cols, rows
        self.bits = [[0] * cols for _ in range(rows)]
        self.style = [[""] * cols for _ in range(rows)]

    @property
    def w(self) -> int:
        return 2 * self.cols

    @property
    def h(self) -> int:
        return 4 * self.rows

    def dot(self, x: int, y: int, style: str) -> None:
        """Dot (x, y), y from the bottom."""
        if 0 <= x < self.w and 0 <= y < self.h:
            yy = self.h - 1 - y
            r, c = yy // 4, x // 2
            self.bits[r][c] |= _DOTS[x % 2][yy % 4]
            self.style[r][c] = style

    def vline(self, x: int, y0: int, y1: int, style: str) -> None:
        for y in range(min(y0, y1), max(y0, y1) + 1):
            self.dot(x, y, style)

    def line(self, x0: int, y0: int, x1: int, y1: int, style: str) -> None:
        """A segment: for each x column, the dots between the two ends' heights there."""
        if x1 < x0:
            x0, y0, x1, y1 = x1, y1, x0, y0
        if x0 == x1:
            self.vline(x0, y0, y1, style)
            return
        prev = y0
        for x in range(x0, x1 + 1):
            y = round(y0 + (y1 - y0) * (x - x0) / (x1 - x0))
            self.vline(x, prev if x > x0 else y, y, style)
            prev = y

    def rows_text(self) -> list[Text]:
        """One Text per row, a span per run of one colour (not per cell: Textual converts
        every span's style, which at a span per cell cost more than the drawing)."""
        out = []
        for bits, styles in zip(self.bits, self.style, strict=True):
            t = Text(no_wrap=True)
            chars = "".join(chr(0x2800 + b) if b else " " for b in bits)
            start = 0
            for i in range(1, len(styles) + 1):
                if i == len(styles) or styles[i] != styles[start]:
                    t.append(chars[start:i], style=styles[start] or None)
                    start = i
            out.append(t)
        return out


def _xs(n: int, w: int) -> list[int]:
    """The dot column of each of ``n`` buckets on a canvas ``w`` dots wide."""
    if n <= 1:
        return [0] * n
    return [round(i * (w - 1) / (n - 1)) for i in range(n)]


def _plot(canvas: Canvas, vals: np.ndarray, ys: tuple[float, float], style: str) -> None:
    lo, hi = ys
    xs = _xs(len(vals), canvas.w)
    prev: tuple[int, int] | None = None
    for x, v in zip(xs, vals.tolist(), strict=True):
        if math.isnan(v):
            prev = None
            continue
        y = round((v - lo) / (hi - lo) * (canvas.h - 1)) if hi > lo else canvas.h // 2
        if prev is None:
            canvas.dot(x, y, style)
        else:
            canvas.line(prev[0], prev[1], x, y, style)
        prev = (x, y)


def slowest_ranks(series: SeriesSet, name: str | None, k: int) -> list[int]:
    """The ``k`` ranks (indices into ``series.ranks``) whose mean over the run is highest."""
    m = series.of(name)
    if m is None or not m.size:
        return []
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a rank that never ran it
        means = np.nanmean(m.astype(np.float64), axis=1)
    order = sorted(range(len(means)), key=lambda i: -means[i] if means[i] == means[i] else 0)
    return order[:k]


def chart_text(
    series: SeriesSet | None,
    name: str | None,
    mode: str,
    width: int,
    height: int,
    straggler: int | None = None,
) -> tuple[Text, str]:
    """The chart of region ``name`` (None: the step wall time) in ``width`` × ``height``
    cells, and a legend line (the border's subtitle)."""
    if series is None or series.used == 0 or width <= GUTTER + 4 or height < 2:
        return Text("no steps yet", style="dim italic"), ""
    m = series.of(name)
    if m is None or np.isnan(m).all():
        return Text("no figures for this region", style="dim italic"), ""
    plot_h = height - 1
    canvas = Canvas(width - GUTTER, plot_h)
    legend: list[tuple[str, str]] = []
    if mode == BANDS or len(series.ranks) == 1:
        bands = series.bands(name)
        assert bands is not None
        lo_v, md, hi_v = bands
        lo, hi = float(np.nanmin(lo_v)), float(np.nanmax(hi_v))
        if len(series.ranks) > 1:
            _plot(canvas, lo_v, (lo, hi), "green")
            _plot(canvas, hi_v, (lo, hi), "red")
            legend = [("max", "red"), ("median", "bold bright_white"), ("min", "green")]
        _plot(canvas, md, (lo, hi), "bold bright_white")
    else:
        idx = slowest_ranks(series, name, MAX_LINES)
        sub = m[idx].astype(np.float64)
        lo, hi = float(np.nanmin(sub)), float(np.nanmax(sub))
        for j, i in reversed(list(enumerate(idx))):  # the slowest drawn last, on top
            r = series.ranks[i]
            colour = "bold red" if r == straggler else RANK_COLOURS[j % len(RANK_COLOURS)]
            _plot(canvas, sub[j], (lo, hi), colour)
            legend.insert(0, (f"r{r}", colour))
    rows = canvas.rows_text()
    out = Text(no_wrap=True, overflow="crop")
    for i, row in enumerate(rows):
        label = fmt_ms(hi) if i == 0 else fmt_ms(lo) if i == len(rows) - 1 else ""
        out.append(f"{label:>{GUTTER - 1}}│", style="dim")
        out.append_text(row)
        out.append("\n")
    first, last = 1, series.first_step(series.used) - 1
    axis = f"step {first}"
    end = f"{last}"
    pad = max(1, width - GUTTER - len(axis) - len(end))
    out.append(" " * GUTTER + axis + " " * pad + end, style="dim")
    key = ", ".join(f"[{s}]{t}[/]" for t, s in legend)
    per = f"{series.width} steps/point" if series.width > 1 else "1 step/point"
    return out, (key + " · " if key else "") + per


class RegionChart(Static):
    """The selected region's (or the step's) time over the run; ``g`` toggles per rank and
    min/median/max across ranks."""

    mode = BANDS
    _args: tuple[RunSnapshot | None, str | None] | None = None

    def show(self, run: RunSnapshot | None, region: str | None) -> None:
        self._args = (run, region)
        series = run.series if run is not None else None
        # a region the series holds (not "(unaccounted)"), else the step wall time
        name = region if series is not None and region in series.names else None
        ranks = len(series.ranks) if series is not None else 0
        what = "step wall time" if name is None else clean(name)
        how = (
            ""
            if ranks <= 1
            else f" · {self.mode}" + (f" of {ranks} ranks" if self.mode == BANDS else "")
        )
        set_title(self, f"over the run · {what}{how}")
        if self.has_class("hidden"):  # drawn when shown again (a Resize comes with it)
            return
        text, legend = chart_text(
            series,
            name,
            self.mode,
            self.content_size.width,
            self.content_size.height,
            run.straggler if run is not None else None,
        )
        if getattr(self, "_sw_sub", None) != legend:
            self._sw_sub = legend
            self.border_subtitle = Text.from_markup(legend) if legend else ""
        show_text(self, text)

    def toggle(self) -> str:
        """Per rank <-> min/median/max; returns the new mode."""
        self.mode = PER_RANK if self.mode == BANDS else BANDS
        if self._args is not None:
            self.show(*self._args)
        return self.mode

    def on_resize(self) -> None:
        if self._args is not None:
            self.show(*self._args)
