"""Line parsing for the monitor: ``json.loads`` then cheap, complete type checks.

``step`` lines (nearly all of a file) take a fast path that checks every field the monitor
uses without building a dataclass: a region value must be a list ``[number, int]`` with no
bool, no negative and no non-finite number. Other kinds go through
:func:`trainer.timing.records.from_dict`. Anything wrong raises :class:`RecordError`.
"""

from __future__ import annotations

import json
import math
import re
from itertools import chain
from typing import Any, NamedTuple

from trainer.timing.records import (
    KIND_STEP,
    Record,
    RecordError,
    Step,
    check_version,
    from_dict,
    loads,
)

_INF = math.inf
_BIG = 1e12  # larger region times/counts, wall times and times are refused as corrupt
_NUM_TYPES = {int, float}
_INT_TYPES = {int}
_LIST_TYPES = {list}
_LEN2 = {2}
MAX_LINE = 4 * 1024 * 1024  # longer lines are counted as malformed without parsing


class StepRow(NamedTuple):
    """A validated step: ``keys`` are the region names, in the order of ``regions``."""

    step: int
    time: float
    wall: float
    samples: int
    epoch: int
    keys: tuple[str, ...]
    regions: dict[str, Any]  # name -> [ms, count] (list or tuple), validated
    memory: dict[str, Any] | None
    scalars: dict[str, Any] | None


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


# A compact ``"regions":{...}`` whose every value is ``[digits/dots, optional negative
# exponent, digits]``: on a line json.loads accepted, that proves each value is a list of a
# non-negative number and a non-negative int below 1e9 (no bool, null, string, sign, NaN).
# Used only on lines with no backslash, where every ``"regions":`` is a key; no match sends
# the line through the full checks. Possessive quantifiers: no backtracking.
_MS = rb"[0-9]{1,12}+(?:\.[0-9]++)?+(?:[eE]-[0-9]{1,3}+)?+"  # 0 <= ms < 1e12
_REGIONS_RE = re.compile(rb'"regions":\{(?:"[^"]*+":\[' + _MS + rb',[0-9]{1,9}+\],?+)*+\}')
_KEY = b'"regions":'

# A whole step line exactly as ``records.encode`` writes it (compact, fields in order). Ints
# and numbers are bounded by their digit counts so none overflows a float or an int64; a
# match proves every type, and only ranges (wall_ms >= 0, totals) are left to check.
_I = rb"-?[0-9]{1,15}+"
_N = rb"-?[0-9]{1,30}+(?:\.[0-9]++)?+(?:[eE][-+]?[0-9]{1,2}+)?+"
_LINE_RE = re.compile(
    rb'\{"v":"[0-9]{1,4}+\.[0-9]{1,4}+","kind":"step","step":' + _I + rb',"epoch":' + _I
    + rb',"time":' + _N + rb',"wall_ms":' + _N + rb',"samples":' + _I
    + rb',"regions":\{(?:"[^"]*+":\[' + _MS + rb',[0-9]{1,9}+\],?+)*+\}'
    + rb'(?:,"memory":\{(?:"[^"]*+":[0-9]{1,18}+,?+)*+\})?+'
    + rb'(?:,"scalars":\{(?:"[^"]*+":(?:' + _N + rb"|null),?+)*+\})?+\}"
)


_raw_decode = json.JSONDecoder().raw_decode
_new_row = tuple.__new__


def parse_fast(line: bytes) -> StepRow | None:
    """A step line as ``records.encode`` writes it, or None (then use :func:`parse_line`).

    The regex proves every type, so only ranges are left to check; anything unusual
    (escapes, spaces, other field orders, other kinds, bad values) returns None.
    """
    if b"\\" in line or _LINE_RE.fullmatch(line) is None:
        return None
    try:
        d = _raw_decode(line.decode())[0]
    except ValueError:  # also UnicodeDecodeError
        return None
    v = d["v"]
    if v not in _OK_VERSIONS:
        try:
            check_version(v)
        except RecordError:
            return None
        _OK_VERSIONS.add(v)
    wall = d["wall_ms"]
    t = d["time"]
    if not (0 <= wall < _BIG and -_BIG < t < _BIG):
        return None
    regions = d["regions"]
    return _new_row(
        StepRow, (d["step"], t, wall, d["samples"], d["epoch"], tuple(regions), regions, d.get("memory"), d.get("scalars"))
    )


_OK_VERSIONS: set[str] = set()


def step_row(d: dict[str, Any], regions_ok: bool = False) -> StepRow:
    """Validate a parsed ``step`` object into a StepRow (``regions_ok``: already proven)."""
    check_version(d.get("v"))
    step = d.get("step")
    if type(step) is not int or not -_BIG < step < _BIG:
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
    if type(samples) is not int or type(epoch) is not int or not 0 <= samples < _BIG or not -_BIG < epoch < _BIG:
        raise RecordError("fields 'samples' and 'epoch' must be integers")
    regions = d.get("regions", {})
    if type(regions) is not dict:
        raise RecordError("field 'regions' must be an object")
    vals = regions.values()
    if vals and not regions_ok:
        if set(map(type, vals)) != _LIST_TYPES or set(map(len, vals)) != _LEN2:
            raise RecordError("every region must be [milliseconds, count]")
        flat = list(chain.from_iterable(vals))
        ms = flat[0::2]
        if not set(map(type, ms)) <= _NUM_TYPES or set(map(type, flat[1::2])) != _INT_TYPES:
            raise RecordError("every region must be [milliseconds, count]")
        if min(flat) < 0 or not sum(flat) < _BIG:  # NaN makes the sum NaN: `not <` catches it
            raise RecordError("a region has a negative or non-finite value")
    mem = _num_dict(d.get("memory"), "memory")
    sc = _num_dict(d.get("scalars"), "scalars")
    return StepRow(step, t, wall, samples, epoch, tuple(regions), regions, mem, sc)


def row_from_step(s: Step) -> StepRow:
    """StepRow of a Step record (text logs, tests)."""
    return StepRow(s.step, s.time, s.wall_ms, s.samples, s.epoch, tuple(s.regions), s.regions, s.memory, s.scalars)


def parse_line(line: bytes | str) -> StepRow | Record | None:
    """One line -> StepRow, another record, or None for an unknown kind. Raises RecordError."""
    if len(line) > MAX_LINE:
        raise RecordError(f"line longer than {MAX_LINE} bytes")
    try:
        d = json.loads(line)  # NaN/Infinity: rejected below by range checks, or by records.loads
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise RecordError(f"not JSON: {e}") from None
    if type(d) is not dict:
        raise RecordError("record is not a JSON object")
    if d.get("kind") == KIND_STEP:
        b = line if type(line) is bytes else line.encode("utf-8", "surrogatepass")
        ok = False
        if b"\\" not in b and b.count(_KEY) == 1:
            ok = _REGIONS_RE.match(b, b.find(_KEY)) is not None
        return step_row(d, ok)
    d = loads(line)  # rare kinds: parse again, refusing NaN/Infinity anywhere
    try:
        return from_dict(d)
    except RecordError:
        raise
    except (TypeError, ValueError, OverflowError) as e:  # e.g. int() of a huge float
        raise RecordError(str(e)) from None
