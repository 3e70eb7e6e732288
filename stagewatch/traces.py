"""Captured step traces beside a run: their names, the on-demand request file. Torch-free.

A logger with slow-step capture on (:mod:`stagewatch.timing.capture`) writes one
``torch.profiler`` trace per capture::

    <run_dir>/traces/step<N>.rank<R>.json.gz   N: the first step the trace covers

gzip'd Chrome-trace JSON as ``torch.profiler`` exports it, with one more top-level key,
``"stagewatch"`` (:data:`META_KEY`): ``rank``, ``step`` (first step), ``steps`` (how many),
``trigger`` (``slow``/``request``/``signal``) and ``anchors``: ``[[t0_ns, t1_ns], ...]``,
the Unix time (``time.time_ns()``, this rank's clock) just before and just after each
``record_function`` named :data:`ANCHOR` at the start of the trace. The profiler's ``ts``
(µs) has its own origin; an anchor event ``[ts, ts + dur]`` lies within its ``[t0, t1]``,
which places the profiler's clock on the Unix clock to within ``((t1 - t0) - dur) / 2``
(:func:`profiler_to_unix_us`).

A capture is asked for by writing :data:`REQUEST_FILE` in the run folder (``tui watch``'s
``c`` key, :func:`write_request`): each rank of the run captures its next steps once per
new version of the file (its modification time), within about a second.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

TRACES_DIR = "traces"
REQUEST_FILE = "capture.request"
META_KEY = "stagewatch"
ANCHOR = "stagewatch/clock"
TRACE_RE = re.compile(r"^step(\d{1,12})\.rank(\d{1,6})\.json\.gz$")
MAX_REQUEST_STEPS = 16


def trace_name(step: int, rank: int) -> str:
    """``step<N>.rank<R>.json.gz``."""
    return f"step{step}.rank{rank}.json.gz"


def trace_path(run_dir: str | os.PathLike[str], step: int, rank: int) -> str:
    return os.path.join(os.fspath(run_dir), TRACES_DIR, trace_name(step, rank))


class TraceFile(NamedTuple):
    """One captured trace on disk."""

    step: int  # the first step it covers
    rank: int
    path: Path


def parse_trace_name(name: str) -> tuple[int, int] | None:
    """(step, rank) of ``step<N>.rank<R>.json.gz``, else None."""
    m = TRACE_RE.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def list_traces(run_dir: str | os.PathLike[str], limit: int = 256) -> list[TraceFile]:
    """The traces of a run, by step then rank (at most ``limit``, the latest steps); [] when
    there are none or the folder cannot be read."""
    folder = Path(run_dir) / TRACES_DIR
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    out = []
    for n in names:
        sr = parse_trace_name(n)
        if sr is not None:
            out.append(TraceFile(sr[0], sr[1], folder / n))
    out.sort(key=lambda t: (t.step, t.rank))
    return out[-limit:]


def request_path(run_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(run_dir), REQUEST_FILE)


def write_request(run_dir: str | os.PathLike[str], steps: int = 1) -> str:
    """Ask every rank of the run in ``run_dir`` to capture its next ``steps`` steps.

    Written atomically (a new file each time, so its modification time is new). Returns
    the path. Raises OSError when the folder cannot be written."""
    path = request_path(run_dir)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"time": time.time(), "steps": max(1, min(int(steps), MAX_REQUEST_STEPS))}, f)
    os.replace(tmp, path)
    return path


def read_request_steps(path: str, default: int) -> int:
    """The ``steps`` a request file asks for (``default`` when it says nothing valid)."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.loads(f.read(4096))
        n = d.get("steps") if isinstance(d, dict) else None
        if type(n) is int and 1 <= n <= MAX_REQUEST_STEPS:
            return n
    except (OSError, ValueError):
        pass
    return default


def profiler_to_unix_us(
    events: Sequence[Any], anchors: Sequence[Any]
) -> tuple[float, float] | None:
    """(offset, uncertainty) µs such that ``unix_us = ts + offset`` for the profiler's
    events, from the anchor events (:data:`ANCHOR`, in trace order) and the ``[t0_ns, t1_ns]``
    pairs recorded around them; the tightest pair wins. None when they cannot be matched."""
    spans = [
        e
        for e in events
        if isinstance(e, dict)
        and e.get("name") == ANCHOR
        and e.get("ph") == "X"
        and isinstance(e.get("ts"), (int, float))
    ]
    spans.sort(key=lambda e: e["ts"])
    best: tuple[float, float] | None = None
    for e, pair in zip(spans, anchors, strict=False):
        try:
            t0, t1 = (float(pair[0]) / 1000.0, float(pair[1]) / 1000.0)
            ts, dur = float(e["ts"]), float(e.get("dur", 0.0))
        except (TypeError, ValueError, IndexError):
            continue
        if not t1 >= t0 or dur < 0:
            continue
        off = (t0 + t1) / 2.0 - (ts + dur / 2.0)
        err = max(0.0, ((t1 - t0) - dur) / 2.0)
        if best is None or err < best[1]:
            best = (off, err)
    return best
