"""Line parsing for the monitor, on the record format's own decoder.

A line is decoded and validated in one ``msgspec`` pass into the record structs of
:mod:`stagewatch.records` (the same definitions the timing core writes with): every
field the monitor uses has its type and range checked by the decoder, so a line is valid
only if what the decoder keeps is valid (a duplicate key keeps its last value, and that
value is the one checked). Steps become :class:`StepRow` tuples for the fold. The optional
C fast path (``tui/source/_regions.c``) reads a step's region values straight into arrays.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import msgspec
import numpy as np

from stagewatch import records
from stagewatch.records import (
    KNOWN_VERSIONS,
    Record,
    RecordError,
    RunEnd,
    RunStart,
    Step,
    StepRaw,
    check_major,
    explain,
)


class LIMITS:
    """What the monitor accepts: the record format's limits (``stagewatch.records``:
    every line the timing core writes is read back) plus the screen's display bounds."""

    MAX_LINE_BYTES = records.MAX_LINE_BYTES  # a longer line is one malformed line
    MAX_MS = records.MAX_MS  # 0 <= region ms, wall_ms < MAX_MS
    MAX_INT = records.MAX_INT  # |step|, epoch, samples, call counts, start/total steps...
    MAX_CALLS = records.MAX_INT
    MAX_VALUE = records.MAX_ABS_NUMBER  # |scalar|, |metric| < MAX_VALUE
    MAX_BYTES = records.MAX_BYTES_VALUE  # 0 <= memory bytes < MAX_BYTES
    MAX_NAME_CHARS = records.MAX_NAME_CHARS  # region, scalar and metric names
    MAX_JSON_DEPTH = records.MAX_DEPTH  # nesting, the run_start config included
    MAX_TIME = records.MAX_TIME  # |time| in seconds
    MAX_VERSION_DIGITS = records.MAX_VERSION_DIGITS  # "MAJOR.MINOR", ASCII digits only
    MAX_NAME_DEPTH = 64  # region name levels the tree shows (deeper: one "…" row)
    MAX_TREE_ROWS = 4096  # rows of a run's stage tree (more: one "…" row)


MAX_LINE = LIMITS.MAX_LINE_BYTES  # longer lines are counted as malformed without parsing
_Union = RunStart | Step | records.Eval | RunEnd
decode = msgspec.json.Decoder(_Union).decode
decode_raw = msgspec.json.Decoder(RunStart | StepRaw | records.Eval | RunEnd).decode
StepMsg = Step
StepRawMsg = StepRaw
OK_VERSIONS = KNOWN_VERSIONS


class StepRow(NamedTuple):
    """A validated step: ``keys`` are the region names, in the order of ``regions``."""

    step: int
    time: float
    wall: float
    samples: int
    epoch: int
    keys: tuple[str, ...]
    regions: dict[str, Any]  # name -> (ms, calls), validated
    memory: dict[str, Any] | None
    scalars: dict[str, Any] | None


class StepBlock:
    """Consecutive validated steps of one region schema, their values already in arrays.

    ``msgs`` are the decoded lines (regions raw); row i of ``ms``/``calls`` holds the values
    of ``msgs[i]``, one column per name of ``keys``. Only the reader's bulk path makes them.
    """

    __slots__ = ("bkeys", "calls", "keys", "ms", "msgs")

    def __init__(self, keys: tuple[str, ...], bkeys: tuple[bytes, ...], cap: int) -> None:
        self.keys = keys
        self.bkeys = bkeys
        self.msgs: list[Any] = []
        self.ms = np.empty((cap, len(keys)))
        self.calls = np.empty((cap, len(keys)))


_new_row = tuple.__new__


def parse_line(line: bytes | str) -> StepRow | Record | None:
    """One line -> StepRow, another record, or None for an unknown kind. Raises RecordError."""
    if len(line) > MAX_LINE:
        raise RecordError(f"line longer than {MAX_LINE} bytes")
    try:
        m = decode(line)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        why = explain(line, e)
        if why is None:
            return None
        raise why from None
    except RecursionError:
        raise RecordError(f"nested deeper than {LIMITS.MAX_JSON_DEPTH} levels") from None
    return convert(m)


def convert(m: Any) -> StepRow | Record:
    """A record the typed decoder accepted -> StepRow or the record. Raises RecordError."""
    check_major(m.version)
    if type(m) is Step:
        r = m.regions
        return _new_row(
            StepRow,
            (m.step, m.time, m.wall_ms, m.samples, m.epoch, tuple(r), r, m.memory, m.scalars),
        )
    return m


# The C fast path for a regions object (tui/source/_regions.c): None when the extension was not
# built (no compiler at install) or STAGEWATCH_PURE_PYTHON is set; the reader then folds
# StepRows only (same results, more CPU).
try:
    if os.environ.get("STAGEWATCH_PURE_PYTHON"):
        raise ImportError("STAGEWATCH_PURE_PYTHON is set")
    from tui.source import _regions
except ImportError:
    _regions = None
scan_regions = _regions.scan if _regions is not None else None
region_keys = _regions.keys if _regions is not None else None


def schema_of(raw: msgspec.Raw, row: StepRow) -> tuple[tuple[bytes, ...], tuple[str, ...]] | None:
    """(names as raw bytes, names) of a step the typed decoder accepted (``row``, from the
    same line as ``raw``), for :data:`scan_regions`; None when the raw names hold escapes
    or repeat (the dict kept fewer)."""
    kb = region_keys(raw) if region_keys is not None else None
    if kb is None or len(kb) != len(row.keys):
        return None
    try:
        if tuple(k.decode("utf-8") for k in kb) != row.keys:
            return None
    except UnicodeDecodeError:
        return None
    return kb, row.keys


def row_from_step(s: Step) -> StepRow:
    """StepRow of a Step record (text logs, tests)."""
    return StepRow(
        s.step,
        s.time,
        s.wall_ms,
        s.samples,
        s.epoch,
        tuple(s.regions),
        s.regions,
        s.memory,
        s.scalars,
    )
