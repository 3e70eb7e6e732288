"""Several runs side by side: each region's time and share, with differences and ratios vs the
first run (the baseline). Torch-free and Textual-free; the screen is ``tui.view.widgets.compare``.

Statistics are whole-run figures from the monitor's aggregation (``avg`` by default, or the
median ``p50``, which ignores a slow first step), so a comparison reads the same numbers as
``tui summary`` of each run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text

from tui.fmt import clean, finite, fmt_bytes, fmt_ms, fmt_rate, literal, ok, sig
from tui.model.order import tree_order
from tui.model.snapshot import UNACCOUNTED, RunSnapshot, Stats

STATS = ("avg", "p50")
SCHEMA_VERSION = 1
NAN = math.nan


@dataclass(frozen=True, slots=True)
class RunColumn:
    label: str  # "A", "B", ...
    run_id: str
    path: str
    state: str
    steps: int
    step_ms: float
    samples_per_s: float
    mem_peak: int | None


@dataclass(frozen=True, slots=True)
class Row:
    """One region (or the step) across runs; ``diff``/``ratio`` are vs the first run."""

    name: str
    depth: int
    ms: tuple[float, ...]
    share: tuple[float, ...]

    @property
    def diff(self) -> tuple[float, ...]:
        base = self.ms[0]
        return tuple(m - base if ok(m) and ok(base) else NAN for m in self.ms)

    @property
    def ratio(self) -> tuple[float, ...]:
        base = self.ms[0]
        return tuple(m / base if ok(m) and ok(base) and base > 0 else NAN for m in self.ms)


@dataclass(frozen=True, slots=True)
class Comparison:
    runs: tuple[RunColumn, ...]
    stat: str
    step: Row
    regions: tuple[Row, ...]  # tree order, then the unaccounted time


def label(i: int) -> str:
    """A, B, ..., Z, AA, AB, ..."""
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(65 + r) + s
    return s


def _value(s: Stats | None, stat: str) -> float:
    if s is None or s.steps == 0:
        return NAN
    return float(getattr(s, stat))


def compare_snapshots(snaps: Sequence[RunSnapshot], stat: str = "avg") -> Comparison:
    """Compare run snapshots (whole-run statistics); the first one is the baseline."""
    if stat not in STATS:
        raise ValueError(f"stat must be one of {STATS}")
    cols = tuple(
        RunColumn(
            label(i),
            s.run_id,
            s.path,
            s.state,
            s.step,
            _value(s.wall, stat),
            s.samples_per_s,
            s.mem_peak,
        )
        for i, s in enumerate(snaps)
    )
    step = Row(
        "step",
        0,
        tuple(c.step_ms for c in cols),
        tuple(1.0 if ok(c.step_ms) else NAN for c in cols),
    )
    names = tree_order([r.name for s in snaps for r in s.regions])
    rows = []
    for name in [*names, UNACCOUNTED]:
        ms, share = [], []
        for s, c in zip(snaps, cols, strict=True):
            r = s.region(name)
            v = _value(r.whole if r else None, stat)
            ms.append(v)
            share.append(v / c.step_ms if ok(v) and ok(c.step_ms) and c.step_ms > 0 else NAN)
        rows.append(
            Row(name, 0 if name == UNACCOUNTED else name.count("/"), tuple(ms), tuple(share))
        )
    return Comparison(cols, stat, step, tuple(rows))


def compare_paths(
    paths: Sequence[str | os.PathLike[str]],
    stat: str = "avg",
    window: int | None = None,
    nest: Any = None,
) -> Comparison:
    """Read each run to the end and compare them (UsageError for a missing or empty run)."""
    from tui.model.ranks import DEFAULT_WINDOW
    from tui.report.summary import open_run

    w = window or DEFAULT_WINDOW
    return compare_snapshots([open_run(p, window=w, nest=nest) for p in paths], stat)


# --------------------------------------------------------------------------- output


def _num(x: float | None) -> float | None:
    return sig(x, 6)


def _row_dict(r: Row) -> dict[str, Any]:
    return {
        "name": r.name,
        "depth": r.depth,
        "runs": [
            {"ms": _num(m), "share": _num(s), "diff_ms": _num(d), "ratio": _num(q)}
            for m, s, d, q in zip(r.ms, r.share, r.diff, r.ratio, strict=True)
        ],
    }


def comparison_dict(c: Comparison) -> dict[str, Any]:
    """The JSON document of ``tui compare --json``."""
    return {
        "schema": SCHEMA_VERSION,
        "stat": c.stat,
        "baseline": c.runs[0].run_id if c.runs else None,
        "runs": [
            {
                "label": r.label,
                "run_id": r.run_id,
                "path": r.path,
                "state": r.state,
                "steps": r.steps,
                "step_ms": _num(r.step_ms),
                "samples_per_s": _num(r.samples_per_s),
                "mem_peak_bytes": r.mem_peak,
            }
            for r in c.runs
        ],
        "step": _row_dict(c.step),
        "regions": [_row_dict(r) for r in c.regions],
    }


def fmt_ratio(q: float) -> str:
    v = finite(q)
    return f"{v:.2f}×" if v is not None else "—"


def fmt_diff(d: float) -> str:
    v = finite(d)
    if v is None:
        return "—"
    return ("+" if v > 0 else "−" if v < 0 else "±") + fmt_ms(abs(v))


def fmt_share(s: float) -> str:
    v = finite(s)
    return f"{v * 100:.1f}%" if v is not None else "—"


def comparison_text(c: Comparison, name_w: int = 32) -> Text:
    """The comparison as a text table (styles become colours on a terminal only)."""
    t = Text()
    for r in c.runs:
        t.append(f"{r.label}", style="bold")
        t.append(" = ")
        t.append_text(literal(r.run_id))
        t.append(f"  {r.state}, {r.steps} steps, step {c.stat} {fmt_ms(r.step_ms)}")
        if ok(r.samples_per_s) and r.samples_per_s > 0:
            t.append(f", {fmt_rate(r.samples_per_s)} samples/s")
        if r.mem_peak is not None:
            t.append(f", peak mem {fmt_bytes(r.mem_peak)}")
        t.append("  (baseline)\n" if r is c.runs[0] else "\n")
    head = f"{'region (' + c.stat + ')':<{name_w}}"
    for i, r in enumerate(c.runs):
        head += f" {r.label + ' ms':>9} {'share':>6}"
        if i:
            head += f" {'Δ vs ' + c.runs[0].label:>9} {'×':>6}"
    t.append(head + "\n", style="bold")
    for row in (c.step, *c.regions):
        name = literal(
            "  " * row.depth
            + (row.name.rsplit("/", 1)[-1] if row.name != UNACCOUNTED else UNACCOUNTED)
        )
        name.truncate(name_w, overflow="ellipsis")
        name.pad_right(name_w - name.cell_len)
        if row is c.step:
            name.stylize("bold")
        t.append_text(name)
        for i, (m, s, d, q) in enumerate(zip(row.ms, row.share, row.diff, row.ratio, strict=True)):
            t.append(f" {fmt_ms(m):>9} {fmt_share(s):>6}")
            if i:
                style = "red" if ok(q) and q > 1.05 else "green" if ok(q) and q < 0.95 else ""
                t.append(f" {fmt_diff(d):>9} {fmt_ratio(q):>6}", style=style)
        t.append("\n")
    return t


# --------------------------------------------------------------------------- CI gate


@dataclass(frozen=True, slots=True)
class Gate:
    """The verdict of ``--max-regression-pct``: one line per compared run."""

    what: str  # "step" or the region's name
    max_pct: float
    changes: tuple[tuple[str, float], ...]  # (label, % change vs the baseline; nan if unknown)
    failed: bool
    lines: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "max_regression_pct": self.max_pct,
            "failed": self.failed,
            "changes_pct": {k: _num(v) for k, v in self.changes},
            "lines": list(self.lines),
        }


def regression_check(c: Comparison, max_pct: float, region: str | None = None) -> Gate:
    """Is any run slower than the baseline by more than ``max_pct`` percent (step time, or
    ``region``'s time)? A run without the figure fails the gate (it cannot be shown to pass).
    UsageError for a region no run has."""
    from stagewatch.errors import UsageError

    if region is None:
        row, what = c.step, "step"
    else:
        row = next((r for r in c.regions if r.name == region), None)
        if row is None or not any(ok(m) for m in row.ms):
            names = [r.name for r in c.regions if r.name != UNACCOUNTED][:8]
            raise UsageError(
                f"--region: no region {clean(region)!r} in these runs (regions: "
                f"{', '.join(clean(n) for n in names)}{', ...' if len(c.regions) > 9 else ''})"
            )
        what = region
    base = row.ms[0]
    lines, changes, failed = [], [], False
    label = "step time" if region is None else f"region {clean(region)}"
    for col, m in zip(c.runs[1:], row.ms[1:], strict=True):
        name = f"{col.label} ({clean(col.run_id)})"
        if finite(m) is None or finite(base) is None or base <= 0:
            changes.append((col.label, NAN))
            failed = True
            lines.append(
                f"FAIL {label}: {name} has no {c.stat} figure to compare with the baseline"
            )
            continue
        pct = (m / base - 1.0) * 100.0
        changes.append((col.label, pct))
        bad = pct > max_pct
        failed |= bad
        verdict = "FAIL" if bad else "ok"
        sign = "+" if pct >= 0 else "−"
        lines.append(
            f"{verdict} {label}: {name} {fmt_ms(m)} vs baseline {fmt_ms(base)} = "
            f"{sign}{abs(pct):.1f}% ({'over' if bad else 'within'} the {max_pct:g}% limit)"
        )
    return Gate(what, max_pct, tuple(changes), failed, tuple(lines))
