"""Typed YAML sections: build a dataclass from a mapping, checking every value.

One parser for every configuration section (``trainer.config`` and
``trainer.models.config``). The dataclass annotations are the schema; supported types are
``bool``, ``int``, ``float``, ``str``, ``X | None``, ``list[X]``, fixed-length ``tuple[...]``,
``Literal[...]`` and nested dataclasses. Upper-case fields are the YAML keys. Every bad value
raises :class:`ConfigError` with the dotted key path (``TRAIN.OPTIM.LR``, ``MODEL.VRT.DEPTHS[1]``);
unknown keys get a "did you mean" suggestion.

Field metadata, set with :func:`setting`: ``min``/``max`` (inclusive bounds on numbers),
``doc`` (a one-line description), ``expect`` (what the type error says was expected).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, TypeVar

from stagewatch.errors import ConfigError

__all__ = ["convert", "convert_field", "from_dict", "setting", "suggest", "type_name"]

T = TypeVar("T")

_TYPE_NAMES: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
}
_PLURALS: dict[Any, str] = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def setting(
    default: Any,
    *,
    min: float | None = None,
    max: float | None = None,
    doc: str = "",
    expect: str | None = None,
) -> Any:
    """A config field with optional inclusive bounds, a description, and a custom type error.

    ``expect`` replaces the type's own wording in "expected ..., got ..." errors
    (e.g. ``"a file path or null"``). List and dict defaults are copied per instance.
    """
    meta = {"min": min, "max": max, "doc": doc, "expect": expect}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: default.copy(), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def type_name(value: Any) -> str:
    """How a YAML value is named in errors: "an integer", "a mapping", "null"..."""
    if value is None:
        return "null"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def suggest(key: str, known: list[str]) -> str:
    """``"; did you mean X?"`` for the closest of ``known`` (case-insensitive), else the list."""
    upper = {k.upper(): k for k in known}
    m = difflib.get_close_matches(key.upper(), list(upper), n=1, cutoff=0.5)
    if m:
        return f"; did you mean {upper[m[0]]}?"
    return f"; known keys: {', '.join(known)}"


def from_dict(cls: type[T], data: Any, path: str, file: str | None = None) -> T:
    """Build the dataclass ``cls`` from ``data`` (``None``: all defaults), checking every key.

    ``path`` is the key path of ``data`` itself (``""`` at the top of a file).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a mapping, got {type_name(data)}", file)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name.isupper()}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        kp = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(kp, "unknown key" + suggest(str(key), list(fields)), file)
        kwargs[key] = convert_field(fields[key], hints[key], value, kp, file)
    return cls(**kwargs)


def convert_field(
    f: dataclasses.Field[Any], tp: Any, value: Any, path: str, file: str | None = None
) -> Any:
    """``value`` checked against the field ``f`` (annotation ``tp``): type, then bounds."""
    v = convert(value, tp, path, file, f.metadata.get("expect"))
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if lo is not None and v < lo:
            raise ConfigError(path, f"must be >= {lo}, got {v}", file)
        if hi is not None and v > hi:
            raise ConfigError(path, f"must be <= {hi}, got {v}", file)
    return v


def convert(
    value: Any, tp: Any, path: str, file: str | None = None, expect: str | None = None
) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted.

    Raises ConfigError naming ``path``; ``expect`` overrides the "expected ..." wording.
    """
    if expect is not None:
        try:
            return convert(value, tp, path, file)
        except ConfigError as e:
            if e.key != path:  # an error inside the value keeps its own wording
                raise
            raise ConfigError(path, f"expected {expect}, got {type_name(value)}", file) from None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if type(None) in args and (value is None or (value == "" and inner == [str])):
            return None  # an empty string leaves an optional path or name unset
        return convert(value, inner[0], path, file)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(str(a) for a in args)
            raise ConfigError(path, f"must be one of {choices}, got {value!r}", file)
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            what = _PLURALS.get(args[0], "values") if len(set(args)) == 1 else "values"
            raise ConfigError(path, f"expected a list of {len(args)} {what}, got {value!r}", file)
        return tuple(
            convert(v, a, f"{path}[{i}]", file)
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is list:
        if not isinstance(value, list):
            what = _PLURALS.get(args[0], "values")
            raise ConfigError(path, f"expected a list of {what}, got {type_name(value)}", file)
        return [convert(v, args[0], f"{path}[{i}]", file) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path, file)  # type: ignore[arg-type]
    return _convert_scalar(value, tp, path, file)


def _convert_scalar(value: Any, tp: Any, path: str, file: str | None) -> Any:
    """``value`` checked as a bool, int, float or str (``tp``)."""
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(
                path, f"expected true or false, got {type_name(value)} {value!r}", file
            )
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {type_name(value)} {value!r}", file)
        return value
    if tp is float:
        # YAML reads "1e-4" (no dot) as a string: accept numeric strings for floats
        x: float | None = None
        if isinstance(value, str):
            try:
                x = float(value)
            except ValueError:
                pass
        elif not isinstance(value, bool) and isinstance(value, (int, float)):
            try:
                x = float(value)
            except OverflowError:  # an integer beyond any float
                x = math.inf
        if x is None:
            raise ConfigError(path, f"expected a number, got {type_name(value)} {value!r}", file)
        if not math.isfinite(x):  # nan, .inf, 1e999: every later use would be meaningless
            raise ConfigError(path, f"expected a finite number, got {value!r}", file)
        return x
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {type_name(value)} {value!r}", file)
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # programming error
