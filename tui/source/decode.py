"""Line parsing for the monitor, on the record format's own decoder.

A line is decoded and validated in one ``msgspec`` pass into the record structs of
:mod:`stagewatch.records` (the same definitions the timing core writes with): every
field the monitor uses has its type and range checked by the decoder, so a line is valid
only if what the decoder keeps is valid (a duplicate key keeps its last value, and that
value is the one checked). Steps become :class:`StepRow` tuples for the fold. The optional
C fast path (``tui/source/_regions.c``) reads a step's region values straight into arrays;
:func:`decode_batch` decodes a file's lines with it or without it, to the same result.
"""

from __future__ import annotations

import os
from typing import Any, TypeAlias

import msgspec

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
)
from tui.model.rows import LIMITS, StepBlock, StepRow

MAX_LINE = LIMITS.MAX_LINE_BYTES  # longer lines are counted as malformed without parsing
_Union = RunStart | Step | records.Eval | RunEnd
decode = msgspec.json.Decoder(_Union).decode
decode_raw = msgspec.json.Decoder(RunStart | StepRaw | records.Eval | RunEnd).decode
StepMsg = Step
StepRawMsg = StepRaw
OK_VERSIONS = KNOWN_VERSIONS


_new_row = tuple.__new__


def parse_line(line: bytes | str) -> StepRow | Record | None:
    """One line -> StepRow, another record, or None for an unknown kind. Raises RecordError.
    (The slow path of :func:`decode_batch`: any line the inline decoding did not take.)"""
    rec = records.parse(line)
    return None if rec is None else convert(rec)


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


# --------------------------------------------------------------------------- batches

Schema: TypeAlias = tuple[tuple[bytes, ...], tuple[str, ...]]  # see schema_of
_MAX_MS = float(LIMITS.MAX_MS)
_MAX_CALLS = int(LIMITS.MAX_CALLS)


def fast_path() -> bool:
    """Whether :func:`decode_batch` with ``blocks`` uses the C fast path (the extension
    was built and ``STAGEWATCH_PURE_PYTHON`` is not set)."""
    return scan_regions is not None


class Batch:
    """What :func:`decode_batch` made of a file's lines."""

    __slots__ = (
        "dropped",
        "items",
        "last_error",
        "line_nos",
        "lines",
        "malformed",
        "schema",
        "skipped",
        "starts",
        "steps",
    )

    def __init__(self, lines: int, schema: Schema | None) -> None:
        self.items: list[Any] = []  # StepRows, StepBlocks and other records, in file order
        self.steps: list[int] = []  # each step's number (a StepBlock's: each row's), in order
        self.line_nos: list[int] = []  # the line number of each of steps
        self.starts: list[tuple[int, int]] = []  # (line number, start_step) of run_starts
        self.lines = lines  # lines counted (blank ones are not), these included
        self.malformed = 0  # lines that are not valid records
        self.skipped = 0  # records of a kind this version does not know
        self.dropped = 0  # records the writer dropped, as its records say (their "dropped")
        self.last_error = ""  # "line N: why" of the last malformed line
        self.schema = schema  # the region names of the last step decoded in full

    def other(self, line: bytes, m: Any, raw: msgspec.Raw | None, n: int) -> bool:
        """Line ``n``, which the inline paths did not take (``m``: what the first decode
        made of it, or None): its record appended, or the line counted. True for a valid
        record (appended, or of a kind this version does not know); False for a bad line."""
        try:
            rec = parse_line(line) if m is None else convert(m)
        except RecordError as e:
            self.malformed += 1
            self.last_error = f"line {n}: {e}"[:200]
            return False
        except Exception as e:  # never let one line stop the monitor
            self.malformed += 1
            self.last_error = f"line {n}: {type(e).__name__}: {e}"[:200]
            return False
        if rec is None:
            self.skipped += 1
            return True
        if m is not None and getattr(m, "dropped", None):
            self.dropped += m.dropped
        self.items.append(rec)
        if type(rec) is RunStart:
            self.starts.append((n, rec.start_step))
        elif type(rec) is StepRow:
            self.steps.append(rec.step)
            self.line_nos.append(n)
            if raw is not None:  # the next lines of this schema take the fast path
                self.schema = schema_of(raw, rec) or self.schema
        return True


def decode_batch(
    lines: list[bytes], counted: int, schema: Schema | None, blocks: bool = False
) -> Batch:
    """Complete lines of a JSONL file (``counted`` lines before them) -> a :class:`Batch`.

    Bad lines are counted, with the same reasons whichever path decodes them. ``blocks``:
    steps may come as :class:`StepBlock` (with the C fast path; ``schema`` is the previous
    batch's :attr:`Batch.schema`); otherwise every step is a :class:`StepRow`.
    """
    if blocks and scan_regions is not None:
        return _decode_fast(lines, Batch(counted, schema))
    return _decode_typed(lines, Batch(counted, schema))


def _decode_typed(lines: list[bytes], b: Batch) -> Batch:
    """Every line through the typed decoder: steps of a known version inline, the rest
    through :meth:`Batch.other` (which says why a line is bad)."""
    n = b.lines
    append, add_step, add_no = b.items.append, b.steps.append, b.line_nos.append
    dec, step_type, ok_versions, row = decode, Step, OK_VERSIONS, StepRow
    for line in lines:
        if not line or line.isspace():
            continue
        n += 1
        m = None
        if len(line) <= MAX_LINE:
            try:
                m = dec(line)
            except Exception:
                m = None
        if type(m) is step_type and m.version in ok_versions:
            r = m.regions
            st = m.step
            if m.dropped:
                b.dropped += m.dropped
            append(
                _new_row(
                    row,
                    (st, m.time, m.wall_ms, m.samples, m.epoch, tuple(r), r, m.memory, m.scalars),
                )
            )
            add_step(st)
            add_no(n)
        else:
            b.other(line, m, None, n)
    b.lines = n
    return b


def _decode_fast(lines: list[bytes], b: Batch) -> Batch:
    """Steps of the last full step's region names go into StepBlocks through the C scan; what
    it refuses (a new schema, a value it cannot convert exactly, anything malformed) goes
    through :meth:`Batch.other`, which decides."""
    n = b.lines
    sch = b.schema
    append, add_step, add_no = b.items.append, b.steps.append, b.line_nos.append
    # the block steps are added to (appended to the items at its first step), its keys,
    # arrays and messages; bkeys None: no open block
    block: StepBlock | None = None
    bkeys: Any = None
    bms = bcalls = None
    bmsgs: list[Any] = []
    cap = len(lines)
    dec, scan, raw_type, ok_versions = decode_raw, scan_regions, StepRaw, OK_VERSIONS
    for line in lines:
        if not line or line.isspace():
            continue
        n += 1
        m = None
        if len(line) <= MAX_LINE:
            try:
                m = dec(line)
            except Exception:
                m = None
        raw = None
        if type(m) is raw_type:
            raw = m.regions
            if m.dropped:  # counted here: other() below gets this line without m
                b.dropped += m.dropped
            if sch is not None and m.version in ok_versions:
                if bkeys is not sch[0]:
                    block = StepBlock(sch[1], sch[0], cap)
                    bkeys, bms, bcalls, bmsgs = block.bkeys, block.ms, block.calls, block.msgs
                if scan(raw, bkeys, bms, bcalls, len(bmsgs), _MAX_MS, _MAX_CALLS):
                    if not bmsgs:
                        append(block)
                    bmsgs.append(m)
                    add_step(m.step)
                    add_no(n)
                    continue
            m = None  # a new schema, or values the fast path left to the typed decoder
        if b.other(line, m, raw, n):
            # steps after a record go into a new block: records stay in file order between
            # steps (a kind not known too, so the fold's batches do not depend on the kinds
            # this version knows)
            bkeys = None
            sch = b.schema
    b.lines = n
    return b
