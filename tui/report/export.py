"""Export a run: a Chrome / Perfetto trace, or a per-step CSV table (torch-free, streaming).

Chrome trace (load it at https://ui.perfetto.dev or chrome://tracing): one *process* per rank
(``pid`` = rank, named by a ``process_name`` metadata event), each step a complete event
(``"ph": "X"``) and each region a complete event nested inside its parent.

Records hold each region's inclusive *duration* per step, not its start time, so the layout
is reconstructed: a step spans ``[time - wall_ms, time]`` (a step record is written at the
end of the step); its top-level regions are laid back to back from the step's start in the
order the record lists them (the order they first ran in), and each region's children back
to back from the region's start, each clamped to its parent's end. Durations are exact
(``args.ms`` keeps the measured value when a clamp shortened a span); start times within a
step are an approximation, and a region timed several times in a step (``count`` > 1) is
drawn as one span of the summed time. The gap after the last top-level region is the step's
unaccounted time. Timestamps are microseconds since the earliest step start of the run.

Memory (``"ph": "C"`` counters, MiB) and evaluations (instant events) are included.

CSV: one row per step and rank (ordered by step, then rank) with ``wall_ms``, each region's
inclusive ms (empty when not timed in that step), ``unaccounted_ms``, memory and scalars.
Control characters in column names are written escaped (``\x1b``), as on the screen.

Both read every rank file line by line (two passes for CSV) and keep only per-name tables,
so memory does not grow with the run. Lines that are not valid records are skipped and
counted.
"""

from __future__ import annotations

import contextlib
import csv
import heapq
import json
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

from stagewatch import runs
from stagewatch.cli import printable
from stagewatch.errors import UsageError
from stagewatch.records import (
    Eval,
    RecordError,
    RunEnd,
    RunStart,
    Step,
    clock_offset,
    decode,
    parent_of,
    rank_of_file,
    unaccounted_ms,
)
from stagewatch.traces import META_KEY, list_traces
from tui.report import chrome_traces as CT
from tui.source.feed import Feed, StepSet, read_cuts

MiB = 1024.0**2


@dataclass
class ExportStats:
    """What an export read and wrote."""

    ranks: int = 0
    steps: int = 0  # step numbers (an 80-step run of 2 ranks: 80)
    rows: int = 0  # steps of each rank (of that run: 160)
    events: int = 0
    malformed: int = 0
    errors: list[str] = field(default_factory=list)  # first few bad lines, "file:line: why"
    traces: int = 0  # captured profiler traces merged (chrome)
    trace_errors: list[str] = field(default_factory=list)  # "file: why" of traces skipped

    seen: StepSet = field(default_factory=StepSet, repr=False)
    cuts: dict[Path, Feed] = field(default_factory=dict, repr=False)  # read once per file

    def step(self, n: int) -> None:
        """A step of one rank written."""
        self.rows += 1
        if n not in self.seen:
            self.seen.add(n)
            self.steps += 1

    nest: Any = None  # a classic text log's nesting (tui.source.nesting.NestPolicy; None: infer)

    def bad(self, path: Path, lineno: int, why: str) -> None:
        self.malformed += 1
        if len(self.errors) < 5:
            self.errors.append(f"{path}:{lineno}: {why}")


def _regular(p: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(p).st_mode)
    except OSError:
        return False


def rank_files(path: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(rank, file) of a run folder or a single rank file; UsageError if it is not a run.

    Only regular files are read (a FIFO or a folder named ``rank0.jsonl`` would block or
    fail). A single file not named ``rank<R>.jsonl`` must start with a stagewatch record.
    """
    p = Path(path)
    if not p.exists():
        raise UsageError(f"no such run: {p}")
    if not p.is_dir():
        if not _regular(p):
            raise UsageError(f"not a run: {p} is not a regular file")
        rank = rank_of_file(p.name)
        if rank is None and _is_text_log(p):
            return [(runs.text_log_rank(p.name), p)]
        if rank is None and not _starts_with_record(p):
            raise UsageError(
                f"not a run: {p} "
                "(expected a run folder or a rank<R>.jsonl file of stagewatch records)"
            )
        return [(rank or 0, p)]
    try:
        files = runs.rank_files(p)
    except OSError as e:
        raise UsageError(f"cannot read run folder {p}: {e.strerror}") from None
    if not files:
        with contextlib.suppress(OSError):  # a run of classic text logs only
            files = sorted(runs.text_logs(p).items())
    odd = [f for _, f in files if not _regular(f)]
    files = [(r, f) for r, f in files if _regular(f)]
    if not files:
        why = f"; {odd[0]} is not a regular file" if odd else ""
        raise UsageError(f"not a run folder (no rank<R>.jsonl in it{why}): {p}")
    return files


def _starts_with_record(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            for _ in range(8):
                line = f.readline(4 * 1024 * 1024)
                if not line:
                    return False
                if line.strip():
                    try:
                        return decode(line) is not None or True
                    except RecordError:
                        return False
    except OSError:
        return False
    return False


def _is_text_log(p: Path) -> bool:
    """``timing_*.log``, or a file given by its path that is not named as a rank file, does
    not start with a record and has a ``Step`` block (``train_timings.txt``, as summary reads
    it)."""
    if runs.TEXT_LOG_RE.match(p.name) is not None:
        return True
    return (
        rank_of_file(p.name) is None
        and p.suffix != ".jsonl"
        and _regular(p)
        and not _starts_with_record(p)
        and _has_step_header(p)
    )


def _has_step_header(p: Path) -> bool:
    """A ``Step N`` line in the file's first 64 KiB: a text log's block begins there."""
    from tui.source.textlog import is_step_header

    try:
        with open(p, "rb") as f:
            head = f.read(64 * 1024).decode("utf-8", errors="replace")
    except OSError:
        return False
    return any(is_step_header(x) for x in head.splitlines())


def _text_records(path: Path, stats: ExportStats) -> Iterator[Step]:
    """A classic text log's steps, nested as the monitor reads them; its steps have no
    clock time, so each is placed at the sum of the timed totals before it."""
    from tui.source.nesting import Nester, NestPolicy
    from tui.source.textlog import TextLogParser

    parser, nester = TextLogParser(), Nester(stats.nest or NestPolicy(), str(path))
    clock = 0.0
    try:
        f = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    with f:
        for i, line in enumerate(f, 1):
            s = parser.feed(line.rstrip("\r\n"))
            if parser.malformed:
                stats.bad(path, i, parser.last_error)
                parser.malformed = 0
            pairs = nester.push(s, parser.native, i) if s is not None else []
            for _, x in pairs:
                clock += x.wall_ms / 1000.0
                yield msgspec.structs.replace(x, time=clock)
    last = parser.flush()
    pairs = [*(nester.push(last, parser.native) if last is not None else []), *nester.flush()]
    for _, x in pairs:
        clock += x.wall_ms / 1000.0
        yield msgspec.structs.replace(x, time=clock)


def records(path: Path, stats: ExportStats) -> Iterator[Any]:
    """Valid records of one rank file, in order (bad lines counted in ``stats``). Steps are
    those the monitor keeps: one record per step number, the newest; a resume supersedes
    the earlier segment's steps above its start (:class:`tui.source.feed.Feed`)."""
    if _is_text_log(path):
        yield from _text_records(path, stats)
        return
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below, after the error check
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    cuts = stats.cuts.get(path)
    if cuts is None:
        cuts = stats.cuts[path] = read_cuts(str(path))
    n = 0  # non-blank lines, as the reader numbers them
    with f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            n += 1
            if not line.endswith(b"\n"):
                break  # a partial last line of a run still being written
            try:
                rec = decode(line)
            except RecordError as e:
                stats.bad(path, i, str(e))
                continue
            except (ValueError, OverflowError, RecursionError, UnicodeError) as e:
                stats.bad(path, i, f"not a valid record ({type(e).__name__})")
                continue
            if rec is None:
                continue
            if type(rec) is Step and cuts.cuts and cuts.superseded(rec.step, n):
                continue
            yield rec


# --------------------------------------------------------------------------- chrome


def layout_regions(
    regions: dict[str, tuple[float, int]], start_us: float, end_us: float
) -> list[tuple[str, float, float]]:
    """(name, start µs, duration µs) of every region of a step, nested and clamped.

    Children are laid back to back from their parent's start in record order and clamped
    to their parent's end; a region whose parent was not timed hangs from its nearest timed
    ancestor (or the step). Parents always come before their children in the result.
    """
    kids: dict[str | None, list[str]] = {}
    for name in regions:
        anc = parent_of(name)
        while anc is not None and anc not in regions:
            anc = parent_of(anc)
        kids.setdefault(anc, []).append(name)
    out: list[tuple[str, float, float]] = []

    def place(parent: str | None, p_start: float, p_end: float) -> None:
        cursor = p_start
        for name in kids.get(parent, ()):
            dur = regions[name][0] * 1000.0
            s = min(cursor, p_end)
            d = max(0.0, min(dur, p_end - s))
            out.append((name, s, d))
            cursor = s + d
            place(name, s, s + d)

    place(None, start_us, end_us)
    return out


def _r(x: float) -> float:
    return round(x, 3)


StepRange = tuple[int | None, int | None]  # first, last step (inclusive); None: open


def in_range(step: int, steps: StepRange | None) -> bool:
    if steps is None:
        return True
    lo, hi = steps
    return (lo is None or step >= lo) and (hi is None or step <= hi)


def parse_steps(text: str) -> StepRange:
    """``"100:200"``, ``"100:"``, ``":50"`` or ``"7"`` -> (first, last); ValueError if bad."""
    lo, sep, hi = text.partition(":")
    first = int(lo) if lo.strip() else None
    last = (int(hi) if hi.strip() else None) if sep else first
    if first is not None and last is not None and last < first:
        raise ValueError(f"empty step range {text!r}")
    return first, last


def write_chrome(
    run: str | os.PathLike[str], out: IO[str], steps: StepRange | None = None, nest: Any = None
) -> ExportStats:
    """Write the Chrome trace JSON of ``run`` to ``out`` (streamed, one event per line)."""
    files = rank_files(run)
    stats = ExportStats(ranks=len(files), nest=nest)
    t0, offsets = _origin(files, stats, steps)
    run_name = Path(run).name if Path(run).is_dir() else Path(run).parent.name
    out.write('{"displayTimeUnit":"ms","otherData":')
    out.write(
        json.dumps(
            {
                "run": run_name,
                "origin_unix_s": t0,
                "generator": "stagewatch tui export",
                "layout": "regions laid back to back inside their parent (start times approximate)",
                "clock": "rank 0's; other ranks shifted by their run_start clock_offset_ms "
                "(where measured)",
                "clock_offsets_ms": {str(r): round(o * 1000.0, 6) for r, o in offsets.items()},
            }
        )
    )
    out.write(',"traceEvents":[\n')
    first = True

    def write_event(text: str) -> None:
        nonlocal first
        if not first:
            out.write(",\n")
        out.write(text)
        first = False
        stats.events += 1

    for rank, p in files:
        named = False
        prev_end = -math.inf
        t0r = t0 + offsets.get(rank, 0.0)  # this rank's times on rank 0's clock
        for rec in records(p, stats):
            try:
                if isinstance(rec, RunStart):
                    buf = [] if named else _process_events(rank, rec)
                    named = True
                elif isinstance(rec, Step):
                    if not in_range(rec.step, steps):
                        continue
                    stats.step(rec.step)
                    # steps of a process follow each other (wall_ms is the time between
                    # step() calls); time.time() and the step clock may disagree by a few
                    # µs, so a step never starts before the previous one ended (proper
                    # nesting on the track)
                    dur = _r(rec.wall_ms * 1000.0)
                    start = max(_r((rec.time - t0r) * 1e6 - rec.wall_ms * 1000.0), prev_end)
                    prev_end = _r(start + dur)
                    buf = _step_events(rank, rec, start, dur)
                elif isinstance(rec, Eval):
                    if not in_range(rec.step, steps):
                        continue
                    buf = [_eval_event(rank, rec, t0r)]
                elif isinstance(rec, RunEnd):
                    buf = [_end_event(rank, rec, t0r)]
                else:
                    buf = []
                # a record's events are written only if all of them encode
                texts = [json.dumps(ev, separators=(",", ":"), allow_nan=False) for ev in buf]
            except (ArithmeticError, ValueError, TypeError) as e:  # an absurd figure: skipped
                stats.bad(
                    p,
                    0,
                    f"a {type(rec).__name__.lower()} record could not be exported "
                    f"({type(e).__name__})",
                )
                continue
            for text in texts:
                write_event(text)
        if not named:  # a file without run_start (written by another tool)
            name = {"name": f"rank {rank}"}
            write_event(
                json.dumps(
                    {"ph": "M", "name": "process_name", "pid": rank, "tid": 0, "args": name},
                    separators=(",", ":"),
                    allow_nan=False,
                )
            )
    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    ranks = {r for r, _ in files}
    _merge_traces(folder, ranks, steps, offsets, t0, write_event, stats)
    out.write("\n]}\n")
    return stats


def _origin(
    files: list[tuple[int, Path]], stats: ExportStats, steps: StepRange | None
) -> tuple[float, dict[int, float]]:
    """The trace's time origin: the earliest start of the first step (in range) of any rank,
    on rank 0's clock; and each rank's clock offset to rank 0 (s) from its first
    ``run_start``, where measured. (A first pass over each rank's first steps; its malformed
    lines are counted again later.)"""
    t0 = None
    offsets: dict[int, float] = {}
    for rank, p in files:
        for rec in records(p, stats):
            if isinstance(rec, RunStart) and rank not in offsets:
                clk = clock_offset(rec)
                if clk is not None and math.isfinite(clk[0]):
                    offsets[rank] = clk[0] / 1000.0
            if isinstance(rec, Step) and in_range(rec.step, steps):
                s = rec.time - rec.wall_ms / 1000.0 - offsets.get(rank, 0.0)
                t0 = s if t0 is None else min(t0, s)
                break
    stats.malformed, stats.errors = 0, []
    return (0.0 if t0 is None else t0), offsets


def _merge_traces(
    folder: Path,
    ranks: set[int],
    steps: StepRange | None,
    offsets: dict[int, float],
    t0: float,
    write_event: Any,
    stats: ExportStats,
) -> None:
    """The run's captured profiler traces (of its ranks, first step in range), on the
    export's timeline (tui/report/chrome_traces.py), one trace in memory at a time."""
    pids: dict[int, CT.RankPids] = {}
    flows = CT.FlowIds()
    for t in list_traces(folder):
        if t.rank not in ranks or not in_range(t.step, steps):
            continue
        try:
            d = CT.load(t.path)
            off_us, err_us = CT.unix_offset_us(d)
        except CT.TraceError as e:
            if len(stats.trace_errors) < 5:
                stats.trace_errors.append(f"{t.path}: {e}")
            continue
        shift = off_us - (offsets.get(t.rank, 0.0) + t0) * 1e6
        rp = pids.setdefault(t.rank, CT.RankPids(t.rank))
        first = None
        for ev in CT.events(d, rp, flows, shift):
            try:
                text = json.dumps(ev, separators=(",", ":"), allow_nan=False)
            except (ValueError, TypeError):
                continue
            if ev.get("ph") != "M":
                first = ev["ts"] if first is None else min(first, ev["ts"])
            write_event(text)
        marker = CT.capture_marker(t.rank, d.get(META_KEY), first, t.step, err_us)
        write_event(json.dumps(marker, separators=(",", ":"), allow_nan=False))
        stats.traces += 1


def _meta(rank: int, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"ph": "M", "name": name, "pid": rank, "tid": 0, "args": args}


def _process_events(rank: int, rec: RunStart) -> list[dict[str, Any]]:
    """The rank's track: its name (with host and device), order, and thread name."""
    label = f"rank {rank}"
    detail = " ".join(x for x in (rec.host, rec.device, rec.gpu_name or "") if x)
    return [
        _meta(rank, "process_name", {"name": f"{label} ({detail})" if detail else label}),
        _meta(rank, "process_sort_index", {"sort_index": rank}),
        _meta(rank, "thread_name", {"name": "training steps"}),
    ]


def _step_events(rank: int, rec: Step, start: float, dur: float) -> list[dict[str, Any]]:
    """A step's span (from ``start``, µs, for ``dur``), its regions laid inside it and its
    memory counter."""
    end = start + dur
    args: dict[str, Any] = {
        "wall_ms": rec.wall_ms,
        "samples": rec.samples,
        "epoch": rec.epoch,
        "unaccounted_ms": round(unaccounted_ms(rec.wall_ms, rec.regions), 4),
    }
    if rec.scalars:
        args.update({k: v for k, v in rec.scalars.items() if v is not None})
    if rec.trace:
        args["trace"] = rec.trace
    span = {"ph": "X", "name": f"step {rec.step}", "cat": "step", "pid": rank, "tid": 0}
    buf = [{**span, "ts": start, "dur": dur, "args": args}]
    for name, s, d in layout_regions(rec.regions, start, end):
        ms, count = rec.regions[name]
        share = round(ms / rec.wall_ms, 4) if rec.wall_ms > 0 else None
        buf.append(
            {
                "ph": "X",
                "name": name.rsplit("/", 1)[-1],
                "cat": "region",
                "pid": rank,
                "tid": 0,
                "ts": _r(s),
                "dur": _r(d),
                "args": {"region": name, "ms": ms, "count": count, "share": share},
            }
        )
    if rec.memory:
        mib = {k: round(v / MiB, 2) for k, v in rec.memory.items()}
        buf.append(
            {"ph": "C", "name": "memory (MiB)", "pid": rank, "tid": 0, "ts": _r(end), "args": mib}
        )
    return buf


def _instant(rank: int, name: str, t: float, t0: float, args: dict[str, Any]) -> dict[str, Any]:
    return {"ph": "i", "s": "p", "name": name, "pid": rank, "tid": 0, "ts": _r((t - t0) * 1e6)} | {
        "args": args
    }


def _eval_event(rank: int, rec: Eval, t0: float) -> dict[str, Any]:
    return _instant(rank, f"eval step {rec.step}", rec.time, t0, dict(rec.metrics))


def _end_event(rank: int, rec: RunEnd, t0: float) -> dict[str, Any]:
    args: dict[str, Any] = {"status": rec.status, "steps": rec.steps}
    if rec.error_type or rec.error_message:
        args["error"] = f"{rec.error_type or 'error'}: {rec.error_message or ''}"
    return _instant(rank, f"run end ({rec.status})", rec.time, t0, args)


# --------------------------------------------------------------------------- csv


def _steps(
    rank: int, p: Path, stats: ExportStats, steps: StepRange | None = None
) -> Iterator[tuple[int, int, Step]]:
    for rec in records(p, stats):
        if isinstance(rec, Step) and in_range(rec.step, steps):
            yield rec.step, rank, rec


def write_csv(
    run: str | os.PathLike[str], out: IO[str], steps: StepRange | None = None, nest: Any = None
) -> ExportStats:
    """Write one CSV row per step and rank (two streaming passes: column names, then rows)."""
    files = rank_files(run)
    stats = ExportStats(ranks=len(files), nest=nest)
    regions: dict[str, None] = {}
    mem: dict[str, None] = {}
    scalars: dict[str, None] = {}
    for rank, p in files:
        for _, _, s in _steps(rank, p, stats, steps):
            for k in s.regions:
                regions.setdefault(k, None)
            for k in s.memory or ():
                mem.setdefault(k, None)
            for k in s.scalars or ():
                scalars.setdefault(k, None)
    stats.malformed, stats.errors = 0, []
    reg = sorted(regions)  # alphabetical: parents sit right before their children
    # names escaped (tui.fmt.clean): the table may go to a terminal, and a name is the only text
    header = [
        "step",
        "rank",
        "epoch",
        "time",
        "wall_ms",
        "samples",
        *map(printable, reg),
        "unaccounted_ms",
        *(f"mem_{printable(k)}" for k in mem),
        *map(printable, scalars),
    ]
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    merged = heapq.merge(
        *(_steps(r, p, stats, steps) for r, p in files), key=lambda t: (t[0], t[1])
    )
    for step, rank, s in merged:
        try:
            row: list[Any] = [step, rank, s.epoch, f"{s.time:.3f}", f"{s.wall_ms:.4f}", s.samples]
            row += [f"{s.regions[k][0]:.4f}" if k in s.regions else "" for k in reg]
            row.append(f"{unaccounted_ms(s.wall_ms, s.regions):.4f}")
            m = s.memory or {}
            row += [m.get(k, "") for k in mem]
            sc = s.scalars or {}
            row += ["" if sc.get(k) is None else repr(float(sc[k])) for k in scalars]
        except (ArithmeticError, ValueError, TypeError) as e:  # an absurd figure: skip the row
            stats.bad(
                files[rank][1] if rank < len(files) else Path(run),
                0,
                f"step {step} of rank {rank} could not be exported ({type(e).__name__})",
            )
            continue
        stats.step(step)
        w.writerow(row)
    return stats
