"""``tui summary``: a run's stage tree as text or JSON, without a screen."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.text import Text

from stagewatch.errors import UsageError
from stagewatch.runs import is_text_log, text_log_rank
from tui.diagnosis.advice import advice_for_run
from tui.diagnosis.facts import span_label, straggler_cause, verdict_of
from tui.diagnosis.rules import Advice
from tui.diagnosis.thresholds import WARN, Thresholds
from tui.fmt import (
    CLASS_STYLE,
    STATE_STYLE,
    bar,
    class_of,
    fmt_bytes,
    fmt_duration,
    fmt_ms,
    fmt_pct,
    fmt_rate,
    literal,
    ok,
    sig,
)
from tui.model.efficiency import efficiency, efficiency_dict, efficiency_lines
from tui.model.nesting import TIMED_ONLY, nest_lines, timed_only
from tui.model.order import tree_sort
from tui.model.ranks import DEFAULT_WINDOW
from tui.model.snapshot import UNACCOUNTED, FileInfo, RegionRow, RunSnapshot, Stats
from tui.source.check import check_run
from tui.source.nesting import NestPolicy
from tui.source.reader import RunSource
from tui.source.textlog import INTERLEAVED_WHY

SCHEMA_VERSION = 1


def open_run(
    path: str | os.PathLike[str], window: int = DEFAULT_WINDOW, nest: NestPolicy | None = None
) -> RunSnapshot:
    """Read a run folder, rank ``.jsonl`` file or ``timing_*.log`` to the end.

    Raises UsageError (one line, exit 2) for a missing, unreadable or empty run.
    """
    p = Path(path)
    check_run(p)  # missing, symlink loop, unreadable, not a run: one line each, read nothing
    src = RunSource(p, window=window, nest=nest).load()
    snap = src.snapshot()
    if snap.step == 0 and not snap.regions and not src.agg.starts:
        bad = sum(f.malformed for f in snap.files)
        first = next((f.last_error for f in snap.files if f.last_error), "")
        detail = f" ({bad} malformed lines; last: {first})" if bad else ""
        raise UsageError(f"no stagewatch records in {p}{detail}")
    return snap


def _num(x: float | None) -> float | None:
    """A figure for JSON: 6 significant figures (an lr of 1.05e-05 stays 1.05e-05), None when
    unknown or not finite."""
    return sig(x, 6)


def _stats(s: Stats) -> dict[str, Any]:
    return {
        "last_ms": _num(s.last),
        "avg_ms": _num(s.avg),
        "min_ms": _num(s.min),
        "max_ms": _num(s.max),
        "p50_ms": _num(s.p50),
        "p95_ms": _num(s.p95),
        "share": _num(s.share),
        "last_share": _num(s.last_share),
        "steps": s.steps,
        "count": s.calls,
    }


def _region(r: RegionRow, red: float, yellow: float, window: bool = False) -> dict[str, Any]:
    d: dict[str, Any] = {"name": r.name, "depth": r.depth, "parent": r.parent}
    d["class"] = (
        class_of(r.window if window else r.whole, red, yellow) if r.name != UNACCOUNTED else None
    )
    d.update(_stats(r.whole))
    d["window"] = _stats(r.window)
    d["ranks"] = {str(rank): _stats(w) for rank, w, _ in r.ranks}
    return d


def sorted_regions(snap: RunSnapshot, sort: str = "time", window: bool = False) -> list[RegionRow]:
    """The stage tree in display order: siblings by share of time (``time``), alphabetically
    (``name``) or as first run (``run``, the order the records list them)."""
    if sort == "run":
        return list(snap.regions)
    return tree_sort(
        snap.regions, lambda r: r.name, lambda r: (r.window if window else r.whole).share, by=sort
    )


def pick_regions(
    rows: list[RegionRow], window: bool, depth: int | None = None, top: int | None = None
) -> list[RegionRow]:
    """The rows ``--depth``/``--top`` keep, in their order: regions at most ``depth`` levels
    deep (1: top level only), and of those the ``top`` largest by share with their parents
    (so the tree still reads)."""
    out = [r for r in rows if depth is None or r.depth < depth]
    if top is None or len(out) <= top:
        return out

    def share(r: RegionRow) -> float:
        v = (r.window if window else r.whole).share
        return v if ok(v) else -1.0

    keep = {r.name for r in sorted(out, key=share, reverse=True)[:top]}
    for name in list(keep):
        p = name
        while "/" in p:
            p = p.rsplit("/", 1)[0]
            keep.add(p)
    return [r for r in out if r.name in keep]


def _advice(snap: RunSnapshot, red: float, window: bool) -> list[Advice]:
    return advice_for_run(snap, thresholds=Thresholds(dominant_share=red), window=window)


def unread_text_logs(snap: RunSnapshot) -> list[str]:
    """Text logs in the run's folder that were not read: one text log is read per rank (a
    rank's JSONL file replaces it), so a second one (the original logger's next launch, in
    a file of its own) is left out; the summary names it rather than staying silent."""
    folder = Path(snap.path)
    if not folder.is_dir():
        return []
    read = {os.path.abspath(f.path) for f in snap.files}
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    jsonl = {f.rank for f in snap.files if f.kind == "jsonl"}  # their text logs: replaced
    return [
        n
        for n in names
        if is_text_log(n)
        and text_log_rank(n) not in jsonl
        and os.path.abspath(folder / n) not in read
    ]


def summary_dict(
    snap: RunSnapshot,
    red: float = 0.40,
    yellow: float = 0.10,
    *,
    sort: str = "time",
    window: bool = False,
    peak_tflops: float | None = None,
    depth: int | None = None,
    top: int | None = None,
) -> dict[str, Any]:
    """The JSON document of ``tui summary --json`` (see docs/monitor.md).

    ``window``: classes and advice of the recent window instead of the whole run (both sets
    of statistics are always present); ``span`` says which. ``peak_tflops`` overrides the
    device peak of the MFU (``efficiency``; each region's ``tflops``). ``depth``/``top``:
    only the regions :func:`pick_regions` keeps (``regions_left_out`` counts the others).
    """
    d = _summary_dict(snap, red, yellow, sort=sort, window=window, depth=depth, top=top)
    eff = efficiency(snap, window=window, peak_tflops=peak_tflops)
    d["efficiency"] = efficiency_dict(eff)
    for r in d["regions"]:
        e = eff.region(r["name"]) if eff is not None else None
        r["tflops"] = None if e is None else round(e.tflops, 4)
    return d


def _summary_dict(
    snap: RunSnapshot,
    red: float,
    yellow: float,
    *,
    sort: str,
    window: bool,
    depth: int | None = None,
    top: int | None = None,
) -> dict[str, Any]:
    verdict = verdict_of(snap)
    every = sorted_regions(snap, sort, window)
    shown = pick_regions(every, window, depth, top)
    return {
        "schema": SCHEMA_VERSION,
        "run_id": snap.run_id,
        "path": snap.path,
        "state": snap.state,
        "steps": snap.step,
        "total_steps": snap.total_steps,
        "world_size": snap.world_size,
        "ranks": list(snap.ranks_seen),
        "span": {"kind": "recent" if window else "whole", "label": span_label(snap, window)},
        "sort": sort,
        "samples_per_s": _num(snap.samples_per_s),
        "samples_per_s_window": _num(snap.samples_per_s_window),
        "eta_s": _num(snap.eta_s),
        # step_ms of a classic text log is its timed total (nesting inferred or --nest)
        "timed_only": timed_only(snap.files),
        "step_ms": _stats(snap.wall),
        "step_ms_window": _stats(snap.wall_window),
        "thresholds": {"red": red, "yellow": yellow},
        "window_steps": snap.window_size,
        "mem_peak_bytes": snap.mem_peak,
        "scalars": {k: _num(v) for k, v in snap.scalars},
        "eval": {"step": snap.eval_step, "metrics": {k: _num(v) for k, v in snap.evals}},
        "straggler": {
            "rank": verdict.straggler if verdict is not None else snap.straggler,
            "excess_ms": _num(
                (verdict.excess_ms if verdict.straggler is not None else None)
                if verdict is not None
                else snap.straggler_excess
            ),
            "spread_ms": _num(snap.spread_window),
            "verdict": verdict.as_dict() if verdict is not None else None,
            "cause": verdict.cause if verdict is not None else None,
            "cause_line": straggler_cause(snap, verdict) or None,
        },
        "comm": _comm_dict(verdict),
        "regions": [_region(r, red, yellow, window) for r in shown],
        "regions_left_out": len(every) - len(shown),
        "unaccounted": _region(snap.unaccounted, red, yellow, window),
        "files_not_read": unread_text_logs(snap),
        "files": [
            {
                "path": f.path,
                "rank": f.rank,
                "kind": f.kind,
                "lines": f.lines,
                "malformed": f.malformed,
                "skipped": f.skipped,
                "dropped": f.dropped,
                "superseded": f.duplicates,
                "restarts": f.restarts,
                "interleaved": f.interleaved,
                "interleaved_why": INTERLEAVED_WHY if f.interleaved else None,
                "blank_blocks": f.blank,
                "last_error": f.last_error or None,
                "nesting": f.nesting.as_dict() if f.nesting is not None else None,
            }
            for f in snap.files
        ],
        "error": snap.error,
        "advice": [a.as_dict() for a in _advice(snap, red, window)],
    }


def _comm_dict(verdict: Any) -> dict[str, Any] | None:
    """Exposed communication per rank (ms per step, medians over the compared steps): the
    all-reduce time backward did not hide, its waiting part and the rank's own hook time."""
    if verdict is None:
        return None
    return {
        "wait_source": verdict.wait_source,
        "ranks": [
            {
                "rank": x.rank,
                "exposed_ms": _num(x.exposed_ms),
                "wait_ms": _num(x.allreduce_ms),
                "launch_ms": _num(x.launch_ms),
            }
            for x in verdict.ranks
        ],
    }


_WAIT_HOW = {
    "measured": "measured",
    "backward": "estimated from backward: not measured",
    "rest": "estimated from the untimed rest of the step: not measured",
    "none": "not measured",
}


def straggler_text(snap: RunSnapshot) -> Text:
    """Ranks compared by their own time (multi-rank runs): each rank's own time by class,
    its wait and exposed communication, who waits for whom, why; empty for one rank."""
    t = Text()
    v = verdict_of(snap)
    if v is None:
        return t
    t.append(
        f"ranks by own time (step − wait at the all-reduce, {_WAIT_HOW.get(v.wait_source, '')}; "
        f"medians per step), {v.span}:\n",
        style="bold",
    )
    for x in v.ranks:
        mark = "  ← straggler" if x.rank == v.straggler else ""
        t.append(
            f"  rank {x.rank:<3} own {fmt_ms(x.own_ms):>8}  input {fmt_ms(x.data_ms):>8}"
            f"  h2d {fmt_ms(x.h2d_ms):>8}  compute {fmt_ms(x.compute_ms):>8}"
            f"  comm hook {fmt_ms(x.launch_ms):>8}  wait {fmt_ms(x.allreduce_ms):>8}"
            f"  exposed comm {fmt_ms(x.exposed_ms) if ok(x.exposed_ms) else '—':>8}"
            f"  slowest in {x.slowest}/{v.compared_steps}{mark}\n",
            style="red" if mark else "",
        )
    if v.straggler is not None:
        t.append("straggler: ", style="bold red")
        t.append(f"{v.reason}; {v.who_waits()}\n", style="red")
        cause = straggler_cause(snap, v)
        if cause:
            t.append("cause: ", style="bold red")
            t.append_text(literal(cause))
            t.append("\n")
    else:
        t.append_text(literal(v.reason))
        t.append("\n")
    return t


def summary_text(
    snap: RunSnapshot,
    red: float = 0.40,
    yellow: float = 0.10,
    name_w: int = 36,
    *,
    sort: str = "time",
    window: bool = False,
    peak_tflops: float | None = None,
    depth: int | None = None,
    top: int | None = None,
) -> Text:
    """The stage tree as text (styles become ANSI colours on a terminal only), ending with the
    advice. ``window``: figures of the recent window instead of the whole run; ``depth`` /
    ``top``: only the regions :func:`pick_regions` keeps (a line counts the others)."""
    span = span_label(snap, window)
    t = _summary_head(snap, span, sort, window)
    figures = "".join(f" {c:>8}" for c in ("last", "avg", "min", "max", "p95", "calls"))
    head = f"{'region':<{name_w}} {'class':<6} {'share':>6} {'':<10}{figures}\n"
    t.append(head, style="bold")
    every = sorted_regions(snap, sort, window)
    shown = pick_regions(every, window, depth, top)
    timed = timed_only(snap.files)  # no step wall time: nothing to be unaccounted against
    for r in [*shown, snap.unaccounted]:
        if timed and r.name == UNACCOUNTED:
            t.append(
                f"{UNACCOUNTED:<{name_w}} not measured: a text log holds no step wall time, "
                "so time outside its timed names is unknown\n",
                style="dim",
            )
            continue
        s = r.window if window else r.whole
        cls = class_of(s, red, yellow) if r.name != UNACCOUNTED else "none"
        style = CLASS_STYLE[cls]
        indent = "  " * min(r.depth, 16)
        name = literal(indent + (r.leaf if r.name != UNACCOUNTED else UNACCOUNTED))
        name.truncate(name_w, overflow="ellipsis")
        name.pad_right(name_w - name.cell_len)
        name.stylize(style)
        t.append_text(name)
        t.append(f" {cls if cls != 'none' else '':<6} ", style=style)
        t.append(f"{fmt_pct(s.share):>6} ", style=style)
        t.append(bar(s.share, 10), style=style)
        for v in (s.last, s.avg, s.min, s.max, s.p95):
            t.append(f" {fmt_ms(v):>8}")
        t.append(f" {s.calls if s.calls else '—':>8}\n")
    if len(shown) < len(every):
        t.append(
            f"({len(every) - len(shown)} more regions not shown: --depth/--top)\n", style="dim"
        )
    t.append_text(straggler_text(snap))
    names = {r.name for r in shown} if len(shown) < len(every) else None
    eff = efficiency(snap, window=window, peak_tflops=peak_tflops)
    for line, style in efficiency_lines(eff, names):
        seg = literal(line)
        if style:
            seg.stylize(style)
        t.append_text(seg)
        t.append("\n")
    for f in snap.files:
        for note in _file_notes(f):
            m = literal(note)
            m.stylize("yellow")
            t.append_text(m)
            t.append("\n")
    bad = [f for f in snap.files if f.malformed]
    for f in bad:
        m = literal(f"malformed lines in {f.path}: {f.malformed}")
        m.stylize("yellow")
        t.append_text(m)
        if f.last_error:
            t.append(" (last: ")
            t.append_text(literal(f.last_error))
            t.append(")")
        t.append("\n")
    t.append_text(advice_text(_advice(snap, red, window), span))
    return t


def _summary_head(snap: RunSnapshot, span: str, sort: str, window: bool) -> Text:
    """The summary's first lines: the run, its figures, the span, what a text log holds."""
    wall = snap.wall_window if window else snap.wall
    sps = snap.samples_per_s_window if window else snap.samples_per_s
    t = Text()
    t.append_text(literal(snap.run_id))
    t.append("  ")
    t.append(snap.state, style=STATE_STYLE.get(snap.state, ""))
    t.append(f"  step {snap.step}" + (f"/{snap.total_steps}" if snap.total_steps else ""))
    if ok(sps) and sps > 0:
        t.append(f"  {fmt_rate(sps)} samples/s" + (" (all ranks)" if snap.world_size > 1 else ""))
    timed = timed_only(snap.files)
    t.append(
        f"  {'timed total' if timed else 'step'} avg {fmt_ms(wall.avg)} (p95 {fmt_ms(wall.p95)})"
    )
    t.append(f"  ranks {len(snap.ranks_seen)}/{snap.world_size}")
    if snap.mem_peak is not None:
        t.append(f"  peak mem {fmt_bytes(snap.mem_peak)}")
    if snap.eta_s is not None:
        t.append(f"  ETA {fmt_duration(snap.eta_s)}")
    t.append("\n")
    t.append(f"span: {span}", style="cyan")
    t.append(f" · sorted by {'share of time' if sort == 'time' else sort}\n", style="dim")
    if timed:
        t.append(TIMED_ONLY + "; shares are of the timed total\n", style="yellow")
    for line in nest_lines(snap.files):
        t.append_text(literal(line))
        t.append("\n")
    unread = unread_text_logs(snap)
    if unread:
        m = literal(
            f"not read: {', '.join(unread)} (one text log per rank is read; give a file's "
            "path to read another)"
        )
        m.stylize("yellow")
        t.append_text(m)
        t.append("\n")
    if snap.error:
        e = literal(snap.error)
        e.stylize("bold red")
        t.append_text(e)
        t.append("\n")
    return t


def advice_text(advice: list[Advice], span: str) -> Text:
    """The closing advice section; says so when nothing stands out."""
    t = Text()
    t.append(f"advice — {span}:\n", style="bold")
    if not advice:
        t.append("  nothing stands out: no rule found anything to change\n", style="dim")
    for a in advice:
        t.append(f"  {a.severity:<8}", style="red" if a.severity == WARN else "cyan")
        t.append_text(literal(a.line()))
        t.append("\n")
    return t


def _file_notes(f: FileInfo) -> list[str]:
    """What a rank file's reading kept or left out, one line each (yellow in the summary)."""
    notes = []
    if f.duplicates:  # a resume (or a text log's restart) repeated their step numbers
        notes.append(
            f"step records superseded in {f.path}: {f.duplicates} "
            "(a resume or restart repeated their step numbers; the newest are kept)"
        )
    if f.restarts:
        notes.append(
            f"the logger restarted in {f.path} {f.restarts}× (its Step count began "
            "again): blocks from there are numbered on after the last, every step kept"
        )
    if f.interleaved:
        notes.append(
            f"several processes wrote into {f.path}: {f.interleaved}× a block went on with "
            f"an earlier Step count; every block is kept, numbered on, as one rank: "
            f"{INTERLEAVED_WHY} (give each process its own file to see its ranks)"
        )
    if f.blank:
        notes.append(
            f"empty Step blocks in {f.path}: {f.blank} (a header with no region and no "
            "time, as a crash or flush leaves): not counted as steps"
        )
    if f.dropped:
        notes.append(f"records the writer dropped in {f.path}: {f.dropped} (its queue was full)")
    return notes
