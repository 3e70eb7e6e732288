"""A wait the straggler verdict cannot see: the ranks wait for a slow one in a collective of
the loop's own (``dist.all_reduce`` of the loss to log its mean) inside a *timed* region.

Neither the measured all-reduce (``comm/exposed``), nor its estimate from ``backward``, nor
the untimed rest of the step (:func:`tui.model.causes.untimed_behind`) holds that wait, so
every rank's own time looks alike. The region figures of a full snapshot still show it: the
slow rank spends more in one top-level region (its work), every other rank as much more in
another (their wait). With three ranks or more the one rank that differs is named (that
every other rank is slow alike while it waits is the less likely reading); with two the
two readings are alike, and the verdict says the wait is not measured rather than guess.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from tui.model.causes import excess_over_others
from tui.model.phases import H2D_REGIONS, INPUT_REGIONS, WAIT_REGIONS, find_phase
from tui.model.rankstats import StragglerVerdict
from tui.model.snapshot import UNACCOUNTED
from tui.model.units import median, ok
from tui.model.units import ms as _ms

#: a region's excess must be this many times the run's step-to-step noise
_NOISE = 3.0


#: the own time of a region with timed children (its time outside them): a part of the step
SELF = " (own time)"


def _rank_means(row: Any, at: dict[int, int], k: int) -> np.ndarray:
    out = np.zeros(k)
    for r, _whole, win in row.ranks:
        if r in at and win.steps and ok(win.avg):
            out[at[r]] = win.avg
    return out


def _means(snap: Any, ranks: list[int]) -> tuple[list[str], np.ndarray]:
    """Window mean ms per rank (in ``ranks``' order, 0 where a rank lacks it) of the parts
    of the step: each top-level region, or, when it has timed children, each child and its
    own time outside them; and the unaccounted time. The waiting regions are left out."""
    regions = [r for r in getattr(snap, "regions", ()) if not r.cut]
    regions = [r for r in regions if r.name.split("/", 1)[0] not in WAIT_REGIONS]
    at = {r: i for i, r in enumerate(ranks)}
    kids: dict[str, list[Any]] = {}
    for r in regions:
        if r.depth == 1 and r.parent is not None:
            kids.setdefault(r.parent, []).append(r)
    names, parts = [], []
    for r in regions:
        if r.depth != 0:
            continue
        mine = _rank_means(r, at, len(ranks))
        for c in kids.get(r.name, ()):
            m = _rank_means(c, at, len(ranks))
            names.append(c.name)
            parts.append(m)
            mine = mine - m
        names.append(r.name + SELF if r.name in kids else r.name)
        parts.append(np.maximum(mine, 0.0))
    un = getattr(snap, "unaccounted", None)
    if un is not None and getattr(un, "ranks", ()):
        names.append(un.name)
        parts.append(_rank_means(un, at, len(ranks)))
    return names, np.array(parts).reshape(len(parts), len(ranks))


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


def hidden_wait(snap: Any, v: StragglerVerdict | None) -> StragglerVerdict | None:
    """``v`` with the rank the others wait for in a collective inside a timed region, when
    no rank is named and the snapshot's region figures show it (module docstring); ``v``
    itself otherwise (a light snapshot has no region figures)."""
    if v is None or v.straggler is not None or v.group or v.intermittent is not None:
        return v
    if v.reason.startswith("no straggler yet") or not getattr(snap, "regions", ()):
        return v
    ranks = [x.rank for x in v.ranks]
    if len(ranks) < 2 or not ok(v.floor_ms):
        return v
    names, means = _means(snap, ranks)
    got = _offset(names, means, max(v.floor_ms, _NOISE * v.noise_ms))
    if got is None:
        return v
    i, ai, e, bi, least = got
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
