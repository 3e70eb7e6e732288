"""The stagewatch record format: one JSONL file per rank and run, shared by writer and monitor.

This module imports neither torch nor Textual. ``docs/record-format.md`` is its prose twin.

Layout::

    <log_root>/<run_id>/rank<R>.jsonl      one record per line, UTF-8, ``\\n`` terminated
    <log_root>/<run_id>/timing_rank<R>.log  the classic text log (optional)

Every record is a JSON object with ``"v"`` (format version ``"MAJOR.MINOR"``) and ``"kind"``.
Readers ignore fields they do not know; a record of a newer *major* version is refused.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

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
TEXT_LOG_RE = re.compile(r"^timing_.*\.log$")
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


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class RunStart:
    run_id: str
    rank: int
    world_size: int
    time: float
    host: str = ""
    pid: int = 0
    device: str = "cpu"
    gpu_name: str | None = None
    torch_version: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    total_steps: int | None = None
    samples_per_step: int | None = None
    device_memory_total: int | None = None  # bytes
    start_step: int = 0  # >0 when a resumed run continues an earlier one
    version: str = FORMAT_VERSION


@dataclass(frozen=True, slots=True)
class Step:
    """One training step of one rank. ``regions`` maps name -> (inclusive ms, calls)."""

    step: int
    time: float
    wall_ms: float
    regions: dict[str, tuple[float, int]]
    epoch: int = 0
    samples: int = 0
    memory: dict[str, int] | None = None  # allocated / reserved / peak (bytes), rss
    scalars: dict[str, float] | None = None  # loss, lr, ...
    version: str = FORMAT_VERSION


@dataclass(frozen=True, slots=True)
class Eval:
    step: int
    time: float
    metrics: dict[str, float]
    version: str = FORMAT_VERSION


@dataclass(frozen=True, slots=True)
class RunEnd:
    time: float
    status: str
    steps: int = 0
    error_type: str | None = None
    error_message: str | None = None
    version: str = FORMAT_VERSION


Record = RunStart | Step | Eval | RunEnd


# --------------------------------------------------------------------------- encode


def _clean_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


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


def encode(rec: Record) -> str:
    """One record as one JSON line (with the trailing newline). Never emits NaN/Infinity."""
    return encode_bytes(rec).decode("utf-8")


def encode_bytes(rec: Record) -> bytes:
    """:func:`encode` as UTF-8 bytes (what the writer appends); compact JSON by msgspec.

    Values JSON cannot hold are made safe: NaN/Infinity become ``null``, objects of other
    types their ``str()``, a lone surrogate in a string its escape as text.
    """
    d = _record_dict(rec)
    try:
        return _ENCODER.encode(d) + b"\n"
    except UnicodeEncodeError:  # a lone surrogate (e.g. from os.fsdecode): escape it as text
        return _ENCODER.encode(_json_safe(d)) + b"\n"


def _record_dict(rec: Record) -> dict[str, Any]:
    if isinstance(rec, Step):
        d: dict[str, Any] = {
            "v": rec.version,
            "kind": KIND_STEP,
            "step": rec.step,
            "epoch": rec.epoch,
            "time": round(rec.time, 6),
            "wall_ms": round(rec.wall_ms, 4),
            "samples": rec.samples,
            "regions": {k: [round(ms, 4), n] for k, (ms, n) in rec.regions.items()},
        }
        if rec.memory:
            d["memory"] = rec.memory
        if rec.scalars:
            d["scalars"] = {k: _clean_float(float(v)) for k, v in rec.scalars.items()}
    elif isinstance(rec, RunStart):
        d = {
            "v": rec.version,
            "kind": KIND_RUN_START,
            "run_id": rec.run_id,
            "rank": rec.rank,
            "world_size": rec.world_size,
            "time": round(rec.time, 6),
            "host": rec.host,
            "pid": rec.pid,
            "device": rec.device,
            "gpu_name": rec.gpu_name,
            "torch_version": rec.torch_version,
            "config": rec.config,
            "total_steps": rec.total_steps,
            "samples_per_step": rec.samples_per_step,
            "device_memory_total": rec.device_memory_total,
            "start_step": rec.start_step,
        }
    elif isinstance(rec, Eval):
        d = {
            "v": rec.version,
            "kind": KIND_EVAL,
            "step": rec.step,
            "time": round(rec.time, 6),
            "metrics": {k: _clean_float(float(v)) for k, v in rec.metrics.items()},
        }
    elif isinstance(rec, RunEnd):
        d = {
            "v": rec.version,
            "kind": KIND_RUN_END,
            "time": round(rec.time, 6),
            "status": rec.status,
            "steps": rec.steps,
        }
        if rec.error_type is not None:
            d["error"] = {"type": rec.error_type, "message": rec.error_message or ""}
    else:  # pragma: no cover - typing guards this
        raise TypeError(f"not a record: {type(rec).__name__}")
    return d


# --------------------------------------------------------------------------- decode


def _reject_constant(name: str) -> float:
    raise RecordError(f"non-finite number {name} is not allowed")


def loads(line: str | bytes) -> dict[str, Any]:
    """Parse one line to a dict, rejecting NaN/Infinity and non-objects."""
    try:
        obj = json.loads(line, parse_constant=_reject_constant)
    except RecordError:
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise RecordError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise RecordError("record is not a JSON object")
    return obj


_checked_versions: dict[str, None] = {}


def check_version(v: Any) -> None:
    """Accept ``MAJOR.MINOR`` strings of our major (or older); refuse newer majors."""
    if v in _checked_versions:
        return
    if not isinstance(v, str):
        raise RecordError(f"field 'v' must be a 'MAJOR.MINOR' string, got {v!r}")
    major_s, _, _minor = v.partition(".")
    if not major_s.isdigit():
        raise RecordError(f"field 'v' must be a 'MAJOR.MINOR' string, got {v!r}")
    if int(major_s) > FORMAT_MAJOR:
        raise FormatVersionError(
            f"record format version {v} is newer than this stagewatch understands "
            f"({FORMAT_VERSION}); upgrade stagewatch to read it"
        )
    if len(_checked_versions) < 64:
        _checked_versions[v] = None


def _num(d: dict[str, Any], key: str, default: Any = ...) -> float:
    x = d.get(key, default)
    if x is ...:
        raise RecordError(f"missing field {key!r}")
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise RecordError(f"field {key!r} must be a number, got {type(x).__name__}")
    return x


def _int(d: dict[str, Any], key: str, default: Any = ...) -> int:
    x = d.get(key, default)
    if x is ...:
        raise RecordError(f"missing field {key!r}")
    if isinstance(x, bool) or not isinstance(x, int):
        raise RecordError(f"field {key!r} must be an integer, got {type(x).__name__}")
    return x


def _opt_int(d: dict[str, Any], key: str) -> int | None:
    x = d.get(key)
    return None if x is None else _int(d, key)


def _opt_str(d: dict[str, Any], key: str, default: str | None = None) -> str | None:
    x = d.get(key, default)
    if x is not None and not isinstance(x, str):
        raise RecordError(f"field {key!r} must be a string, got {type(x).__name__}")
    return x


def _num_map(x: Any, key: str) -> dict[str, float]:
    if x is None:
        return {}
    if not isinstance(x, dict):
        raise RecordError(f"field {key!r} must be an object")
    out: dict[str, float] = {}
    for k, v in x.items():
        if v is None:
            continue  # a non-finite scalar written as null
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise RecordError(f"{key}.{k} must be a number")
        out[k] = v
    return out


def parse_regions(x: Any) -> dict[str, tuple[float, int]]:
    """``{"name": [ms, count], ...}`` -> ``{"name": (ms, count)}``, validated."""
    if not isinstance(x, dict):
        raise RecordError("field 'regions' must be an object")
    out: dict[str, tuple[float, int]] = {}
    for name, v in x.items():
        if (
            type(v) is not list
            or len(v) != 2
            or isinstance(v[0], bool)
            or not isinstance(v[0], (int, float))
            or type(v[1]) is not int
        ):
            raise RecordError(f"region {name!r} must be [milliseconds, count]")
        if v[0] < 0 or v[1] < 0:
            raise RecordError(f"region {name!r} has a negative value")
        out[name] = (float(v[0]), v[1])
    return out


def from_dict(d: dict[str, Any]) -> Record | None:
    """Typed record from a parsed line; None for a kind this version does not know."""
    check_version(d.get("v"))
    kind = d.get("kind")
    if kind == KIND_STEP:
        wall = _num(d, "wall_ms")
        if wall < 0:
            raise RecordError("field 'wall_ms' is negative")
        mem = d.get("memory")
        if mem is not None and not isinstance(mem, dict):
            raise RecordError("field 'memory' must be an object")
        return Step(
            step=_int(d, "step"),
            time=_num(d, "time", 0.0),
            wall_ms=float(wall),
            regions=parse_regions(d.get("regions", {})),
            epoch=_int(d, "epoch", 0),
            samples=_int(d, "samples", 0),
            memory={k: int(v) for k, v in _num_map(mem, "memory").items()} or None,
            scalars=_num_map(d.get("scalars"), "scalars") or None,
            version=d["v"],
        )
    if kind == KIND_RUN_START:
        cfg = d.get("config") or {}
        if not isinstance(cfg, dict):
            raise RecordError("field 'config' must be an object")
        return RunStart(
            run_id=_opt_str(d, "run_id", "") or "",
            rank=_int(d, "rank"),
            world_size=_int(d, "world_size", 1),
            time=_num(d, "time", 0.0),
            host=_opt_str(d, "host", "") or "",
            pid=_int(d, "pid", 0),
            device=_opt_str(d, "device", "cpu") or "cpu",
            gpu_name=_opt_str(d, "gpu_name"),
            torch_version=_opt_str(d, "torch_version"),
            config=cfg,
            total_steps=_opt_int(d, "total_steps"),
            samples_per_step=_opt_int(d, "samples_per_step"),
            device_memory_total=_opt_int(d, "device_memory_total"),
            start_step=_int(d, "start_step", 0),
            version=d["v"],
        )
    if kind == KIND_EVAL:
        return Eval(
            step=_int(d, "step"),
            time=_num(d, "time", 0.0),
            metrics=_num_map(d.get("metrics"), "metrics"),
            version=d["v"],
        )
    if kind == KIND_RUN_END:
        status = d.get("status")
        if status not in END_STATUSES:
            raise RecordError(f"field 'status' must be one of {', '.join(END_STATUSES)}")
        err = d.get("error")
        if err is not None and not isinstance(err, dict):
            raise RecordError("field 'error' must be an object")
        err = err or {}
        return RunEnd(
            time=_num(d, "time", 0.0),
            status=status,
            steps=_int(d, "steps", 0),
            error_type=_opt_str(err, "type"),
            error_message=_opt_str(err, "message"),
            version=d["v"],
        )
    if not isinstance(kind, str):
        raise RecordError("field 'kind' must be a string")
    return None


def decode(line: str | bytes) -> Record | None:
    """Parse and validate one line. Raises RecordError; None for an unknown kind."""
    return from_dict(loads(line))


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
