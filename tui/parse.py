"""Line parsing for the monitor: ``json.loads`` then cheap, complete type checks.

``step`` lines (nearly all of a file) take a fast path that checks every field the monitor
uses without building a dataclass: a region value must be a list ``[number, int]`` with no
bool, no negative and no non-finite number. Other kinds go through
:func:`trainer.timing.records.from_dict`. Anything wrong raises :class:`RecordError`.
"""

from __future__ import annotations

import json
import math
from itertools import chain
from typing import Any, NamedTuple

from trainer.timing.records import (
    KIND_STEP,
    Record,
    RecordError,
    Step,
    check_version,
    from_dict,
)

_INF = math.inf
_BIG = 1e12  # larger region times/counts, wall times and times are refused as corrupt
_NUM_TYPES = {int, float}
_INT_TYPES = {int}
_LIST_TYPES = {list}
_LEN2 = {2}
MAX_LINE = 4 * 1024 * 1024  # longer lines are counted as malformed without parsing


class StepRow(NamedTuple):
    """A validated step: ``keys`` are region names, ``flat`` is ``[ms0, n0, ms1, n1, ...]``."""

    step: int
    time: float
    wall: float
    samples: int
    epoch: int
    keys: tuple[str, ...]
    flat: list[Any]
    memory: dict[str, Any] | None
    scalars: dict[str, Any] | None


def _reject_constant(name: str) -> float:
    raise RecordError(f"non-finite number {name} is not allowed")


def _num_dict(x: Any, key: str) -> dict[str, Any] | None:
    if x is None:
        return None
    if type(x) is not dict:
        raise RecordError(f"field {key!r} must be an object")
    for k, v in x.items():
        if v is None:
            continue
        t = type(v)
        if t is not int and t is not float:
            raise RecordError(f"{key}.{k} must be a number")
        if not -1e300 < v < 1e300:
            raise RecordError(f"{key}.{k} is not finite")
    return x


def step_row(d: dict[str, Any]) -> StepRow:
    """Validate a parsed ``step`` object into a StepRow."""
    check_version(d.get("v"))
    step = d.get("step")
    if type(step) is not int:
        raise RecordError("field 'step' must be an integer")
    wall = d.get("wall_ms")
    tw = type(wall)
    if (tw is not float and tw is not int) or not 0 <= wall < _BIG:
        raise RecordError("field 'wall_ms' must be a finite number >= 0")
    t = d.get("time", 0.0)
    tt = type(t)
    if (tt is not float and tt is not int) or not -_BIG < t < _BIG:
        raise RecordError("field 'time' must be a finite number")
    samples = d.get("samples", 0)
    epoch = d.get("epoch", 0)
    if type(samples) is not int or type(epoch) is not int:
        raise RecordError("fields 'samples' and 'epoch' must be integers")
    regions = d.get("regions", {})
    if type(regions) is not dict:
        raise RecordError("field 'regions' must be an object")
    vals = regions.values()
    if vals:
        if set(map(type, vals)) != _LIST_TYPES or set(map(len, vals)) != _LEN2:
            raise RecordError("every region must be [milliseconds, count]")
        flat = list(chain.from_iterable(vals))
        ms = flat[0::2]
        if not set(map(type, ms)) <= _NUM_TYPES or set(map(type, flat[1::2])) != _INT_TYPES:
            raise RecordError("every region must be [milliseconds, count]")
        if min(flat) < 0 or max(flat) >= _BIG:
            raise RecordError("a region has a negative or non-finite value")
    else:
        flat = []
    mem = _num_dict(d.get("memory"), "memory")
    sc = _num_dict(d.get("scalars"), "scalars")
    return StepRow(step, t, wall, samples, epoch, tuple(regions), flat, mem, sc)


def row_from_step(s: Step) -> StepRow:
    """StepRow of a Step record (text logs, tests)."""
    flat = list(chain.from_iterable(s.regions.values()))
    return StepRow(s.step, s.time, s.wall_ms, s.samples, s.epoch, tuple(s.regions), flat, s.memory, s.scalars)


def parse_line(line: bytes | str) -> StepRow | Record | None:
    """One line -> StepRow, another record, or None for an unknown kind. Raises RecordError."""
    if len(line) > MAX_LINE:
        raise RecordError(f"line longer than {MAX_LINE} bytes")
    try:
        d = json.loads(line, parse_constant=_reject_constant)
    except RecordError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise RecordError(f"not JSON: {e}") from None
    if type(d) is not dict:
        raise RecordError("record is not a JSON object")
    if d.get("kind") == KIND_STEP:
        return step_row(d)
    try:
        return from_dict(d)
    except RecordError:
        raise
    except (TypeError, ValueError, OverflowError) as e:  # e.g. int() of a huge float
        raise RecordError(str(e)) from None
