"""Checks of user values: what the record format cannot hold is dropped, never raised.

The per-step and per-record checks drop what the record format cannot hold
(docs/record-format.md "Limits") with one warning per kind of problem, through the
logger's :class:`WarnOnce`, and never raise. The checks of constructor arguments
(:func:`positive_int`) and of the config's ``LOG:`` section (:func:`log_section`) do
raise: they run before training starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from stagewatch import records as R
from stagewatch.timing.jsonl import warn

_LOG_BOOL = {
    "ENABLE_TIMING_LOG": "enabled",
    "TIMING_CONSOLE": "enable_console",
    "TIMING_FILE": "enable_file",
    "TIMING_JSONL": "enable_jsonl",
}
_LOG_INT = {
    "TIMING_CONSOLE_INTERVAL": "console_update_interval",
    "TIMING_FILE_INTERVAL": "file_flush_interval",
}


class WarnOnce:
    """``warn(message)`` the first time each ``key`` is seen: one warning per kind of problem."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, key: str, message: str) -> None:
        if key not in self._seen:
            self._seen.add(key)
            warn(message)


def short(value: Any, n: int = 60) -> str:
    """``repr`` of a user's value, cut (a hostile value must not flood the warning)."""
    try:
        r = repr(value)
    except Exception:
        r = f"<{type(value).__name__}>"
    return r if len(r) <= n else r[: n - 3] + "..."


def positive_int(value: Any, what: str) -> int:
    """``value`` if it is an integer >= 1, else ValueError (a constructor argument)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def start_step(value: Any) -> int:
    """``start_step=``: a step number, else 0 (warned)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < R.MAX_INT:
        warn(f"start_step={value!r} is not a step number (0 <= n < {R.MAX_INT:.0e}); using 0")
        return 0
    return value


def int_arg(value: Any, what: str, default: int, warn_once: WarnOnce) -> int:
    """``value`` as an integer in range, else ``default`` (warned once per ``what``)."""
    if type(value) is int and -R.MAX_INT < value < R.MAX_INT:
        return value
    try:
        n = int(value)
        if isinstance(value, bool) or not -R.MAX_INT < n < R.MAX_INT:
            raise ValueError
    except Exception:
        warn_once(
            f"int:{what}", f"{what}={short(value)} is not an integer in range; using {default}"
        )
        return default
    return n


def opt_count(value: Any, what: str) -> int | None:
    """An optional count (``total_steps=``...): None when it is not one (warned)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < R.MAX_INT:
        warn(f"{what}={short(value)} is not a count (0 <= n < {R.MAX_INT:.0e}); not recorded")
        return None
    return int(value)


def scalars(values: Any, what: str, warn_once: WarnOnce) -> dict[str, float]:
    """Names to numbers. NaN/inf are kept (written as null); other values that are not
    numbers in range, and names that are not short strings, are dropped."""
    out: dict[str, float] = {}
    try:
        items = list(values.items())
    except Exception:
        warn_once(f"map:{what}", f"{what}= must be a mapping, got {type(values).__name__}; ignored")
        return out
    for k, v in items:
        if type(k) is not str or len(k) > R.MAX_NAME_CHARS:
            warn_once(
                f"key:{what}",
                f"{what}: name {short(k)} is not a string of at most "
                f"{R.MAX_NAME_CHARS} characters; that value is dropped",
            )
            continue
        try:
            x = float(v)
        except Exception:
            warn_once(f"val:{what}", f"{what}[{k!r}] = {short(v)} is not a number; dropped")
            continue
        if math.isfinite(x) and not -R.MAX_ABS_NUMBER < x < R.MAX_ABS_NUMBER:
            warn_once(
                f"val:{what}",
                f"{what}[{k!r}] = {short(v)} is beyond {R.MAX_ABS_NUMBER:.0e}; dropped",
            )
            continue
        out[k] = x
    return out


def memory(values: Any, warn_once: WarnOnce) -> dict[str, int] | None:
    """Names to byte counts; None when nothing is left."""
    out: dict[str, int] = {}
    try:
        items = list(values.items())
    except Exception:
        warn_once("memory-map", "memory= must be a mapping; ignored")
        return None
    for k, v in items:
        try:
            n = int(v)
            if type(k) is not str or isinstance(v, bool) or not 0 <= n < R.MAX_BYTES_VALUE:
                raise ValueError
        except Exception:
            warn_once("memory-val", f"memory[{short(k)}] = {short(v)} is not a byte count; dropped")
            continue
        out[k] = n
    return out or None


def config(value: Any) -> dict[str, Any]:
    """A JSON-safe copy of ``config=``: string keys, no NaN/inf or out-of-range numbers,
    bounded depth; anything else becomes its ``str()`` when written."""
    if not value:
        return {}
    problems: list[str] = []
    cfg = _config_value(value, "", 0, problems)
    if not isinstance(cfg, dict):
        problems.append(f"config= must be a mapping, got {type(value).__name__}")
        cfg = {}
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        warn(f"config: {problems[0]}{more}")
    return cfg


def _config_value(x: Any, path: str, depth: int, problems: list[str]) -> Any:
    if isinstance(x, (Mapping, list, tuple, set, frozenset)):
        if depth >= R.MAX_DEPTH - 2:
            problems.append(f"{path or 'config'} is nested too deeply (dropped)")
            return None
        if isinstance(x, Mapping):
            return _config_mapping(x, path, depth, problems)
        return [_config_value(v, f"{path}[{i}]", depth + 1, problems) for i, v in enumerate(x)]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int):
        if -R.MAX_INT < x < R.MAX_INT:
            return x
        problems.append(f"{path} is an integer out of range (dropped)")
        return None
    if isinstance(x, float):
        if math.isfinite(x) and -R.MAX_ABS_NUMBER < x < R.MAX_ABS_NUMBER:
            return x
        problems.append(f"{path} = {x!r} is not a finite number in range (dropped)")
        return None
    return x  # other objects: their str() (records.encode)


def _config_mapping(
    x: Mapping[Any, Any], path: str, depth: int, problems: list[str]
) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    try:
        items = list(x.items())
    except Exception:
        problems.append(f"{path or 'config'} cannot be read (dropped)")
        return None
    for k, v in items:
        if type(k) is not str:
            problems.append(
                f"key {short(k)} in {path or 'config'} is not a string (written as its str())"
            )
            k = str(k)
        out[k] = _config_value(v, f"{path}.{k}" if path else k, depth + 1, problems)
    return out


def log_section(section: Any, config_file: str | None) -> dict[str, Any]:
    """The logger's keyword arguments from the ``LOG:`` section of a config (see
    ``TimingLogger.from_config``); ConfigError naming ``LOG.<KEY>`` for a bad value."""
    from stagewatch.errors import ConfigError

    section = section or {}
    if not isinstance(section, Mapping):
        raise ConfigError("LOG", f"expected a mapping, got {type(section).__name__}", config_file)
    args: dict[str, Any] = {}
    for key, arg in _LOG_BOOL.items():
        if key in section:
            v = section[key]
            if not isinstance(v, bool):
                raise ConfigError(f"LOG.{key}", f"expected true or false, got {v!r}", config_file)
            args[arg] = v
    for key, arg in _LOG_INT.items():
        if key in section:
            v = section[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(
                    f"LOG.{key}", f"expected a positive integer (steps), got {v!r}", config_file
                )
            args[arg] = v
    return args


def duration(name: str, ms: Any, warn_once: WarnOnce) -> float | None:
    """``ms`` of ``log_timing(name, ms)`` as a duration in range, else None (warned once)."""
    try:
        x = float(ms)
    except (TypeError, ValueError, OverflowError):
        warn_once("log", f"log_timing({name!r}): {short(ms)} is not a number; ignored")
        return None
    if not 0.0 <= x < R.MAX_MS:  # also false for NaN
        warn_once("log", f"log_timing({name!r}): {x!r} is not a duration; ignored")
        return None
    return x


def bad_name(name: Any, warn_once: WarnOnce) -> None:
    """Warn (once) that a region name is not a string."""
    warn_once(
        "name",
        f"a region name must be a string, got {type(name).__name__} {short(name)}; "
        "that region is not timed",
    )
