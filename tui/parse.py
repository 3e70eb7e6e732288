"""Line parsing for the monitor: one pass of ``msgspec`` into typed structs, every line.

Decoding and validation are the same C pass: every field the monitor uses has its type
and range (:class:`LIMITS`, on the shared limits of `trainer.timing.records`) checked by the decoder, so a line is
valid only if what the decoder keeps is valid (a duplicate key keeps its last value, and
that value is the one checked). Unknown fields are skipped; a record of a newer major
version is refused; a kind this version does not know is skipped (and counted); anything
else wrong raises :class:`RecordError` with a one-line reason.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal, NamedTuple, Union

import msgspec
import numpy as np

from trainer.timing import records
from trainer.timing.records import (
    END_STATUSES,
    FORMAT_MAJOR,
    FORMAT_VERSION,
    Eval,
    FormatVersionError,
    Record,
    RecordError,
    RunEnd,
    RunStart,
    Step,
)


class LIMITS:
    """What the monitor accepts: the writer's shared limits (``trainer.timing.records``,
    block *limits*: every line the timing core writes is read back) plus the reader's own
    sanity and display bounds."""

    MAX_LINE_BYTES = records.MAX_LINE_BYTES  # a longer line is one malformed line
    MAX_MS = records.MAX_MS  # 0 <= region ms, wall_ms < MAX_MS
    MAX_INT = (
        records.MAX_INT
    )  # |step|, epoch, samples, call counts, start/total steps, pid... < MAX_INT
    MAX_CALLS = records.MAX_INT
    MAX_VALUE = records.MAX_ABS_NUMBER  # |scalar|, |metric| < MAX_VALUE
    MAX_BYTES = records.MAX_BYTES_VALUE  # 0 <= memory bytes < MAX_BYTES
    MAX_NAME_CHARS = records.MAX_NAME_CHARS  # region, scalar and metric names
    MAX_JSON_DEPTH = records.MAX_DEPTH  # nesting, the run_start config included
    MAX_TIME = 1e12  # |time| in seconds (reader-side: a time the screen can format)
    MAX_VERSION_DIGITS = 6  # "MAJOR.MINOR", ASCII digits only
    MAX_NAME_DEPTH = 64  # region name levels the tree shows (deeper: one "…" row)
    MAX_TREE_ROWS = 4096  # rows of a run's stage tree (more: one "…" row)


MAX_LINE = LIMITS.MAX_LINE_BYTES  # longer lines are counted as malformed without parsing
_M = msgspec.Meta
_D = LIMITS.MAX_VERSION_DIGITS
_VERSION_RE = re.compile(rf"[0-9]{{1,{_D}}}\.[0-9]{{1,{_D}}}")  # ASCII digits only (not "².0")

Version = Annotated[str, _M(pattern=rf"^[0-9]{{1,{_D}}}\.[0-9]{{1,{_D}}}$")]
Int = Annotated[int, _M(gt=-LIMITS.MAX_INT, lt=LIMITS.MAX_INT)]
Count = Annotated[int, _M(ge=0, lt=LIMITS.MAX_INT)]
Ms = Annotated[float, _M(ge=0, lt=LIMITS.MAX_MS)]
Calls = Annotated[int, _M(ge=0, lt=LIMITS.MAX_CALLS)]
Time = Annotated[float, _M(ge=-LIMITS.MAX_TIME, le=LIMITS.MAX_TIME)]
Value = Annotated[float, _M(gt=-LIMITS.MAX_VALUE, lt=LIMITS.MAX_VALUE)]
Bytes = Union[  # noqa: UP007
    Annotated[int, _M(ge=0, le=LIMITS.MAX_BYTES - 1)],
    Annotated[float, _M(ge=0, lt=LIMITS.MAX_BYTES)],
]
Name = Annotated[str, _M(max_length=LIMITS.MAX_NAME_CHARS)]


# A region's ``[inclusive ms, calls]``: decoded as a tuple (measured with the reader's GC pause:
# a little cheaper than an array-like Struct, and numpy takes tuples in one pass).
Region = tuple[Ms, Calls]


class _StepFields(msgspec.Struct, kw_only=True, gc=False):
    """What the two step decoders check alike (their ``v`` and ``regions`` differ)."""

    step: Int
    wall_ms: Ms
    time: Time = 0.0
    epoch: Int = 0
    samples: Count = 0
    memory: dict[str, Bytes | None] | None = None
    scalars: dict[Name, Value | None] | None = None


class _StepMsg(_StepFields, tag_field="kind", tag="step", gc=False):
    v: Version
    regions: dict[str, Region] = {}  # names: bounded in the fold, once per schema (cheaper)


class _StepRawMsg(_StepFields, tag_field="kind", tag="step", gc=False):
    """A step with its regions kept raw, for :data:`scan_regions` (the rest checked as in
    _StepMsg; ``v`` only by the reader's ``in OK_VERSIONS``: any other goes to the typed
    decoder, which checks its form, and a regex per line costs a fifth of this decode)."""

    v: str
    regions: msgspec.Raw = msgspec.Raw(b"{}")


class _ErrorMsg(msgspec.Struct):
    type: str | None = None
    message: str | None = None


class _StartMsg(msgspec.Struct, tag_field="kind", tag="run_start"):
    v: Version
    rank: Count
    run_id: str | None = ""
    world_size: Count = 1
    time: Time = 0.0
    host: str | None = ""
    pid: Count = 0
    device: str | None = "cpu"
    gpu_name: str | None = None
    torch_version: str | None = None
    config: dict[str, Any] | None = None
    total_steps: Count | None = None
    samples_per_step: Count | None = None
    device_memory_total: Count | None = None
    start_step: Count = 0


class _EvalMsg(msgspec.Struct, tag_field="kind", tag="eval"):
    v: Version
    step: Int
    time: Time = 0.0
    metrics: dict[Name, Value | None] | None = None


class _EndMsg(msgspec.Struct, tag_field="kind", tag="run_end"):
    v: Version
    status: Literal["completed", "failed", "interrupted"]
    time: Time = 0.0
    steps: Int = 0
    error: _ErrorMsg | None = None


assert set(END_STATUSES) == {"completed", "failed", "interrupted"}

_decode = msgspec.json.Decoder(Union[_StepMsg, _StartMsg, _EvalMsg, _EndMsg]).decode  # noqa: UP007
_decode_any = msgspec.json.Decoder().decode
_decode_raw = msgspec.json.Decoder(Union[_StepRawMsg, _StartMsg, _EvalMsg, _EndMsg]).decode  # noqa: UP007


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
_OK_VERSIONS: set[str] = {FORMAT_VERSION}


def _check_major(v: str) -> None:
    if v in _OK_VERSIONS:
        return
    if int(v.partition(".")[0]) > FORMAT_MAJOR:
        raise FormatVersionError(
            f"record format version {v} is newer than this stagewatch understands "
            f"({FORMAT_VERSION}); upgrade stagewatch to read it"
        )
    if len(_OK_VERSIONS) < 64:
        _OK_VERSIONS.add(v)


def _check_config(cfg: Any) -> None:
    """Nesting and integers of a run_start config within the limits (iteratively)."""
    stack = [(cfg, 1)]
    while stack:
        x, depth = stack.pop()
        if depth > LIMITS.MAX_JSON_DEPTH:
            raise RecordError(f"config nested deeper than {LIMITS.MAX_JSON_DEPTH} levels")
        t = type(x)
        if t is dict:
            stack.extend((v, depth + 1) for v in x.values())
        elif t is list:
            stack.extend((v, depth + 1) for v in x)
        elif t is int and not -LIMITS.MAX_INT < x < LIMITS.MAX_INT:
            raise RecordError("config holds an integer out of range")


def _explain(line: bytes | str, err: Exception) -> RecordError | None:
    """Why a line the typed decoder refused is bad; None when it is a kind we do not know."""
    try:
        d = _decode_any(line)
    except RecursionError:
        return RecordError(f"nested deeper than {LIMITS.MAX_JSON_DEPTH} levels")
    except msgspec.DecodeError as e:
        return RecordError(f"not JSON: {e}")
    if type(d) is not dict:
        return RecordError("record is not a JSON object")
    v = d.get("v")
    if type(v) is not str or _VERSION_RE.fullmatch(v) is None:
        return RecordError(f"field 'v' must be a 'MAJOR.MINOR' string, got {str(v)[:40]!r}")
    try:
        _check_major(v)
    except FormatVersionError as e:
        return e
    kind = d.get("kind")
    if type(kind) is not str:
        return RecordError("field 'kind' must be a string")
    if kind not in ("step", "run_start", "eval", "run_end"):
        return None
    return RecordError(f"{kind}: {err}")


def parse_line(line: bytes | str) -> StepRow | Record | None:
    """One line -> StepRow, another record, or None for an unknown kind. Raises RecordError."""
    if len(line) > MAX_LINE:
        raise RecordError(f"line longer than {MAX_LINE} bytes")
    try:
        m = _decode(line)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        why = _explain(line, e)
        if why is None:
            return None
        raise why from None
    except RecursionError:
        raise RecordError(f"nested deeper than {LIMITS.MAX_JSON_DEPTH} levels") from None
    return _convert(m)


def _convert(m: Any) -> StepRow | Record:
    """A message the typed decoder accepted -> StepRow or record. Raises RecordError."""
    _check_major(m.v)
    t = type(m)
    if t is _StepMsg:
        r = m.regions
        return _new_row(
            StepRow,
            (m.step, m.time, m.wall_ms, m.samples, m.epoch, tuple(r), r, m.memory, m.scalars),
        )
    if t is _StartMsg:
        cfg = m.config or {}
        _check_config(cfg)
        return RunStart(
            run_id=m.run_id or "",
            rank=m.rank,
            world_size=m.world_size,
            time=m.time,
            host=m.host or "",
            pid=m.pid,
            device=m.device or "cpu",
            gpu_name=m.gpu_name,
            torch_version=m.torch_version,
            config=cfg,
            total_steps=m.total_steps,
            samples_per_step=m.samples_per_step,
            device_memory_total=m.device_memory_total,
            start_step=m.start_step,
            version=m.v,
        )
    if t is _EvalMsg:
        metrics = {k: v for k, v in (m.metrics or {}).items() if v is not None}
        return Eval(step=m.step, time=m.time, metrics=metrics, version=m.v)
    err = m.error
    return RunEnd(
        time=m.time,
        status=m.status,
        steps=m.steps,
        error_type=err.type if err else None,
        error_message=err.message if err else None,
        version=m.v,
    )


# for the reader's inline loop (the usual step line without a call to parse_line)
decode = _decode
StepMsg = _StepMsg
OK_VERSIONS = _OK_VERSIONS
convert = _convert


# The C fast path for a regions object (tui/_regions.c): None when the extension was not
# built (no compiler at install) or STAGEWATCH_PURE_PYTHON is set; the reader then folds
# StepRows only (same results, more CPU).
try:
    if os.environ.get("STAGEWATCH_PURE_PYTHON"):
        raise ImportError("STAGEWATCH_PURE_PYTHON is set")
    from tui import _regions
except ImportError:
    _regions = None
scan_regions = _regions.scan if _regions is not None else None
region_keys = _regions.keys if _regions is not None else None
decode_raw = _decode_raw
StepRawMsg = _StepRawMsg


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


def parse_fast(line: bytes) -> StepRow | None:
    """A step line as a StepRow, or None for anything else (kept for callers of the old
    fast path; :func:`parse_line` is as fast now)."""
    try:
        row = parse_line(line)
    except RecordError:
        return None
    return row if type(row) is StepRow else None


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
