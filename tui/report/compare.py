"""Several runs side by side: each region's time and share, with differences and ratios vs the
first run (the baseline). Torch-free and Textual-free; the screen is ``tui.view.widgets.compare``.

Statistics are whole-run figures from the monitor's aggregation (``avg`` by default, or the
median ``p50``, which ignores a slow first step), and each share is the region's share of the
step wall time as ``tui summary`` computes it (a region that does not run every step, like
validation, has its total over the run's total, not its time per call over a step), so a
comparison reads the same numbers as ``tui summary`` of each run. Runs of different shapes
(world size, samples per step per rank, steps) are compared with a warning saying so.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text

from tui.fmt import clean, finite, fmt_bytes, fmt_ms, fmt_rate, literal, ok, sig
from tui.model.nesting import nest_lines, timed_only
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
    samples_per_s: float  # summed over the ranks, as tui summary
    mem_peak: int | None
    world_size: int = 1
    batch: float | None = None  # samples per step per rank (None: unknown)
    steps_read: int = 0  # steps the figures are of (as tui summary's span names them)
    timed_only: bool = False  # a classic text log: timed totals, no step wall time
    nesting: tuple[str, ...] = ()  # a text log's nesting, inferred or given, as summary says

    @property
    def step_word(self) -> str:
        """What its step row holds: the step wall time, or a text log's timed total."""
        return "timed total" if self.timed_only else "step"


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
    warnings: tuple[str, ...] = ()  # the runs differ in shape: figures not like for like


def step_label(c: Comparison) -> str:
    """The step row's name: ``step``, ``timed total`` (text logs), or both when mixed."""
    words = list(dict.fromkeys(r.step_word for r in c.runs)) or ["step"]
    return " | ".join(words)


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


def _batch(s: RunSnapshot) -> float | None:
    """Samples per step per rank: the config's ``TRAIN.BATCH_SIZE`` (the trainer's), else
    from the run's throughput and step time (None when it cannot be told)."""
    cfg = s.config or {}
    train = cfg.get("TRAIN") if isinstance(cfg, dict) else None
    b = train.get("BATCH_SIZE") if isinstance(train, dict) else None
    if isinstance(b, int | float) and not isinstance(b, bool) and b > 0:
        return float(b)
    # each rank's samples per step: its samples/s times its mean step time
    per = [
        ri.samples_per_s * ri.wall.avg / 1000.0
        for ri in s.rank_info
        if ok(ri.samples_per_s) and ri.samples_per_s > 0 and ok(ri.wall.avg)
    ]
    return sig(sum(per) / len(per), 3) if per else None


def _steps_read(s: RunSnapshot) -> int:
    return max((ri.wall.steps for ri in s.rank_info), default=0) or s.step


def shape_warnings(cols: Sequence[RunColumn]) -> tuple[str, ...]:
    """One line per way the runs differ in shape, naming each run's value."""
    out = []
    for what, get in (
        ("world size", lambda c: c.world_size),
        ("samples per step per rank", lambda c: c.batch),
        ("steps", lambda c: c.steps_read),
    ):
        vals = [get(c) for c in cols]
        known = [v for v in vals if v is not None]
        if len(set(known)) > 1:
            each = ", ".join(
                f"{c.label} {v:g}" if v is not None else f"{c.label} ?"
                for c, v in zip(cols, vals, strict=True)
            )
            note = ""
            if what == "world size":
                note = " (samples/s are of all ranks: compare per rank)"
            elif what == "steps":
                note = " (averages over different spans)"
            out.append(f"the runs differ in {what}: {each}{note}")
    timed = [c.label for c in cols if c.timed_only]
    if timed and len(timed) < len(cols):
        out.append(
            f"{', '.join(timed)}: classic text log, timed totals only, no step wall time; "
            "its step row and shares are of the timed total, not the step: unlike the others'"
        )
    return tuple(out)


def compare_snapshots(snaps: Sequence[RunSnapshot], stat: str = "avg") -> Comparison:
    """Compare run snapshots (whole-run statistics); the first one is the baseline. Each
    figure is the one ``tui summary`` shows of that run (its ``stat`` and its share)."""
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
            s.world_size,
            _batch(s),
            _steps_read(s),
            timed_only(s.files),
            tuple(nest_lines(s.files)),
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
        for s in snaps:
            r = s.unaccounted if name == UNACCOUNTED else s.region(name)
            w = r.whole if r else None
            ms.append(_value(w, stat))
            share.append(float(w.share) if w is not None and w.steps and ok(w.share) else NAN)
        rows.append(
            Row(name, 0 if name == UNACCOUNTED else name.count("/"), tuple(ms), tuple(share))
        )
    return Comparison(cols, stat, step, tuple(rows), shape_warnings(cols))


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
                "world_size": r.world_size,
                "samples_per_step_per_rank": _num(r.batch),
                "steps_read": r.steps_read,
                "timed_only": r.timed_only,
                "nesting": [clean(x) for x in r.nesting],
            }
            for r in c.runs
        ],
        "step": _row_dict(c.step),
        "regions": [_row_dict(r) for r in c.regions],
        "warnings": [clean(w) for w in c.warnings],
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
        t.append(f"  {r.state}, {r.steps} steps, {r.step_word} {c.stat} {fmt_ms(r.step_ms)}")
        if ok(r.samples_per_s) and r.samples_per_s > 0:
            t.append(f", {fmt_rate(r.samples_per_s)} samples/s")
            t.append(f" ({r.world_size} ranks)" if r.world_size > 1 else "")
        if r.mem_peak is not None:
            t.append(f", peak mem {fmt_bytes(r.mem_peak)}")
        t.append("  (baseline)\n" if r is c.runs[0] else "\n")
    for w in c.warnings:
        t.append("warning: ", style="bold yellow")
        t.append_text(literal(w))
        t.append("\n")
    for r in c.runs:
        for line in r.nesting:
            t.append(f"{r.label}: ", style="bold")
            t.append_text(literal(line))
            t.append("\n")
    head = f"{'region (' + c.stat + ')':<{name_w}}"
    for i, r in enumerate(c.runs):
        head += f" {r.label + ' ms':>9} {'share':>6}"
        if i:
            head += f" {'Δ vs ' + c.runs[0].label:>9} {'×':>6}"
    t.append(head + "\n", style="bold")
    for row in (c.step, *c.regions):
        leaf = row.name.rsplit("/", 1)[-1] if row.name != UNACCOUNTED else UNACCOUNTED
        name = literal("  " * row.depth + (step_label(c) if row is c.step else leaf))
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
    step_word = step_label(c)  # a text log's is its timed total, not a step time
    label = ("step time" if step_word == "step" else step_word) if region is None else None
    label = label or f"region {clean(region or '')}"
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
