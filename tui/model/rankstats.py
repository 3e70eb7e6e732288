"""Statistics across steps and ranks that the snapshot carries: memory trend, stragglers.

Memory growth over a run is tracked by :class:`MemTrend`: constant memory and constant work
per step (an early window, a ring of recent values and a running least-squares slope).

Ranks are compared step by step over the steps every rank has: by step wall time
(:func:`compare_walls`: the slowest rank and the spread) and by compute
(:func:`judge_stragglers`, the :class:`StragglerVerdict`: under DDP every rank's step is
equally long, so the slow rank is the one that waits least). The limits a straggler must
pass are :class:`StragglerLimits`; the diagnosis' thresholds extend them (docs/advice.md).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import islice
from typing import Any, TypeVar

import numpy as np

from tui.model.causes import (  # noqa: F401
    CAUSE_WORDS,
    CAUSES,
    behind_reason,
    cause_of,
    excess_over_others,
    group_reason,
    input_behind,
    slow_group,
    slow_now_and_then,
    untimed_wait,
    why_named,
)
from tui.model.perstep import _per_step, _rank_table  # noqa: F401

# the phases live in tui/model/phases.py; re-exported here, where they were first defined
from tui.model.phases import (  # noqa: F401
    EXPOSED_REGIONS,
    H2D_REGIONS,
    INPUT_REGIONS,
    LAUNCH_REGION,
    RECENT_COLUMNS,
    SYNC_REGION,
    WAIT_REGIONS,
)
from tui.model.phases import UNMEASURED_CAVEAT as _CAVEAT
from tui.model.units import json_tree, median, ok, pct
from tui.model.units import ms as _ms

T = TypeVar("T")

# --------------------------------------------------------------------------- memory trend


@dataclass(frozen=True, slots=True)
class TrendFacts:
    """What :class:`MemTrend` concluded: means of an early and a recent window, and a slope."""

    samples: int  # values seen after the skipped warm-up ones
    first_step: int
    last_step: int
    early_mean: float  # bytes
    recent_mean: float  # bytes
    slope: float  # bytes per step (least squares over every value after warm-up)
    window: int

    @property
    def growth(self) -> float:
        """Recent mean minus early mean, bytes."""
        return self.recent_mean - self.early_mean

    @property
    def ready(self) -> bool:
        """True once the early and the recent window no longer overlap."""
        return self.samples >= 2 * self.window


class MemTrend:
    """Memory over a run with bounded cost: ``add(step, bytes)`` once per step.

    The first ``skip`` values are ignored (optimizer state and allocator pools appear during
    the first steps). The next ``window`` values form the early window; a ring keeps the last
    ``window`` values; a running least-squares fit (Welford-style co-moments, numerically
    stable) gives bytes per step over everything after the warm-up.
    """

    __slots__ = (
        "_cxy",
        "_early",
        "_first",
        "_last",
        "_mx",
        "_my",
        "_n",
        "_ring",
        "_skipped",
        "_sxx",
        "skip",
        "window",
    )

    def __init__(self, window: int = 20, skip: int = 3) -> None:
        self.window = max(2, int(window))
        self.skip = max(0, int(skip))
        self._skipped = 0
        self._early: list[float] = []
        self._ring: deque[float] = deque(maxlen=self.window)
        self._n = 0
        self._mx = 0.0
        self._my = 0.0
        self._sxx = 0.0
        self._cxy = 0.0
        self._first = 0
        self._last = 0

    def add(self, step: int, value: float | None, merged: bool = False) -> None:
        """One step's memory (bytes); None or a non-finite value is ignored. ``merged``: its
        moments as :meth:`add_batch` merges a batch of one (the same bits, no numpy)."""
        if value is None:
            return
        v = float(value)
        if not math.isfinite(v):
            return
        if self._skipped < self.skip:
            self._skipped += 1
            return
        if self._n == 0:
            self._first = step
        self._last = step
        if len(self._early) < self.window:
            self._early.append(v)
        self._ring.append(v)
        if merged:
            return self._merge(float(step), v, 0.0, 0.0, 1)
        self._n += 1
        x = float(step)
        dx = x - self._mx
        self._mx += dx / self._n
        self._my += (v - self._my) / self._n
        self._sxx += dx * (x - self._mx)
        self._cxy += dx * (v - self._my)

    def add_batch(self, steps: Sequence[int], memories: Sequence[Mapping[str, Any] | None]) -> None:
        """Many steps at once (the monitor folds records in batches): ``memory`` dicts of step
        records, using ``allocated`` (device) or else ``rss`` (host). Same result as ``add``
        (to rounding: the batch's moments are merged in, with numpy)."""
        vals = [m.get("allocated") if m else None for m in memories]
        if None in vals:  # host memory, or steps without: the full rule
            vals = [m.get("allocated", m.get("rss")) if m else None for m in memories]
        v = np.array(vals, dtype=np.float64)  # None -> NaN
        x = np.array(steps, dtype=np.int64)
        finite = np.isfinite(v)
        if not finite.all():
            v, x = v[finite], x[finite]
        if self._skipped < self.skip:
            k = min(len(v), self.skip - self._skipped)
            self._skipped += k
            v, x = v[k:], x[k:]
        if not len(v):
            return
        if self._n == 0:
            self._first = int(x[0])
        self._last = int(x[-1])
        room = self.window - len(self._early)
        if room > 0:
            self._early.extend(v[:room].tolist())
        self._ring.extend(v[-self.window :].tolist())
        self._merge_moments(x.astype(np.float64), v)

    def _merge_moments(self, xf: np.ndarray, v: np.ndarray) -> None:
        """Merge a batch's mean and co-moments into the running ones (Chan et al.)."""
        nb = len(v)
        if nb == 1:  # one step (the live case): the same arithmetic, without numpy calls
            mxb, myb, sxxb, cxyb = float(xf[0]), float(v[0]), 0.0, 0.0
        else:
            # np.mean's arithmetic (its sum over the count) without its Python layer
            mxb, myb = float(np.add.reduce(xf)) / nb, float(np.add.reduce(v)) / nb
            dxb = xf - mxb
            sxxb, cxyb = float(np.dot(dxb, dxb)), float(np.dot(dxb, v - myb))
        self._merge(mxb, myb, sxxb, cxyb, nb)

    def _merge(self, mxb: float, myb: float, sxxb: float, cxyb: float, nb: int) -> None:
        na, n = self._n, self._n + nb
        dx, dy = mxb - self._mx, myb - self._my
        self._mx += dx * nb / n
        self._my += dy * nb / n
        self._sxx += sxxb + dx * dx * na * nb / n
        self._cxy += cxyb + dx * dy * na * nb / n
        self._n = n

    def facts(self) -> TrendFacts | None:
        """The trend so far; None before the first value after the warm-up."""
        if self._n == 0:
            return None
        return TrendFacts(
            samples=self._n,
            first_step=self._first,
            last_step=self._last,
            early_mean=sum(self._early) / len(self._early),
            recent_mean=sum(self._ring) / len(self._ring),
            slope=self._cxy / self._sxx if self._sxx > 0 else 0.0,
            window=self.window,
        )


def worst_trend(trends: Iterable[TrendFacts | None]) -> TrendFacts | None:
    """The rank whose memory grew most (ready trends first)."""
    live = [t for t in trends if t is not None]
    if not live:
        return None
    return max(live, key=lambda t: (t.ready, t.growth))


# --------------------------------------------------------------------------- ranks by step


def common_steps(maps: Sequence[Mapping[int, Any]], window: int | None = None) -> list[int]:
    """The steps every map (one per rank, keyed by step) has, ascending; the last ``window``
    of them when given."""
    if not maps:
        return []
    steps = sorted(set(maps[0]).intersection(*maps[1:]))
    return steps[-window:] if window else steps


_SLACK = 64  # entries past the window a rising tail is read back for the common steps


def _recent_common(
    tails: Mapping[int, Any], ranks: list[int], window: int
) -> tuple[list[dict[int, float]], list[int]] | None:
    """:func:`compare_walls`' maps and steps from the last ``window + _SLACK`` entries of
    each tail, when every tail's steps rise (a live run's): a common step at or after the
    oldest entry read of every rank is in what was read, so the last ``window`` such steps
    are the whole tails' when there are that many (else None: the whole tails are read)."""
    n = window + _SLACK
    parts = [list(islice(reversed(tails[r]), n)) for r in ranks]  # newest first
    if not all(parts) or all(len(p) < n for p in parts):
        return None  # short tails: read whole
    oldest = max(p[-1][0] for p in parts)
    maps = [dict(reversed(p)) for p in parts]
    common = [s for s in sorted(set(maps[0]).intersection(*maps[1:])) if s >= oldest]
    return (maps, common[-window:]) if len(common) >= window else None


def compare_walls(
    tails: Mapping[int, Iterable[tuple[int, float]]],
    world_size: int,
    window: int,
    rising: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step that every rank has among its ``(step, wall ms)`` ``tails`` (the last
    ``window`` such steps, oldest first): slowest rank, spread (max - min wall ms) and excess
    of the slowest over the median. Empty until all ``world_size`` ranks have steps.
    ``rising``: every tail's steps rise (deques; the same figures from their last entries:
    a long live run's tails hold thousands, which cost ~17 ms a comparison at 64 ranks)."""
    none = np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    if world_size < 2 or len(tails) < world_size or len(tails) < 2:
        return none
    ranks = sorted(tails)
    got = _recent_common(tails, ranks, window) if rising and window > 0 else None
    if got is not None:
        maps, steps = got
    else:
        maps = [dict(tails[r]) for r in ranks]  # a repeated step: the later one wins
        steps = common_steps(maps, window)
    if not steps:
        return none
    walls = np.array([[m[s] for m in maps] for s in steps])  # steps x ranks
    order = np.argsort(walls, axis=1, kind="stable")
    srt = np.take_along_axis(walls, order, axis=1)
    slow = np.asarray(ranks, dtype=np.int64)[order[:, -1]]
    k = srt.shape[1]
    med = srt[:, k // 2] if k % 2 else (srt[:, k // 2 - 1] + srt[:, k // 2]) / 2
    return slow, srt[:, -1] - srt[:, 0], srt[:, -1] - med


# --------------------------------------------------------------------------- stragglers


@dataclass(frozen=True, slots=True)
class StragglerLimits:
    """What a rank must pass to be named a straggler (shares are of the step wall time)."""

    #: a straggler's compute (step wall minus all-reduce and data wait) must exceed the median
    #: of the other ranks' by at least this share of a step
    straggler_excess: float = 0.05
    #: ... and by this many times the run's step-to-step noise (robust σ of a rank's compute)
    straggler_noise: float = 2.0
    #: ... being the slowest rank in at least this share of the compared steps
    straggler_recurrence: float = 0.6
    #: ... over at least this many steps compared across ranks (or the whole window if shorter)
    straggler_min_steps: int = 10
    #: no steady straggler, but one rank slow now and then: a step counts when its slowest
    #: rank's excess is above the floor and this many times the noise; named when one rank
    #: is the slowest in at least ``intermittent_share`` of at least ``intermittent_min``
    #: such steps (and in at least 10% of the compared steps)
    intermittent_noise: float = 3.0
    intermittent_share: float = 0.8
    intermittent_min: int = 3


DEFAULT_LIMITS = StragglerLimits()


#: how the wait at the all-reduce was known
WAIT_MEASURED = "measured"  # comm/exposed (stagewatch.watch_ddp) or the trainer's allreduce
WAIT_ESTIMATED = "backward"  # estimated from the backward region's self time across ranks
#: no backward region: estimated from the untimed rest of the step (wall minus the timed
#: input, copy and comm hook) across ranks, when every rank's steps are equally long (DDP)
WAIT_REST = "rest"
WAIT_UNKNOWN = "none"


@dataclass(frozen=True, slots=True)
class RankCompute:
    """One rank over the compared steps (medians per step, ms)."""

    rank: int
    wall_ms: float
    compute_ms: float  # own time minus input, h2d and its own comm-hook time
    allreduce_ms: float  # wait at the all-reduce for the other ranks (measured or estimated)
    data_ms: float
    excess_ms: float  # median over steps of own time minus the median of the other ranks'
    slowest: int  # compared steps in which this rank's own time was the longest
    h2d_ms: float = 0.0
    launch_ms: float = 0.0  # time in its own comm hook before handing the collective off
    exposed_ms: float = math.nan  # measured exposed all-reduce (NaN: not measured)
    own_ms: float = math.nan  # step wall minus the wait: the time this rank itself needed


@dataclass(frozen=True, slots=True)
class StragglerVerdict:
    """Which rank, if any, the others wait for, and why: judged by each rank's own time
    (step wall minus its wait at the all-reduce), not by step time.

    DDP's all-reduce makes every rank's step equally long, so the slow rank is the one that
    *waits least*. A rank is named only when its excess over the other ranks is at least
    ``floor_ms`` (a share of the step), above ``noise_mult`` × the run's step-to-step noise,
    and it is the slowest rank in most compared steps (``recurrence``). The cause is the
    class of its own time (input, h2d, compute, communication) whose excess is largest.
    """

    ranks: tuple[RankCompute, ...]
    compared_steps: int
    first_step: int
    last_step: int
    step_ms: float  # median step wall over ranks and compared steps
    noise_ms: float  # robust standard deviation of a rank's own time from step to step
    floor_ms: float
    straggler: int | None
    excess_ms: float  # of the straggler, or of the rank furthest behind when none is named
    recurrence: float  # share of compared steps in which that rank was the slowest
    reason: str  # one line: why a rank is (or is not) named
    wait_source: str = WAIT_MEASURED  # WAIT_MEASURED, WAIT_ESTIMATED or WAIT_UNKNOWN
    cause: str | None = None  # one of CAUSES, for the named straggler
    cause_ms: float = math.nan  # the straggler's excess in that class, ms per step
    cause_rank_ms: float = math.nan  # its time in that class
    cause_others_ms: float = math.nan  # the other ranks' (median of their medians)
    parts: tuple[tuple[str, float], ...] = ()  # excess of every class, CAUSES order
    # no steady straggler, but this rank is slow now and then (the reason says how often,
    # by how much and why, in the steps it is slow); None otherwise
    intermittent: int | None = None
    # no single straggler, but these ranks are slow alike (the reason says by how much and
    # why); empty otherwise
    group: tuple[int, ...] = ()
    # the straggler was named by its input: the others wait for it in a collective outside
    # the measured all-reduce (input_behind), so their waits there are not its cost
    waits_outside: bool = False

    def rank(self, r: int) -> RankCompute | None:
        """The figures of rank ``r``; None when it was not compared."""
        return next((x for x in self.ranks if x.rank == r), None)

    @property
    def span(self) -> str:
        """The steps compared: ``last 100 steps (61–160)``."""
        return f"last {self.compared_steps} steps ({self.first_step}–{self.last_step})"

    @property
    def measured(self) -> bool:
        """The wait at the all-reduce was measured (not estimated, not unknown)."""
        return self.wait_source == WAIT_MEASURED

    def waits(self) -> list[tuple[int, float]]:
        """(rank, ms per step it waits at the all-reduce) of every other rank, when named."""
        if self.straggler is None:
            return []
        return [(x.rank, x.allreduce_ms) for x in self.ranks if x.rank != self.straggler]

    def who_waits(self) -> str:
        """'rank 0 waits 250 ms per step for rank 1 at the all-reduce', or the reason for none."""
        if self.straggler is None:
            return self.reason
        if self.waits_outside:
            return (
                f"the other ranks wait for rank {self.straggler} outside the all-reduce "
                "(not measured there)"
            )
        if self.wait_source == WAIT_UNKNOWN:
            return f"the other ranks' wait for rank {self.straggler} is not measured"
        w = self.waits()
        if len(w) <= 3:
            who = ", ".join(f"rank {r} {_ms(ms)}" for r, ms in w)
        else:
            avg = sum(ms for _, ms in w) / len(w)
            who = f"{len(w)} ranks ~{_ms(avg)} each"
        how = _HOW.get(self.wait_source, "")
        return f"waiting for rank {self.straggler} at the all-reduce, per step{how}: {who}"

    def cause_text(self) -> str:
        """``rank 1: input wait +60.2 ms per step (49% of the step; 62.1 ms vs 1.9 ms)``;
        empty when no rank is named."""
        if self.straggler is None or self.cause is None:
            return ""
        share = self.cause_ms / self.step_ms if ok(self.step_ms) and self.step_ms > 0 else math.nan
        pc = f"{pct(share)} of the step; " if ok(share) else ""
        return (
            f"rank {self.straggler}: {CAUSE_WORDS[self.cause]} +{_ms(self.cause_ms)} per step "
            f"({pc}{_ms(self.cause_rank_ms)} vs {_ms(self.cause_others_ms)} on the others)"
        )

    def brief(self) -> str:
        """A few words for a header: ``straggler rank 1 +98.7 ms input`` or ``no straggler``."""
        if self.straggler is None:
            if self.group:
                return "ranks " + ", ".join(map(str, self.group)) + " slow"
            if self.intermittent is not None:
                return f"rank {self.intermittent} slow now and then"
            if self.compared_steps < 2:
                return ""
            seen = self.measured and not self.reason.startswith("no straggler found")
            return "no straggler" if seen else "no straggler found"  # see the reason
        return f"straggler rank {self.straggler} +{_ms(self.excess_ms)} {self.cause or 'compute'}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (floats to 6 significant figures, non-finite ones to None)."""
        d = asdict(self)
        d["cause_text"] = self.cause_text()
        d["parts"] = {k: v for k, v in self.parts}
        return json_tree(d)  # type: ignore[no-any-return]


#: how a wait that was not measured was known, after the figures in ``who_waits``
_HOW = {
    WAIT_ESTIMATED: " (estimated from backward)",
    WAIT_REST: " (estimated from the untimed rest of the step)",
}


def _waits(x: np.ndarray, alike: float) -> tuple[np.ndarray, str]:
    """Per step and rank, the wait at the all-reduce, and how it is known: measured by every
    rank; else each rank's ``backward`` self time over the fastest rank's (under DDP the
    waiting ranks show the wait there); else, when the ranks' median step walls are within
    ``alike`` (a share) of each other, as under DDP, the rest of the step (all but the timed
    input, copy and comm hook) over the fastest rank's: the wait is in that rest, so a rank
    slow in its input is not hidden by its peers' untimed wait; else unknown (zero)."""
    wait, sync = x[:, :, 1], x[:, :, 5]
    if not np.isnan(wait).any():
        return wait, WAIT_MEASURED
    if not np.isnan(sync).any():
        return sync - sync.min(axis=1, keepdims=True), WAIT_ESTIMATED
    z = np.nan_to_num(x)
    wm = np.median(z[:, :, 0], axis=0)
    if wm.max() - wm.min() <= alike * float(np.median(wm)):
        rest = z[:, :, 0] - z[:, :, 2] - z[:, :, 3] - z[:, :, 4]
        return rest - rest.min(axis=1, keepdims=True), WAIT_REST
    return np.zeros_like(wait), WAIT_UNKNOWN


def judge_stragglers(
    per_rank: Mapping[int, Sequence[Sequence[float]]],
    thresholds: StragglerLimits | None = None,
    window: int | None = None,
    tables: Mapping[int, np.ndarray] | None = None,
) -> StragglerVerdict | None:
    """The straggler verdict from each rank's recent steps ``(step, *RECENT_COLUMNS)`` ms
    (the first three columns at least: wall, wait, data; a missing one is unknown).

    Only steps every rank has are compared (cost: ranks × steps, bounded by the window).
    None with fewer than two ranks or no common step. ``tables``: a rank's rows already as
    an array (``np.array(rows)``), where known.
    """
    t = thresholds or DEFAULT_LIMITS
    table = _per_step(per_rank, window, tables)
    if table is None:
        return None
    ranks, steps, x = table
    wait, source = _waits(x, t.straggler_excess)
    z = np.nan_to_num(x)
    wall, data, h2d, launch = z[:, :, 0], z[:, :, 2], z[:, :, 3], z[:, :, 4]
    own = wall - wait
    comp = own - data - h2d - launch
    n, k = own.shape
    excess, order = excess_over_others(own)
    slow_counts = np.bincount(order[:, -1], minlength=k)
    med = np.median(z, axis=0)  # (ranks, columns)
    emed = np.median(excess, axis=0)
    cmed, omed, wmed = np.median(comp, axis=0), np.median(own, axis=0), np.median(wait, axis=0)
    exposed = np.median(x[:, :, 6], axis=0)  # NaN when not measured
    rows = [
        RankCompute(
            rank=r,
            wall_ms=float(med[i, 0]),
            compute_ms=float(cmed[i]),
            allreduce_ms=float(wmed[i]) if source != WAIT_UNKNOWN else math.nan,
            data_ms=float(med[i, 2]),
            excess_ms=float(emed[i]),
            slowest=int(slow_counts[i]),
            h2d_ms=float(med[i, 3]),
            launch_ms=float(med[i, 4]),
            exposed_ms=float(exposed[i]),
            own_ms=float(omed[i]),
        )
        for i, r in enumerate(ranks)
    ]
    step_ms = median([x.wall_ms for x in rows])
    floor = t.straggler_excess * step_ms if ok(step_ms) else math.inf
    wi = max(range(k), key=lambda i: (rows[i].excess_ms, -rows[i].rank))
    # noise: step-to-step variation of each rank's own time (1.4826 × MAD ≈ σ), median of
    # the ranks but the one furthest behind, whose own spread is its slowness when it
    # straggles by uneven amounts (a slow loader's 40 or 80 ms): not noise to excuse it by
    mad = 1.4826 * np.median(np.abs(own - omed), axis=0)
    noise = float(np.median(np.delete(mad, wi)))
    worst = rows[wi]
    share = worst.excess_ms / step_ms if ok(step_ms) and step_ms > 0 else math.nan
    need = min(t.straggler_min_steps, window) if window else t.straggler_min_steps
    # the runner-up; with two ranks the excess is the margin already
    others = [x for x in rows if x is not worst and k > 2]
    runner = max(others, key=lambda x: x.own_ms, default=None)
    named, reason = why_named(
        worst, runner, n, need, floor, noise, share, t, measured=source == WAIT_MEASURED
    )
    if named is None and source in _CAVEAT and n >= need:
        reason += _CAVEAT[source]
    parts = {"input": data, "h2d": h2d, "compute": comp, "communication": launch}
    cause, cms, crank, cothers, table_ = cause_of(parts, wi, 0.5 * worst.excess_ms)
    now_and_then, group = None, None
    if named is None and n >= need and source in (WAIT_MEASURED, WAIT_ESTIMATED) and k > 2:
        # ranks alike: the wait measured, none is waiting; estimated, only when they share a
        # class (a rank waiting outside backward, e.g. DDP's buffer broadcast, shows compute)
        group = slow_group(own, parts, floor, t.straggler_noise * noise, t)
        if group is not None and source != WAIT_MEASURED and group[2] is None:
            group = None
        if group is not None:
            reason = group_reason(group, ranks, n, measured=source == WAIT_MEASURED)
    excess_ms, rec, outside = worst.excess_ms, worst.slowest / n, False
    if named is None and n >= need and source == WAIT_MEASURED and group is None:
        behind = input_behind(parts, floor, t)
        if behind is not None:  # the others wait for it in a collective not measured
            wi, excess_ms, latest = behind
            named, rec, outside = ranks[wi], latest / n, True
            reason = behind_reason(wi, excess_ms, latest, n, ranks)
            cause, cms, crank, cothers, table_ = cause_of(parts, wi, 0.5 * excess_ms)
    if named is None and n >= need and group is None:
        keep = (rec, outside, excess_ms, reason)
        named, rec, outside, excess_ms, reason, cut = untimed_wait(own, x, ranks, floor, t, keep)
        if cut is not None:  # the others' untimed wait is not the named rank's compute
            parts = dict(parts, compute=comp - cut)
            wi = ranks.index(named)  # type: ignore[arg-type]
            cause, cms, crank, cothers, table_ = cause_of(parts, wi, 0.5 * excess_ms)
    if named is None and n >= need and group is None:
        spikes = slow_now_and_then(
            own,
            excess,
            order,
            parts,
            floor,
            max(noise * t.intermittent_noise, 0.0),
            ranks,
            t,
            steps,
        )
        if spikes is not None:
            now_and_then, reason = spikes[0], spikes[1] + (_CAVEAT.get(source, ""))
    return StragglerVerdict(
        ranks=tuple(rows),
        compared_steps=n,
        first_step=steps[0],
        last_step=steps[-1],
        step_ms=step_ms,
        noise_ms=noise,
        floor_ms=floor,
        straggler=named,
        excess_ms=excess_ms,
        recurrence=rec,
        reason=reason,
        wait_source=source,
        cause=cause if named is not None else None,
        cause_ms=cms if named is not None else math.nan,
        cause_rank_ms=crank if named is not None else math.nan,
        cause_others_ms=cothers if named is not None else math.nan,
        parts=table_ if named is not None else (),
        intermittent=None if now_and_then is None else ranks[now_and_then],
        group=() if group is None else tuple(ranks[i] for i in group[0]),
        waits_outside=outside,
    )
