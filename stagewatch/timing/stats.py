"""Running statistics: constant memory and constant cost per value, however long the run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


class RunningStats:
    """Count, total, mean, min and max of a stream of numbers (no history kept)."""

    __slots__ = ("calls", "count", "max", "min", "total")

    def __init__(self) -> None:
        self.calls = 0  # RegionStats: the times the region was timed (count: steps)
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, x: float) -> None:
        self.count += 1
        self.total += x
        if x < self.min:
            self.min = x
        if x > self.max:
            self.max = x

    @property
    def avg(self) -> float:
        return self.total / self.count if self.count else 0.0

    def as_dict(self) -> dict[str, float]:
        """``{"avg", "min", "max", "count", "total"}``; zeros when nothing was added."""
        if not self.count:
            return {"avg": 0.0, "min": 0.0, "max": 0.0, "count": 0, "total": 0.0}
        return {
            "avg": self.avg,
            "min": self.min,
            "max": self.max,
            "count": self.count,
            "total": self.total,
        }


class RegionStats:
    """Per-region running statistics over per-step totals, bounded in the number of names.

    A region's value in a step is the sum of its calls in that step; ``count`` is the
    number of steps it appeared in and ``calls`` the number of times it was timed.
    Beyond ``max_names`` distinct names (e.g. names built from a step counter), new names
    are folded into ``"(other)"`` so memory stays bounded.
    """

    OTHER = "(other)"

    __slots__ = ("_stats", "last", "max_names", "overflowed")

    def __init__(self, max_names: int = 4096) -> None:
        self._stats: dict[str, RunningStats] = {}
        self.max_names = max_names
        self.overflowed = False
        # the step just added by add_values: (regions, names, ms, calls), for the text log
        self.last: tuple[Any, tuple[str, ...], Sequence[float], Sequence[int]] | None = None

    def resolve(self, names: tuple[str, ...]) -> list[RunningStats]:
        """The stats of ``names`` in order, created (or folded) as :meth:`add_step` would
        when it first sees them."""
        stats = self._stats
        out: list[RunningStats] = []
        for name in names:
            s = stats.get(name)
            out.append(s if s is not None else self._missing(name))
        return out

    def _missing(self, name: str) -> RunningStats:
        """The stats a name not seen yet adds to: its own, or :attr:`OTHER`'s once
        ``max_names`` are kept."""
        stats = self._stats
        if len(stats) >= self.max_names:
            self.overflowed = True
            name = self.OTHER
            s = stats.get(name)
            if s is not None:
                return s
        s = stats[name] = RunningStats()
        return s

    @staticmethod
    def add_values(found: list[RunningStats], ms: Sequence[float], ns: Sequence[int]) -> None:
        """:meth:`add_step` for a step whose names resolved to ``found`` (:meth:`resolve`),
        with their values and call counts in the same order."""
        for s, x, n in zip(found, ms, ns, strict=True):
            s.count += 1
            s.total += x
            if x < s.min:
                s.min = x
            if x > s.max:
                s.max = x
            s.calls += n

    def add_step(self, regions: dict[str, tuple[float, int]]) -> None:
        """Fold one step's ``{name: (ms, calls)}`` (the general path; the writer's usual one
        is :meth:`resolve` once per region set, then :meth:`add_values`)."""
        vals = regions.values()
        self.add_values(self.resolve(tuple(regions)), [v[0] for v in vals], [v[1] for v in vals])

    def get(self, name: str) -> RunningStats | None:
        return self._stats.get(name)

    def names(self) -> list[str]:
        return list(self._stats)

    def summary(self) -> dict[str, dict[str, float]]:
        """``{name: {"avg", "min", "max", "count", "total", "calls"}}`` in milliseconds."""
        out: dict[str, dict[str, float]] = {}
        for name, s in self._stats.items():
            d = s.as_dict()
            d["calls"] = s.calls
            out[name] = d
        return out

    def __len__(self) -> int:
        return len(self._stats)
