"""``trainer bench``'s sweeps and cases: parsed from the command line, expanded into the
combinations it runs (one row each)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from stagewatch.errors import ConfigError, UsageError

Assignment = tuple[str, str]  # ("TRAIN.BATCH_SIZE", "2")


@dataclass(frozen=True)
class Sweep:
    key: str
    values: tuple[str, ...]


def parse_sweep(text: str) -> Sweep:
    """``"KEY.PATH=v1,v2"`` -> Sweep (values stay strings; the trainer parses them as YAML)."""
    key, sep, vals = text.partition("=")
    key = key.strip()
    values = tuple(v.strip() for v in vals.split(","))
    if not sep or not key or any(not p for p in key.split(".")) or not any(values) or "" in values:
        raise UsageError(
            f"--sweep {text!r}: expected KEY.PATH=v1,v2,... (e.g. TRAIN.BATCH_SIZE=1,2,3)"
        )
    return Sweep(key, values)


def parse_case(text: str) -> tuple[Assignment, ...]:
    """``"K1=v1 K2=v2"`` (space separated; empty = the base config) -> assignments."""
    out = []
    for item in text.split():
        key, sep, val = item.partition("=")
        if not sep or not key or any(not p for p in key.split(".")):
            raise UsageError(f"--case {text!r}: expected space-separated KEY.PATH=VALUE items")
        out.append((key, val))
    return tuple(out)


def combinations(
    sweeps: Sequence[Sweep], cases: Sequence[tuple[Assignment, ...]] = ()
) -> list[tuple[Assignment, ...]]:
    """Every case × every combination of sweep values, in order (first = baseline)."""
    keys = [s.key for s in sweeps]
    if len(set(keys)) != len(keys):
        raise UsageError(
            "a key is swept twice: " + ", ".join(sorted({k for k in keys if keys.count(k) > 1}))
        )
    grid = [
        tuple(zip(keys, vals, strict=True))
        for vals in itertools.product(*(s.values for s in sweeps))
    ]
    if not cases:
        return grid
    return [tuple(case) + g for case in cases for g in grid]


def label(assignments: Sequence[Assignment]) -> str:
    return " ".join(f"{k}={v}" for k, v in assignments) or "(base config)"


def check_keys(
    sweeps: Sequence[Sweep], cases: Sequence[tuple[str, tuple[Assignment, ...]]]
) -> None:
    """Each swept and case key and value against the config schema, before any row is built:
    a typo is named once, by the option that gave it (``--sweep KEY=v1,v2: ...``), not as a
    ``--set`` inside every row's prefix. ``cases``: (the --case text, its assignments)."""
    from trainer.config import check_override_keys

    for s in sweeps:
        for v in s.values:
            try:
                check_override_keys([f"{s.key}={v}"])
            except ConfigError as e:
                raise UsageError(
                    f"--sweep {s.key}={','.join(s.values)}: {e.key}: {e.detail}"
                ) from None
    for text, case in cases:
        for k, v in case:
            try:
                check_override_keys([f"{k}={v}"])
            except ConfigError as e:
                raise UsageError(f"--case {text!r}: {e.key}: {e.detail}") from None
