"""Figures in words and in JSON, for the reasons and advice lines (torch- and Textual-free).

Shared by the model's straggler verdict (:mod:`tui.model.rankstats`) and the diagnosis, so
that both write ``250 ms``, ``5.0%`` and ``1.5 GiB`` the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tui.fmt import fmt_ms

MiB = 1024**2
GiB = 1024**3


def ok(x: float | None) -> bool:
    """A finite number (not None, NaN or infinite)."""
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def median(vals: Sequence[float]) -> float:
    """The median (mean of the middle two for an even count); NaN when empty."""
    s = sorted(vals)
    n = len(s)
    if n == 0:
        return math.nan
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def pct(x: float) -> str:
    """A share 0..1 as a percentage: ``42%``, ``5.0%`` below ten; ``?%`` when unknown."""
    if not ok(x):
        return "?%"
    return f"{x * 100:.0f}%" if round(x * 100, 1) >= 9.95 else f"{x * 100:.1f}%"


def ms(x: float) -> str:
    """ms with a space before the unit, rounded before the unit is chosen (never "1000 ms")."""
    if not ok(x):
        return "?"
    s = fmt_ms(x)
    for unit in ("ms", "s"):
        if s.endswith(unit) and s[: -len(unit)][-1:].isdigit():
            return s[: -len(unit)] + " " + unit
    return s


def gb(n: float) -> str:
    """Bytes as ``1.5 GiB`` (or ``512 MiB`` below a GiB)."""
    if abs(n) >= GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{n / MiB:.0f} MiB"


def json_num(v: Any) -> Any:
    """Floats to 6 significant figures (never rounded to 0.0), non-finite ones to None."""
    if isinstance(v, float):
        return float(f"{v:.6g}") if math.isfinite(v) else None
    return v


def json_tree(v: Any) -> Any:
    """:func:`json_num` through nested dicts, lists and tuples (tuples become lists)."""
    if isinstance(v, dict):
        return {k: json_tree(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_tree(x) for x in v]
    return json_num(v)
