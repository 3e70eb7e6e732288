"""A wait the straggler verdict cannot see: the ranks wait for a slow one in a collective of
the loop's own (``dist.all_reduce`` of the loss to log its mean) inside a *timed* region.

Neither the measured all-reduce (``comm/exposed``), nor its estimate from ``backward``, nor
the untimed rest of the step (:func:`tui.model.causes.untimed_behind`) holds that wait, so
every rank's own time looks alike. The ranks' folded windows still show it: the slow rank
spends more in one part of the step (a top-level region, a timed child of one, or the
region's own time outside its children; its work), every other rank as much more in another
(their wait). With three ranks or more the one rank that differs is named (that
every other rank is slow alike while it waits is the less likely reading); with two the
two readings are alike, and the verdict says the wait is not measured rather than guess.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tui.model.causes import excess_over_others
from tui.model.phases import H2D_REGIONS, INPUT_REGIONS, WAIT_REGIONS, find_phase, top_regions
from tui.model.rankstats import StragglerVerdict
from tui.model.snapshot import UNACCOUNTED
from tui.model.units import median, ok
from tui.model.units import ms as _ms

#: a region's excess must be this many times the run's step-to-step noise
_NOISE = 3.0


#: the own time of a region with timed children (its time outside them): a part of the step
SELF = " (own time)"


@functools.lru_cache(maxsize=64)
def _layout(names: tuple[str, ...]) -> list[tuple[str, list[int], list[int]]]:
    """The parts of the step for one rank's region columns (``names`` in column order):
    (part, columns added, columns taken away): each top-level region, or, when it has timed
    children, each child and its own time (the region minus them). Waiting regions left out."""
    cols = {n: i for i, n in enumerate(names)}
    out = []
    for c in top_regions(cols):
        name = names[c]
        if name.split("/", 1)[0] in WAIT_REGIONS:
            continue
        kids = [
            i
            for i, n in enumerate(names)
            if n.startswith(name + "/") and "/" not in n[len(name) + 1 :]
        ]
        out += [(names[k], [k], []) for k in kids]
        out.append((name + SELF if kids else name, [c], kids))
    return out


def _means(aggs: Sequence[Any]) -> tuple[list[str], np.ndarray]:
    """Window mean ms per step of each part of the step (:func:`_layout`, and the
    unaccounted time) per rank, in ``aggs``' order (0 where a rank lacks it): from the
    ranks' folded windows, ranks of one layout and window fill at once."""
    k = len(aggs)
    by: dict[tuple[tuple[str, ...], int], list[int]] = {}
    for j, a in enumerate(aggs):
        by.setdefault((tuple(a.names), a.filled), []).append(j)
    rows: dict[str, np.ndarray] = {}
    unaccounted = np.zeros(k)
    for (names, f), idx in by.items():
        if not f:
            continue
        ring = np.stack([aggs[j].ring[:f, : len(names)] for j in idx])  # g × steps × regions
        sums = np.add.reduce(np.where(ring == ring, ring, 0.0), axis=1) / f
        wall = np.add.reduce(np.stack([aggs[j].ring_wall[:f] for j in idx]), axis=1) / f
        for name, plus, minus in _layout(names):
            v = sums[:, plus].sum(axis=1) - sums[:, minus].sum(axis=1)
            rows.setdefault(name, np.zeros(k))[idx] = np.maximum(v, 0.0)
        top = top_regions({n: i for i, n in enumerate(names)})
        unaccounted[idx] = np.maximum(wall - (sums[:, top].sum(axis=1) if top else 0.0), 0.0)
    rows[UNACCOUNTED] = unaccounted
    return list(rows), np.array(list(rows.values()))


def _offset(
    names: list[str], means: np.ndarray, floor: float
) -> tuple[int, int, float, int, float] | None:
    """(rank index, row of the region it spends more in, that excess over the others'
    median, row of the region every other rank spends more in than it does, the least of
    their excesses there), for the largest excess; None when none reaches ``floor``."""
    if not len(names):
        return None
    excess, _ = excess_over_others(means)  # per region, each rank over the others' median
    a, i = np.unravel_index(int(np.argmax(excess)), excess.shape)
    e = float(excess[a, i])
    if not e >= floor:
        return None
    least = np.delete(means, i, axis=1).min(axis=1) - means[:, i]  # every other rank's more
    least[a] = -np.inf
    b = int(np.argmax(least))
    if not least[b] >= 0.5 * e:
        return None
    return int(i), int(a), e, b, float(least[b])


def _cause(region: str, names: list[str]) -> str:
    """The class of the region a rank spends more in."""
    if region == find_phase(names, INPUT_REGIONS):
        return "input"
    if region == find_phase(names, H2D_REGIONS):
        return "h2d"
    return "compute"


def _where(name: str) -> str:
    if name.endswith(SELF):
        return f"in `{name[: -len(SELF)]}` outside its timed parts"
    return "outside every timed region" if name == UNACCOUNTED else f"in `{name}`"


def hidden_wait(aggs: Sequence[Any], v: StragglerVerdict | None) -> StragglerVerdict | None:
    """``v`` with the rank the others wait for in a collective inside a timed region, when
    no rank is named and the ranks' folded windows (``aggs``, RankAgg) show it (module
    docstring); ``v`` itself otherwise."""
    if v is None or v.straggler is not None or v.group or v.intermittent is not None:
        return v
    if v.reason.startswith("no straggler yet"):
        return v
    ranks = [x.rank for x in v.ranks]
    by = {a.rank: a for a in aggs}
    if len(ranks) < 2 or not ok(v.floor_ms) or any(r not in by for r in ranks):
        return v
    names, means = _means([by[r] for r in ranks])
    got = _offset(names, means, max(v.floor_ms, _NOISE * v.noise_ms))
    if got is None:
        return v
    i, ai, e, bi, least = got
    waits = [x.allreduce_ms for x in v.ranks if ok(x.allreduce_ms)]
    if waits and max(waits) - min(waits) >= 0.5 * e:  # the others' wait is measured there
        return v
    r, a, b = ranks[i], names[ai], names[bi]
    seen = f"rank {r} spends +{_ms(e)} per step {_where(a)} over the other ranks"
    if len(ranks) == 2:
        other = ranks[1 - i]
        return dataclasses.replace(
            v,
            reason=(
                f"no straggler found: {seen}, and rank {other} +{_ms(least)} {_where(b)}: one "
                "of them waits for the other there, in a collective that is not measured "
                "(e.g. an all-reduce of the loss), and with two ranks which one waits "
                "cannot be told from the figures"
            ),
        )
    vals = means[ai].tolist()
    others = median(vals[:i] + vals[i + 1 :])
    cause = _cause(a, names)
    return dataclasses.replace(
        v,
        straggler=r,
        excess_ms=e,
        recurrence=math.nan,
        reason=(
            f"{seen}, and every other rank at least +{_ms(least)} more {_where(b)}: they wait "
            "for it there, in a collective that is not measured (e.g. an all-reduce of the "
            "loss); judged from the window's means"
        ),
        cause=cause,
        cause_ms=e,
        cause_rank_ms=vals[i],
        cause_others_ms=others,
        parts=(),
        waits_outside=True,
    )
