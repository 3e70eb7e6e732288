"""The classic per-step text log (the BRIEF's block format), with correct totals.

Unlike the original logger, every percentage is a share of the step wall time, children
are indented under their parents (so nothing is counted twice), time outside every
top-level region is its own ``Unaccounted`` line, and ``Total`` is the step wall time.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stagewatch.records import unaccounted_ms

# ``template % values`` with fast fixed-point floats, the same text (_fmt.c); Python's own
# ``%`` where the extension was not built (no C compiler at install) or
# STAGEWATCH_PURE_PYTHON is set
render: Callable[[str, tuple[Any, ...]], str] = str.__mod__
if not os.environ.get("STAGEWATCH_PURE_PYTHON"):
    try:
        from stagewatch.timing._fmt import render
    except ImportError:
        pass

RULE = "=" * 80
LABEL_WIDTH = 40


def tree_order(values: Mapping[str, float]) -> list[tuple[str, int, bool]]:
    """Region names in display order: ``(name, depth, present)``.

    Siblings are sorted by time (largest first); children follow their parent. Ancestors
    that were never timed themselves (``a/b`` logged without ``a``) are included with
    ``present=False`` so that the tree stays readable.
    """
    nodes: dict[str, bool] = {}
    for name in values:
        nodes[name] = True
        i = name.find("/")
        while i > 0:
            nodes.setdefault(name[:i], False)
            i = name.find("/", i + 1)
    children: dict[str, list[str]] = {}
    for name in nodes:
        cut = name.rfind("/")
        children.setdefault(name[:cut] if cut > 0 else "", []).append(name)
    for kids in children.values():
        kids.sort(key=lambda n: (-values.get(n, 0.0), n))
    out: list[tuple[str, int, bool]] = []
    stack: list[tuple[str, int]] = [(n, 0) for n in reversed(children.get("", []))]
    while stack:
        name, depth = stack.pop()
        out.append((name, depth, nodes[name]))
        stack.extend((k, depth + 1) for k in reversed(children.get(name, [])))
    return out


def _label(name: str, depth: int) -> str:
    if depth == 0:
        return name
    leaf = name[name.rfind("/") + 1 :]
    return "  " * depth + "- " + leaf


def _pct(ms: float, wall_ms: float) -> float:
    return 100.0 * ms / wall_ms if wall_ms > 0 else 0.0


def format_step(
    step: int,
    wall_ms: float,
    regions: Mapping[str, tuple[float, int]],
    avg_of: Callable[[str], float | None] | None = None,
) -> str:
    """One step's block, ending with a newline."""
    lines = [RULE, f"Step {step}", RULE]
    ms_of = {k: v[0] for k, v in regions.items()}
    for name, depth, present in tree_order(ms_of):
        label = f"{_label(name, depth):<{LABEL_WIDTH}}"
        if not present:
            lines.append(f"{label} :          - (not timed itself)")
            continue
        ms, n = regions[name]
        line = f"{label} : {ms:9.2f}ms ({_pct(ms, wall_ms):5.1f}%)"
        avg = avg_of(name) if avg_of is not None else None
        if avg is not None:
            line += f" [avg: {avg:9.2f}ms]"
        if n > 1:
            line += f" x{n}"
        lines.append(line)
    un = unaccounted_ms(wall_ms, dict(regions))
    lines.append(f"{'Unaccounted':<{LABEL_WIDTH}} : {un:9.2f}ms ({_pct(un, wall_ms):5.1f}%)")
    covered = sum(ms for name, (ms, _) in regions.items() if "/" not in name)
    if covered > wall_ms * 1.001 + 0.01:
        over = covered - wall_ms
        lines.append(
            f"{'Overlap':<{LABEL_WIDTH}} : {over:9.2f}ms "
            "(top-level regions overlap, e.g. from other threads)"
        )
    lines.append(f"{'Total':-<{LABEL_WIDTH + 1}}: {wall_ms:9.2f}ms")
    return "\n".join(lines) + "\n"


_first, _second = operator.itemgetter(0), operator.itemgetter(1)
REORDER_STEPS = 1000  # a cached order follows the running averages at most this many steps late
TOTAL = f"{'Total':-<{LABEL_WIDTH + 1}}: %9.2fms\n"  # the last line, as format_step writes it


class _Cached:
    """One region set's block: its lines, its names in display order and their stats, and
    the template for one pattern of call counts (``x3``), baked in: a ``%`` conversion
    costs about as much as a float's, so the counts are not converted every step."""

    __slots__ = (
        "built",
        "cols",
        "entries",
        "get",
        "lines",
        "ns",
        "pick",
        "stats",
        "template",
        "total",
        "vals",
    )

    def __init__(
        self, lines: list[str], entries: list[tuple[str, Any]], built: int, key: tuple[str, ...]
    ) -> None:
        self.lines = lines  # entry lines (their " x<n>" left off), then the others
        self.entries = entries
        self.built = built
        names = [n for n, _ in entries]
        # the values of the names in display order, as a tuple, in one C call
        self.get = operator.itemgetter(*names) if len(names) > 1 else _one_getter(names)
        # ... from lists in the record's order (``key``: its names)
        where = {n: i for i, n in enumerate(key)}
        self.pick = _getter([where[n] for n in names])
        self.stats = [s for _, s in entries]
        k = len(names)
        # step, 3 per name, unaccounted (ms, %), the wall time (the Total line)
        self.vals: list[Any] = [None] * (4 + 3 * k)
        self.cols = slice(1, 3 * k + 1, 3), slice(2, 3 * k + 2, 3), slice(3, 3 * k + 3, 3)
        self.ns: tuple[int, ...] | None = None  # the counts baked in (None: none yet)
        self.template = ""  # the block up to its Unaccounted line
        self.total = ""  # ... and its Total line

    def bake(self, ns: tuple[int, ...]) -> None:
        """The template for the call counts ``ns`` (of the names in display order)."""
        lines = list(self.lines)
        k = 0
        for i, line in enumerate(lines):
            if line.endswith("[avg: %9.2fms]"):
                if ns[k] > 1:
                    lines[i] = f"{line} x{ns[k]}"
                k += 1
        self.template = "\n".join(lines)
        self.total = self.template + TOTAL
        self.ns = ns


def _one_getter(names: list[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    if not names:
        return lambda d: ()
    name = names[0]
    return lambda d: (d[name],)


def _getter(keys: list[Any]) -> Callable[[Any], tuple[Any, ...]]:
    """``itemgetter(*keys)``, always giving a tuple."""
    if len(keys) > 1:
        return operator.itemgetter(*keys)
    return _one_getter(keys)


class StepFormatter:
    """:func:`format_step` for a run's stream of steps, at a fraction of its cost.

    The tree order and a ``%`` template of the block are built once per region set (the
    names of a step, in the order they were recorded) and reused, so a step costs one
    ``%`` format. Siblings are ordered by their running average (``stats``), refreshed
    every :data:`REORDER_STEPS` steps, rather than by this step's values: the block keeps
    its shape from step to step. ``stats.get(name)`` gives an object with ``total`` and
    ``count`` (a :class:`~stagewatch.timing.stats.RunningStats`) or None.
    """

    __slots__ = ("_cache", "_n", "_stats")

    def __init__(self, stats: Any) -> None:
        self._stats = stats
        self._cache: dict[tuple[str, ...], _Cached | None] = {}
        self._n = 0

    def _build(self, key: tuple[str, ...], regions: Mapping[str, tuple[float, int]]) -> _Cached:
        get = self._stats.get
        found = {name: get(name) for name in key}
        avgs = {n: (s.total / s.count if s.count else 0.0) for n, s in found.items() if s}
        parts = [RULE, "Step %d", RULE]
        entries: list[tuple[str, Any]] = []
        for name, depth, present in tree_order(avgs):
            label = f"{_label(name, depth):<{LABEL_WIDTH}}".replace("%", "%%")
            if not present:
                parts.append(f"{label} :          - (not timed itself)")
                continue
            parts.append(label + " : %9.2fms (%5.1f%%) [avg: %9.2fms]")
            entries.append((name, found[name]))
        parts.append(f"{'Unaccounted':<{LABEL_WIDTH}} : %9.2fms (%5.1f%%)\n")
        return _Cached(parts, entries, self._n, key)

    def format(
        self,
        step: int,
        wall_ms: float,
        regions: Mapping[str, tuple[float, int]],
        unaccounted: float,
        parts: tuple[tuple[str, ...], Sequence[float], Sequence[int]] | None = None,
    ) -> str:
        """One step's block (as :func:`format_step`); ``unaccounted``: its unaccounted ms
        (:func:`~stagewatch.records.unaccounted_ms`), already computed by the caller;
        ``parts``: ``(tuple(regions), ms, calls)`` in the order of ``regions``, if at hand."""
        self._n += 1
        key = tuple(regions) if parts is None else parts[0]
        c = self._cache.get(key)
        if c is None or self._n - c.built >= REORDER_STEPS:
            if len(self._cache) >= 64:  # e.g. names built from a counter: stay bounded
                self._cache.clear()
            c = self._cache[key] = self._build(key, regions)
        if len(c.entries) != len(key):  # a name without statistics (folded): the long way
            return format_step(step, wall_ms, regions, self._avg_of)
        w = wall_ms if wall_ms > 0 else math.inf
        if parts is not None:
            ms = c.pick(parts[1])
            ns = c.pick(parts[2])
        else:
            pairs = c.get(regions)
            ms = tuple(map(_first, pairs))
            ns = tuple(map(_second, pairs))
        # the template's values, interleaved by slice assignment (in C) rather than per name
        if ns != c.ns:
            c.bake(ns)
        vals = c.vals
        col_ms, col_pct, col_avg = c.cols
        vals[0] = step
        vals[col_ms] = ms
        vals[col_pct] = [100.0 * m / w for m in ms]
        vals[col_avg] = [s.total / s.count for s in c.stats]
        vals[-3] = unaccounted
        vals[-2] = 100.0 * unaccounted / w
        vals[-1] = wall_ms
        if unaccounted:  # no Overlap line: the Total line is in the template
            return render(c.total, tuple(vals))
        block = render(c.template, tuple(vals[:-1]))
        covered = sum(v[0] for name, v in regions.items() if "/" not in name)
        if covered > wall_ms * 1.001 + 0.01:
            block += (
                f"{'Overlap':<{LABEL_WIDTH}} : {covered - wall_ms:9.2f}ms "
                "(top-level regions overlap, e.g. from other threads)\n"
            )
        return block + f"{'Total':-<{LABEL_WIDTH + 1}}: {wall_ms:9.2f}ms\n"

    def _avg_of(self, name: str) -> float | None:
        s = self._stats.get(name)
        return s.total / s.count if s is not None and s.count else None


def format_summary(
    summary: Mapping[str, Mapping[str, float]],
    steps: int,
    wall_total_ms: float,
    unaccounted_total_ms: float,
) -> str:
    """The run summary: per region avg/min/max per step, calls, and share of all wall time."""
    avg_wall = wall_total_ms / steps if steps else 0.0
    lines = [
        RULE,
        f"Timing summary: {steps} steps, avg step {avg_wall:.2f}ms",
        RULE,
        f"{'region':<{LABEL_WIDTH}} : {'avg':>9}   {'min':>9}   {'max':>9}   share    steps  calls",
    ]
    totals = {k: float(v["total"]) for k, v in summary.items()}
    for name, depth, present in tree_order(totals):
        label = f"{_label(name, depth):<{LABEL_WIDTH}}"
        if not present:
            lines.append(f"{label} :          - (not timed itself)")
            continue
        s = summary[name]
        share = _pct(float(s["total"]), wall_total_ms)
        lines.append(
            f"{label} : {s['avg']:9.2f}ms {s['min']:9.2f}ms {s['max']:9.2f}ms "
            f"{share:5.1f}% {int(s['count']):8d} {int(s.get('calls', s['count'])):6d}"
        )
    un_avg = unaccounted_total_ms / steps if steps else 0.0
    lines.append(
        f"{'Unaccounted':<{LABEL_WIDTH}} : {un_avg:9.2f}ms {'':>9}   {'':>9}   "
        f"{_pct(unaccounted_total_ms, wall_total_ms):5.1f}%"
    )
    lines.append(f"{'Total':-<{LABEL_WIDTH + 1}}: {avg_wall:9.2f}ms per step")
    return "\n".join(lines) + "\n"
