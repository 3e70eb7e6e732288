"""Captured ``torch.profiler`` traces merged into ``tui export --format chrome``.

A captured trace (:mod:`stagewatch.traces`) holds the profiler's Chrome-trace events with
``ts`` in µs from the profiler's own origin. Its ``stagewatch.anchors`` place that origin on
the rank's Unix clock (:func:`stagewatch.traces.profiler_to_unix_us`, to within the anchor's
uncertainty; a trace without anchors falls back on the profiler's ``baseTimeNanoseconds``,
which ``torch.profiler`` writes as the Unix time of its origin). The rank's clock offset to
rank 0 (``run_start``'s ``clock_offset_ms``) then puts it on rank 0's clock, the export's
timeline::

    export_ts = ts + profiler_to_unix_us - clock_offset_ms * 1000 - origin_us

GPU events are already on the profiler's CPU timebase (Kineto correlates them).

Each rank's profiler processes (its CPU threads, each GPU stream) become processes of their
own, ``rank R torch: <name>`` (pid ``TORCH_PID + 100 R + i``), listed after the ranks' stage
tracks; flow ids are renumbered (integers, unique across the export) so that two traces'
flows never join.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from typing import Any

from stagewatch import traces

TORCH_PID = 1_000_000
MAX_PIDS = 100  # profiler processes per rank (CPU + GPU streams' devices)
MAX_TRACE_BYTES = 1 << 30  # a bigger decompressed trace is skipped


class TraceError(ValueError):
    """A trace file that cannot be merged (one line saying why)."""


def load(path: Any) -> dict[str, Any]:
    """The JSON object of a gzip'd trace. Raises TraceError."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read(MAX_TRACE_BYTES + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise TraceError(f"not a readable gzip file ({e})") from None
    if len(data) > MAX_TRACE_BYTES:
        raise TraceError(f"larger than {MAX_TRACE_BYTES >> 20} MiB uncompressed; skipped")
    try:
        d = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise TraceError(f"not JSON ({type(e).__name__})") from None
    if not isinstance(d, dict) or not isinstance(d.get("traceEvents"), list):
        raise TraceError("not a Chrome trace (no traceEvents list)")
    return d


def unix_offset_us(d: dict[str, Any]) -> tuple[float, float]:
    """(offset, uncertainty) µs with ``unix_us = ts + offset``. Raises TraceError."""
    meta = d.get(traces.META_KEY)
    anchors = meta.get("anchors") if isinstance(meta, dict) else None
    if isinstance(anchors, list) and anchors:
        got = traces.profiler_to_unix_us(d["traceEvents"], anchors)
        if got is not None:
            return got
    base = d.get("baseTimeNanoseconds")
    if isinstance(base, (int, float)) and not isinstance(base, bool) and base > 0:
        return float(base) / 1000.0, float("nan")
    raise TraceError("no clock anchor and no baseTimeNanoseconds: cannot place it in time")


class FlowIds:
    """New integer flow ids, unique across the export: one table per trace."""

    def __init__(self) -> None:
        self.next = 1
        self.table: dict[Any, int] = {}

    def new_trace(self) -> None:
        self.table = {}

    def get(self, old: Any) -> int:
        key = old if isinstance(old, (int, str)) else repr(old)
        new = self.table.get(key)
        if new is None:
            new = self.table[key] = self.next
            self.next += 1
        return new


class RankPids:
    """The export pids of one rank's profiler processes (stable across its traces)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.map: dict[Any, int] = {}
        self.named: set[tuple[int, Any, str]] = set()

    def get(self, pid: Any) -> int | None:
        key = pid if isinstance(pid, (int, str)) and not isinstance(pid, bool) else None
        if key is None:
            return None
        new = self.map.get(key)
        if new is None:
            if len(self.map) >= MAX_PIDS:
                return None
            new = TORCH_PID + MAX_PIDS * self.rank + len(self.map)
            self.map[key] = new
        return new


def events(
    d: dict[str, Any], pids: RankPids, flows: FlowIds, shift_us: float
) -> Iterator[dict[str, Any]]:
    """The trace's events for the export: ``ts + shift_us``, pids of ``pids``, metadata once
    per process/thread, flow ids renumbered by ``flows``. Events that are not objects are
    skipped."""
    rank = pids.rank
    flows.new_trace()
    for e in d["traceEvents"]:
        if not isinstance(e, dict):
            continue
        pid = pids.get(e.get("pid", 0))
        if pid is None:
            continue
        ph = e.get("ph")
        out = dict(e)
        out["pid"] = pid
        if ph == "M":
            yield from _meta(out, pids, rank, pid)
            continue
        ts = e.get("ts")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            continue
        out["ts"] = round(float(ts) + shift_us, 3)
        if "id" in e and ph in ("s", "t", "f"):
            out["id"] = flows.get(e["id"])
        yield out


def _meta(out: dict[str, Any], pids: RankPids, rank: int, pid: int) -> Iterator[dict[str, Any]]:
    name = out.get("name")
    key = (pid, out.get("tid"), str(name))
    if key in pids.named:
        return
    pids.named.add(key)
    out["ts"] = 0
    args = out.get("args") if isinstance(out.get("args"), dict) else {}
    if name == "process_name":
        out["args"] = {"name": f"rank {rank} torch: {args.get('name', '')}".rstrip(": ")}
    elif name == "process_sort_index":
        out["args"] = {"sort_index": pid}
    yield out


def capture_marker(
    rank: int, meta: Any, first_ts: float | None, step: int, err_us: float
) -> dict[str, Any]:
    """An instant event on the rank's stage track where its capture starts."""
    trigger = meta.get("trigger") if isinstance(meta, dict) else None
    args: dict[str, Any] = {"step": step, "trigger": trigger or "unknown"}
    if err_us == err_us:  # not NaN
        args["clock_uncertainty_us"] = round(err_us, 3)
    return {
        "ph": "i",
        "s": "t",
        "name": f"profiler capture ({trigger or 'unknown'})",
        "pid": rank,
        "tid": 0,
        "ts": round(first_ts or 0.0, 3),
        "args": args,
    }
