"""The stagewatch record format: one JSONL file per rank and run, shared by writer and monitor.

This module imports neither torch nor Textual. ``docs/record-format.md`` is its prose twin.

Layout::

    <log_root>/<run_id>/rank<R>.jsonl      one record per line, UTF-8, ``\\n`` terminated
    <log_root>/<run_id>/timing_rank<R>.log  the classic text log (optional)

Every record is a JSON object with ``"v"`` (format version ``"MAJOR.MINOR"``) and ``"kind"``.
Readers ignore fields they do not know; a record of a newer *major* version is refused.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from typing import Annotated, Any, Literal, Union, get_args

import msgspec

FORMAT_VERSION = "1.0"
FORMAT_MAJOR = 1

KIND_RUN_START = "run_start"
KIND_STEP = "step"
KIND_EVAL = "eval"
KIND_RUN_END = "run_end"
KINDS = (KIND_RUN_START, KIND_STEP, KIND_EVAL, KIND_RUN_END)

STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"
STATUS_INTERRUPTED = "interrupted"
END_STATUSES = (STATUS_COMPLETED, STATUS_FAILED, STATUS_INTERRUPTED)

DEFAULT_LOG_ROOT = "runs/logs"
RANK_FILE_RE = re.compile(r"^rank(\d+)\.jsonl$")
# the original TimingLogger's files too: ``timing_log_<timestamp>.txt``, ``timing.log``
TEXT_LOG_RE = re.compile(r"^timing(?:[_.-].*)?\.(?:log|txt)$", re.IGNORECASE)
_RUN_ID_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


# --------------------------------------------------------------------------- limits
# Shared reader/writer limits. The writer drops (with one warning) any value outside them,
# the reader refuses a line holding one as malformed, so every value the writer accepts
# is read back. docs/record-format.md "Limits" is the prose twin.

MAX_LINE_BYTES = 4 * 1024 * 1024  # a longer line is malformed (not parsed)
MAX_MS = 1e12  # region and wall times: 0 <= ms < MAX_MS, also their sum within one step
MAX_INT = 10**12  # step, epoch, samples, call counts, start/total steps: |x| < MAX_INT
MAX_ABS_NUMBER = 1e300  # scalars, metrics and other numbers: |x| < MAX_ABS_NUMBER
MAX_BYTES_VALUE = 2**63  # memory figures (bytes): 0 <= x < MAX_BYTES_VALUE
MAX_NAME_CHARS = 4096  # a region name (its whole path) or a scalar/metric name
MAX_DEPTH = 32  # nesting of objects/arrays in a record (the run_start config included)
MAX_TIME = 1e12  # |time| in seconds (a time a reader can format)
MAX_VERSION_DIGITS = 6  # "MAJOR.MINOR", ASCII digits only (not "².0")


class RecordError(ValueError):
    """A line that is not a valid record (bad JSON, wrong types, unknown kind...)."""


class FormatVersionError(RecordError):
    """A record written by a newer, incompatible major version of the format."""


# --------------------------------------------------------------------------- naming


def make_run_id(name: str = "run", when: float | None = None) -> str:
    """A run id that sorts by start time: ``20261126-122300-<name>-<4 hex>`` (UTC)."""
    t = time.gmtime(time.time() if when is None else when)
    safe = _RUN_ID_SAFE.sub("_", name).strip("_") or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S', t)}-{safe[:40]}-{secrets.token_hex(2)}"


def rank_file_name(rank: int) -> str:
    return f"rank{rank}.jsonl"


def text_log_name(rank: int) -> str:
    return f"timing_rank{rank}.log"


def run_dir(log_root: str | os.PathLike[str], run_id: str) -> str:
    return os.path.join(os.fspath(log_root), run_id)


def rank_of_file(filename: str) -> int | None:
    """Rank number of ``rank<R>.jsonl``, else None."""
    m = RANK_FILE_RE.match(os.path.basename(filename))
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------- types
# What a field may hold: the limits above as msgspec constraints. The decoder checks them
# in the same C pass that parses the line; constructing a record in Python does not (the
# timing core cleans its inputs to the same limits first).

_M = msgspec.Meta
Version = Annotated[
    str,
    _M(pattern=rf"^[0-9]{{1,{MAX_VERSION_DIGITS}}}\.[0-9]{{1,{MAX_VERSION_DIGITS}}}$"),
]
Int = Annotated[int, _M(gt=-MAX_INT, lt=MAX_INT)]
Count = Annotated[int, _M(ge=0, lt=MAX_INT)]
StepNo = Annotated[int, _M(ge=1, lt=MAX_INT)]  # step numbers start at 1
Ms = Annotated[float, _M(ge=0, lt=MAX_MS)]
Time = Annotated[float, _M(ge=-MAX_TIME, le=MAX_TIME)]
Value = Annotated[float, _M(gt=-MAX_ABS_NUMBER, lt=MAX_ABS_NUMBER)]
Bytes = Union[  # noqa: UP007
    Annotated[int, _M(ge=0, le=MAX_BYTES_VALUE - 1)],
    Annotated[float, _M(ge=0, lt=MAX_BYTES_VALUE)],
]
Name = Annotated[str, _M(max_length=MAX_NAME_CHARS)]
# A region's ``[inclusive ms, calls]``, decoded as a tuple (cheaper than an array-like
# Struct, and numpy takes tuples in one pass).
Region = tuple[Ms, Count]
Unset = msgspec.UnsetType  # a field holding UNSET is left out of the line
Status = Literal["completed", "failed", "interrupted"]
assert set(get_args(Status)) == set(END_STATUSES)


# --------------------------------------------------------------------------- records


class RunStart(msgspec.Struct, tag_field="kind", tag=KIND_RUN_START, kw_only=True):
    """First record of each rank file (and of each resumed segment)."""

    version: Version = msgspec.field(default=FORMAT_VERSION, name="v")
    run_id: str | None = ""
    rank: Count
    world_size: Count = 1
    time: Time = 0.0
    host: str | None = ""
    pid: Count = 0
    device: str | None = "cpu"
    gpu_name: str | None = None
    torch_version: str | None = None
    config: dict[str, Any] | None = msgspec.field(default_factory=dict)
    total_steps: Count | None = None
    samples_per_step: Count | None = None
    device_memory_total: Count | None = None  # bytes
    start_step: Count = 0  # >0 when a resumed run continues an earlier one
    # this rank's clock minus rank 0's (ms) and the bound on that estimate's error (ms),
    # measured at run start (stagewatch.timing.clocks); absent: not measured
    clock_offset_ms: Value | Unset | None = msgspec.UNSET
    clock_error_ms: Ms | Unset | None = msgspec.UNSET

    def __post_init__(self) -> None:
        # null is read as the field's default; the config's depth and integers are checked
        # here (msgspec makes a ValueError raised here a validation error of the line)
        if self.run_id is None:
            self.run_id = ""
        if self.host is None:
            self.host = ""
        if self.device is None:
            self.device = "cpu"
        if self.config is None:
            self.config = {}
        else:
            _check_config(self.config)


class Step(msgspec.Struct, tag_field="kind", tag=KIND_STEP, kw_only=True, gc=False):
    """One training step of one rank. ``regions`` maps name -> (inclusive ms, calls)."""

    version: Version = msgspec.field(default=FORMAT_VERSION, name="v")
    step: StepNo
    epoch: Int = 0
    time: Time = 0.0
    wall_ms: Ms
    samples: Count = 0
    # region names are bounded by the monitor's fold, once per schema (cheaper than here)
    regions: dict[str, Region] = {}
    memory: dict[str, Bytes | None] | Unset | None = None  # allocated, reserved, peak, rss
    scalars: dict[Name, Value | None] | Unset | None = None  # loss, lr, ...
    # records the writer dropped (its queue full) since the last one written; absent: none
    dropped: Count | Unset = msgspec.UNSET
    # the profiler trace that covers this step (path relative to the run folder); absent:
    # not captured (stagewatch.timing.capture)
    trace: Name | Unset = msgspec.UNSET


class StepRaw(Step, kw_only=True, gc=False):
    """A step line decoded with its ``regions`` object kept raw, for the monitor's fast path
    (which reads the values straight into arrays). The other fields are checked as in
    :class:`Step`; ``version`` is not (the caller compares it with :data:`KNOWN_VERSIONS`,
    and sends any other line to :func:`decode`: a regex per line costs a fifth of this
    decode). Never written."""

    version: str = msgspec.field(default=FORMAT_VERSION, name="v")
    regions: msgspec.Raw = msgspec.Raw(b"{}")  # type: ignore[assignment]


class Eval(msgspec.Struct, tag_field="kind", tag=KIND_EVAL, kw_only=True):
    """Metrics of an evaluation after ``step``."""

    version: Version = msgspec.field(default=FORMAT_VERSION, name="v")
    step: Int
    time: Time = 0.0
    metrics: dict[Name, Value | None] | None = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        # a non-finite metric is written as null: read, it is absent
        m = self.metrics
        if m is None:
            self.metrics = {}
        elif None in m.values():
            self.metrics = {k: v for k, v in m.items() if v is not None}


class RunError(msgspec.Struct):
    """Why a run failed: the exception's type name and message."""

    type: str | None = None
    message: str | None = None


class RunEnd(msgspec.Struct, tag_field="kind", tag=KIND_RUN_END, kw_only=True):
    """Last record of a rank file: how the run ended."""

    version: Version = msgspec.field(default=FORMAT_VERSION, name="v")
    time: Time = 0.0
    status: Status
    steps: Int = 0
    error: RunError | Unset | None = msgspec.UNSET
    dropped: Count | Unset = msgspec.UNSET  # as in Step: records dropped just before this one

    @property
    def error_type(self) -> str | None:
        return self.error.type if self.error else None

    @property
    def error_message(self) -> str | None:
        return self.error.message if self.error else None


Record = RunStart | Step | Eval | RunEnd


def _check_config(cfg: Any) -> None:
    """Nesting and integers of a run_start config within the limits (iteratively)."""
    stack = [(cfg, 1)]
    while stack:
        x, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"config nested deeper than {MAX_DEPTH} levels")
        t = type(x)
        if t is dict:
            stack.extend((v, depth + 1) for v in x.values())
        elif t is list:
            stack.extend((v, depth + 1) for v in x)
        elif t is int and not -MAX_INT < x < MAX_INT:
            raise ValueError("config holds an integer out of range")


def clock_offset(start: RunStart | None) -> tuple[float, float] | None:
    """(offset, error) ms of a rank's clock to rank 0's from its ``run_start``; None when
    not measured. A time of that rank minus ``offset / 1000`` is on rank 0's clock."""
    if start is None:
        return None
    off, err = start.clock_offset_ms, start.clock_error_ms
    if type(off) is not float and type(off) is not int:
        return None
    return float(off), float(err) if type(err) in (float, int) else 0.0


def replace(rec: Any, **changes: Any) -> Any:
    """A copy of a record with some fields changed."""
    return msgspec.structs.replace(rec, **changes)


# --------------------------------------------------------------------------- encode


def _enc_hook(obj: Any) -> Any:
    return str(obj)


_ENCODER = msgspec.json.Encoder(enc_hook=_enc_hook)


def _json_safe(x: Any) -> Any:
    """A copy with strings made valid UTF-8 (lone surrogates escaped as text)."""
    if isinstance(x, str):
        return x.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(x, dict):
        return {_json_safe(k) if isinstance(k, str) else k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _rounded_regions(regions: dict[str, tuple[float, int]]) -> dict[str, tuple[float, int]]:
    """``{name: (round(ms, 4), calls)}``. This runs for every step: ``round(x * 1e4) / 1e4``
    gives the same values at half the cost of ``round(x, 4)`` (a correctly rounded division
    of an integer), save ties, which no timer hits."""
    try:
        return {k: (round(ms * 10000.0) / 10000.0, n) for k, (ms, n) in regions.items()}
    except (ValueError, OverflowError):  # NaN or infinity: the general rounding
        return {k: (round(ms, 4), n) for k, (ms, n) in regions.items()}


def round_regions_in_place(regions: dict[str, Any]) -> bool:
    """Round a step's ``[ms, calls]`` lists in place to what :func:`encode_bytes` writes
    (the values of :func:`_rounded_regions`), for a writer that owns the record and has no
    other use for the values; then ``encode_bytes(rec, regions_rounded=True)``. False where
    the values are not lists (e.g. tuples: nothing is changed, they are all of one type)."""
    try:
        for v in regions.values():
            v[0] = round(v[0] * 10000.0) / 10000.0
    except TypeError:
        return False
    return True


def _round(x: float, scale: float, digits: int) -> float:
    """``round(x, digits)`` (``scale``: ``10.0 ** digits``) at half its cost for the usual
    values: ``x * scale`` rounded to an integer is the exactly rounded ``x * 10^digits``
    unless the product is within half a unit of a tie (then ``round`` decides), and an
    integer below 2^53 divided by ``scale`` is the double nearest to the decimal. Zero (its
    sign) and values beyond 4e15 / scale go to ``round`` too."""
    y = x * scale
    if -4e15 < y < 4e15:
        k = round(y)
        d = y - k
        if k and d != 0.5 and d != -0.5:
            return k / scale
    return round(x, digits)


def _rounded(rec: Record, regions_rounded: bool = False) -> Record:
    """``rec`` as written: times rounded (µs, 0.1 µs for durations), empty optional
    objects left out."""
    if type(rec) is Step:
        return msgspec.structs.replace(
            rec,
            time=_round(rec.time, 1e6, 6),
            wall_ms=_round(rec.wall_ms, 1e4, 4),
            regions=rec.regions if regions_rounded else _rounded_regions(rec.regions),
            memory=rec.memory or msgspec.UNSET,
            scalars=rec.scalars or msgspec.UNSET,
        )
    if type(rec) is RunEnd and rec.error is None:
        return msgspec.structs.replace(rec, time=round(rec.time, 6), error=msgspec.UNSET)
    return msgspec.structs.replace(rec, time=round(rec.time, 6))


def encode(rec: Record) -> str:
    """One record as one JSON line (with the trailing newline). Never emits NaN/Infinity."""
    return encode_bytes(rec).decode("utf-8")


def encode_bytes(rec: Record, regions_rounded: bool = False) -> bytes:
    """:func:`encode` as UTF-8 bytes (what the writer appends); compact JSON by msgspec.

    Values JSON cannot hold are made safe: NaN/Infinity become ``null``, objects of other
    types their ``str()``, a lone surrogate in a string its escape as text.
    ``regions_rounded``: a step's regions were rounded by :func:`round_regions_in_place`.
    """
    rec = _rounded(rec, regions_rounded)
    try:
        return _ENCODER.encode(rec) + b"\n"
    except UnicodeEncodeError:  # a lone surrogate (e.g. from os.fsdecode): escape it as text
        return _ENCODER.encode(_json_safe(msgspec.to_builtins(rec, enc_hook=_enc_hook))) + b"\n"


# --------------------------------------------------------------------------- decode

_decode_typed = msgspec.json.Decoder(RunStart | Step | Eval | RunEnd).decode
_decode_any = msgspec.json.Decoder().decode
_VERSION_RE = re.compile(rf"[0-9]{{1,{MAX_VERSION_DIGITS}}}\.[0-9]{{1,{MAX_VERSION_DIGITS}}}")
KNOWN_VERSIONS: set[str] = {FORMAT_VERSION}  # versions checked so far (bounded)


def check_major(v: str) -> None:
    """Refuse a version (already ``MAJOR.MINOR``) of a newer major than ours."""
    if v in KNOWN_VERSIONS:
        return
    if int(v.partition(".")[0]) > FORMAT_MAJOR:
        raise FormatVersionError(
            f"record format version {v} is newer than this stagewatch understands "
            f"({FORMAT_VERSION}); upgrade stagewatch to read it"
        )
    if len(KNOWN_VERSIONS) < 64:
        KNOWN_VERSIONS.add(v)


def explain(line: bytes | str, err: Exception) -> RecordError | None:
    """Why a line the typed decoder refused is bad; None when it is a kind we do not know."""
    try:
        d = _decode_any(line)
    except RecursionError:
        return RecordError(f"nested deeper than {MAX_DEPTH} levels")
    except msgspec.DecodeError as e:
        return RecordError(f"not JSON: {e}")
    if type(d) is not dict:
        return RecordError("record is not a JSON object")
    v = d.get("v")
    if type(v) is not str or _VERSION_RE.fullmatch(v) is None:
        return RecordError(f"field 'v' must be a 'MAJOR.MINOR' string, got {str(v)[:40]!r}")
    try:
        check_major(v)
    except FormatVersionError as e:
        return e
    kind = d.get("kind")
    if type(kind) is not str:
        return RecordError("field 'kind' must be a string")
    if kind not in KINDS:
        return None
    return RecordError(f"{kind}: {err}")


def parse(line: bytes | str) -> Record | None:
    """Parse and validate one line: its record as written (a non-finite value stays the
    ``None`` it was written as), or None for a kind this version does not know. Raises
    :class:`RecordError` (one line saying why) for anything else wrong."""
    if len(line) > MAX_LINE_BYTES:
        raise RecordError(f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        rec = _decode_typed(line)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        why = explain(line, e)
        if why is None:
            return None
        raise why from None
    except RecursionError:
        raise RecordError(f"nested deeper than {MAX_DEPTH} levels") from None
    check_major(rec.version)
    return rec


def decode(line: bytes | str) -> Record | None:
    """:func:`parse`, with a value written as null (a non-finite scalar) read as absent."""
    rec = parse(line)
    if type(rec) is Step and (rec.scalars or rec.memory):
        if rec.scalars and None in rec.scalars.values():
            rec.scalars = {k: v for k, v in rec.scalars.items() if v is not None} or None
        if rec.memory and None in rec.memory.values():
            rec.memory = {k: v for k, v in rec.memory.items() if v is not None} or None
    return rec


# --------------------------------------------------------------------------- shares


def top_level(name: str) -> bool:
    return "/" not in name


def parent_of(name: str) -> str | None:
    i = name.rfind("/")
    return name[:i] if i > 0 else None


def unaccounted_ms(wall_ms: float, regions: dict[str, tuple[float, int]]) -> float:
    """Step wall time not covered by any top-level region (never negative)."""
    covered = sum(ms for name, (ms, _) in regions.items() if "/" not in name)
    return max(0.0, wall_ms - covered)


def classify(share: float, red: float = 0.40, yellow: float = 0.10) -> str:
    """``red`` / ``yellow`` / ``green`` for a share of step wall time (0..1)."""
    if share >= red:
        return "red"
    if share >= yellow:
        return "yellow"
    return "green"
