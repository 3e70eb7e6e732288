"""Why a rank is slow: the class of its own time (input, host-to-device copy, compute, its
own communication) with the largest excess over the other ranks, and a rank that is slow
now and then rather than steadily (:func:`slow_now_and_then`). Used by
:func:`tui.model.rankstats.judge_stragglers`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tui.model.phases import OUTSIDE_BACKWARD
from tui.model.units import ms as _ms
from tui.model.units import pct

#: the classes of a rank's own time, in the order they are reported
CAUSES = ("input", "h2d", "compute", "communication")
CAUSE_WORDS = {
    "input": "input wait",
    "h2d": "host-to-device copy",
    "compute": "compute",
    "communication": "communication (its own comm hook)",
}


def cause_of(
    parts: dict[str, np.ndarray], i: int, floor: float
) -> tuple[str | None, float, float, float, tuple[tuple[str, float], ...]]:
    """The class of rank index ``i``'s own time with the largest excess over the other
    ranks (median over steps): (cause, its excess, the rank's median, the others' median,
    every class's excess). None when no class exceeds ``floor``."""
    ex: dict[str, float] = {}
    for name, p in parts.items():  # per step: the rank's minus the median of the others'
        ex[name] = float(np.median(p[:, i] - np.median(np.delete(p, i, axis=1), axis=1)))
    best = max(CAUSES, key=lambda c: ex[c])
    table = tuple((c, ex[c]) for c in CAUSES)
    if not ex[best] > floor:
        return None, math.nan, math.nan, math.nan, table
    med = np.median(parts[best], axis=0)
    others = float(np.median(np.delete(med, i)))
    return best, ex[best], float(med[i]), others, table


def slow_now_and_then(
    own: np.ndarray,
    excess: np.ndarray,
    order: np.ndarray,
    parts: dict[str, np.ndarray],
    floor: float,
    above: float,
    ranks: Sequence[int],
    t: Any,
    steps: Sequence[int] | None = None,
) -> tuple[int, str] | None:
    """(rank index, reason) when no rank is slow steadily but one is slow now and then: in
    the steps where the slowest rank's own time stands out (above ``floor`` and ``above``, a
    multiple of the run's noise) and is ahead of the runner-up's by ``floor``, the same rank
    nearly every time, more often than chance would make it (counting the others' spikes
    only when alike in size). ``steps``: the compared steps, to say when the slow ones are
    bunched. ``own``, ``excess`` and
    ``order`` are judge_stragglers' (per step and rank); ``t`` its StragglerLimits. None
    otherwise."""
    n = len(order)
    slowest = order[:, -1]
    top = excess[np.arange(n), slowest]
    hit = top >= max(floor, above)
    if own.shape[1] > 2:  # and ahead of the runner-up (two ranks alike: neither is the one)
        srt = np.take_along_axis(own, order, axis=1)
        hit &= srt[:, -1] - srt[:, -2] >= floor
    count = int(hit.sum())
    if count < max(t.intermittent_min, 0.1 * n):
        return None
    k = excess.shape[1]
    by = np.bincount(slowest[hit], minlength=k)
    i = int(by.argmax())
    # a spike of another rank counts against this one only when it is alike in size: a
    # rank 40 ms behind every fifth step is not made chance by the others' 5 ms hiccups
    mine = hit & (slowest == i)
    big = mine | (hit & (top >= 0.25 * float(np.median(top[mine]))))
    count = int(big.sum())
    by = np.bincount(slowest[big], minlength=k)
    if by[i] < t.intermittent_share * count or _by_chance(int(by[i]), count, k) > 0.01:
        return None
    rows = big & (slowest == i)
    ex = float(np.median(top[rows]))
    sub = {name: p[rows] for name, p in parts.items()}
    cause, cms, _, _, _ = cause_of(sub, i, 0.5 * ex)
    why = f", mostly {CAUSE_WORDS[cause]} +{_ms(cms)}" if cause is not None else ""
    most = float(top[rows].max())  # a few big ones among small ones (an eval every 10 steps)
    upto = f" (up to +{_ms(most)})" if most > 2.0 * ex else ""
    return i, (
        f"no steady straggler; rank {ranks[i]} is slow now and then: its own time +{_ms(ex)}"
        f"{upto} over the other ranks in {int(by[i])} of {n} steps{_where(rows, steps)}{why} (the "
        "others wait for it in those steps)"
    )


def _where(rows: np.ndarray, steps: Sequence[int] | None) -> str:
    """`` (all in steps 1–20)`` when the slow steps are bunched in under half of those
    compared (a rank slow only for a while, e.g. while its cache warms); else empty."""
    if steps is None or len(steps) != len(rows):
        return ""
    at = np.flatnonzero(rows)
    if not len(at) or at[-1] - at[0] + 1 > len(rows) // 2:
        return ""
    return f" (all in steps {steps[at[0]]}–{steps[at[-1]]})"


def _by_chance(m: int, count: int, k: int) -> float:
    """How likely some one of ``k`` ranks is the slowest in ``m`` or more of ``count`` steps
    if each step's slowest were any rank alike (a binomial tail, times ``k``): hiccups of a
    loaded host fall on ranks at random, a slow rank's do not."""
    p = 1.0 / k
    tail = sum(math.comb(count, j) * p**j * (1.0 - p) ** (count - j) for j in range(m, count + 1))
    return min(1.0, k * tail)


def slow_group(
    own: np.ndarray, parts: dict[str, np.ndarray], floor: float, need: float, t: Any
) -> tuple[list[int], float, str | None, float] | None:
    """Two or more ranks slow alike, none the one (e.g. two of four with a slow disk): the
    ranks above the largest gap between the ranks' median own times, when that gap is above
    ``floor`` and ``need`` (a multiple of the noise) and in most steps
    (``t.straggler_recurrence``) every one of them is slower than every other rank.
    Returns (their indices, their median excess over the other ranks' median, the class
    with the largest excess common to them, its excess), or None."""
    k = own.shape[1]
    med = np.median(own, axis=0)
    order = np.argsort(med, kind="stable")
    gaps = np.diff(med[order])
    if k < 3 or not len(gaps):
        return None
    g = int(gaps.argmax())
    slow, fast = order[g + 1 :], order[: g + 1]
    if len(slow) < 2 or not (gaps[g] > floor and gaps[g] >= need):
        return None
    if med[slow].max() - med[slow].min() > gaps[g]:  # graded, not alike
        return None
    apart = own[:, slow].min(axis=1) > own[:, fast].max(axis=1)
    if apart.mean() < t.straggler_recurrence:
        return None
    base = np.median(own[:, fast], axis=1)
    excess = float(np.median(np.median(own[:, slow], axis=1) - base))
    best, best_ms = None, 0.5 * excess
    for name in CAUSES:  # the class whose excess the slow ranks share (the least of theirs)
        p = parts[name]
        ex = float(np.min(np.median(p[:, slow] - np.median(p[:, fast], axis=1)[:, None], axis=0)))
        if ex > best_ms:
            best, best_ms = name, ex
    return sorted(int(i) for i in slow), excess, best, best_ms if best is not None else math.nan


def why_named(
    worst: Any,
    runner: Any,
    n: int,
    need: int,
    floor: float,
    noise: float,
    share: float,
    t: Any,
    measured: bool = True,
) -> tuple[int | None, str]:
    """The rank named (or None) and the reason, one line: ``worst`` and ``runner`` are
    :class:`~tui.model.rankstats.RankCompute` rows, ``t`` the StragglerLimits."""
    rec = worst.slowest / n
    ex = worst.excess_ms
    # a wait not measured may hide a slow rank (the caveat says where): none *found*
    none = "no straggler" if measured else "no straggler found"
    if n < need:
        return None, f"no straggler yet: {n} steps compared by every rank (need {need})"
    if ex < floor:
        return None, (
            f"{none}: ranks within {_ms(max(0.0, ex))} of each other in their own time "
            f"({pct(max(0.0, share))} of the step, below the {pct(t.straggler_excess)} floor)"
        )
    if ex < t.straggler_noise * noise:
        return None, (
            f"{none}: rank {worst.rank}'s +{_ms(ex)} is within the run's "
            f"step-to-step noise (±{_ms(noise)})"
        )
    if runner is not None and worst.own_ms - runner.own_ms < floor:
        # two ranks alike: both slow, or (wait unmeasured) one of them waits somewhere the
        # estimate does not look, e.g. DDP's buffer broadcast in forward
        why = (
            f"no straggler: no single rank stands out: rank {worst.rank} +{_ms(ex)} and rank "
            f"{runner.rank} +{_ms(runner.excess_ms)} in their own time over the others"
        )
        return None, why + ("" if measured else OUTSIDE_BACKWARD)
    if rec < t.straggler_recurrence:
        return None, (
            f"no straggler: rank {worst.rank} is behind on average (+{_ms(ex)}) but the "
            f"slowest in only {worst.slowest} of {n} steps"
        )
    return worst.rank, (
        f"rank {worst.rank}'s own time is +{_ms(ex)} ({pct(share)} of the step) over the "
        f"other ranks, slowest in {worst.slowest} of {n} steps (noise ±{_ms(noise)})"
    )


def group_reason(
    group: tuple[list[int], float, str | None, float],
    ranks: Sequence[int],
    n: int,
    measured: bool = True,
) -> str:
    """The reason of a verdict whose slow ranks are several, alike (:func:`slow_group`);
    ``measured``: the others' wait was measured, not estimated from ``backward``."""
    idx, ex, cause, cms = group
    who = ", ".join(str(ranks[i]) for i in idx)
    why = f", mostly {CAUSE_WORDS[cause]} +{_ms(cms)}" if cause is not None else ""
    how = "" if measured else "; their wait is estimated from `backward`, not measured"
    return (
        f"no single straggler: ranks {who} are slow alike, their own time +{_ms(ex)} per step "
        f"over the other ranks'{why} (the others wait for them{how})"
    )


def input_behind(
    parts: dict[str, np.ndarray], floor: float, t: Any
) -> tuple[int, float, int] | None:
    """The rank the others wait for *outside* the measured all-reduce, seen by its input:
    its input and copy time (its own for sure) exceed the other ranks' by more than
    ``floor`` and twice their step-to-step noise, it is the latest with its input in most
    steps (``t.straggler_recurrence``), and the other ranks show at least half as much
    more compute (time of no class) than it does, as when they wait for it in another
    collective before forward (the Hugging Face Trainer's count of label tokens across
    ranks). (rank index, its input excess, steps it was the latest), or None."""
    inp = parts["input"] + parts["h2d"]
    n, k = inp.shape
    if k < 2 or n == 0:
        return None
    ex = np.median(excess_over_others(inp)[0], axis=0)  # one sort, not one median a rank
    i = int(ex.argmax())
    others = np.delete(inp, i, axis=1)
    noise = float(np.median(1.4826 * np.median(np.abs(others - np.median(others, 0)), 0)))
    latest = int((inp.argmax(axis=1) == i).sum())
    if not (ex[i] > floor and ex[i] >= 2.0 * noise and latest >= t.straggler_recurrence * n):
        return None
    comp = parts["compute"]
    more = float(np.median(np.median(np.delete(comp, i, axis=1), axis=1) - comp[:, i]))
    return (i, float(ex[i]), latest) if more >= 0.5 * ex[i] else None


def untimed_behind(
    own: np.ndarray, untimed: np.ndarray, floor: float, t: Any
) -> tuple[int, float, int] | None:
    """The rank the others wait for in a collective *outside every timed region* (a loop's
    own ``dist.all_reduce`` of its loss between forward and backward), which neither the
    all-reduce's measure nor its estimate from ``backward`` sees: the ranks' own times are
    alike, but one rank's time in timed regions exceeds the other ranks' by more than
    ``floor`` and twice their step-to-step noise, it is the slowest there in most steps
    (``t.straggler_recurrence``), and the others spend at least half as much more time
    outside every region (``untimed``, per step and rank) than it does.
    (rank index, its excess in timed regions, steps it was the slowest there), or None."""
    n, k = own.shape
    if k < 2 or n == 0:
        return None
    timed = own - untimed
    mean = timed.mean(axis=0)  # a cheap first look: no rank far ahead, no sort
    if float(mean.max() - np.median(mean)) <= 0.5 * floor:
        return None
    excess, order = excess_over_others(timed)
    ex = np.median(excess, axis=0)
    i = int(ex.argmax())
    others = np.delete(timed, i, axis=1)
    noise = float(np.median(1.4826 * np.median(np.abs(others - np.median(others, 0)), 0)))
    slowest = int((order[:, -1] == i).sum())
    if not (ex[i] > floor and ex[i] >= 2.0 * noise and slowest >= t.straggler_recurrence * n):
        return None
    # every other rank spends more untimed time (one alone may be slow in untimed work)
    more = float(np.median(np.delete(untimed, i, axis=1).min(axis=1) - untimed[:, i]))
    return (i, float(ex[i]), slowest) if more >= 0.5 * ex[i] else None


def untimed_reason(i: int, ex: float, slowest: int, n: int, ranks: Sequence[int]) -> str:
    """The reason of a verdict from :func:`untimed_behind`."""
    return (
        f"rank {ranks[i]}'s time in timed regions is +{_ms(ex)} per step over the other ranks' "
        f"(the slowest there in {slowest} of {n} steps), and the others spend as much more "
        "time outside every timed region: they wait for it there, in a collective not "
        "measured (e.g. an all-reduce of the loss between forward and backward)"
    )


def untimed_wait(
    own: np.ndarray,
    x: np.ndarray,
    ranks: list[int],
    floor: float,
    t: Any,
    keep: tuple[float, bool, float, str],
) -> tuple[int | None, float, bool, float, str, np.ndarray | None]:
    """The rank that the others wait for outside every timed region (:func:`untimed_behind`)
    for ``judge_stragglers``: (named, recurrence, waits outside, excess, reason, the untimed
    time per step and rank to take out of compute); with None, ``keep``'s recurrence, flag,
    excess and reason. ``x``: its (steps, ranks, RECENT_COLUMNS) table."""
    untimed = x[:, :, 7] if x.shape[2] > 7 else None
    if untimed is None or np.isnan(untimed).any():
        return None, *keep, None
    got = untimed_behind(own, untimed, floor, t)
    if got is None:
        return None, *keep, None
    i, ex, slowest = got
    n = len(own)
    if len(ranks) == 2:  # or the other is slow in untimed work and it waits in a timed region
        why = (
            f"no straggler found: rank {ranks[i]}'s time in timed regions is +{_ms(ex)} per "
            f"step over rank {ranks[1 - i]}'s, which spends as much more outside every timed "
            "region: one of them waits for the other in a collective that is not measured "
            "(e.g. an all-reduce of the loss), and with two ranks which one waits cannot be "
            "told from the figures"
        )
        return None, *keep[:3], why, None
    return ranks[i], slowest / n, True, ex, untimed_reason(i, ex, slowest, n, ranks), untimed


def behind_reason(i: int, ex: float, latest: int, n: int, ranks: Sequence[int]) -> str:
    """The reason of a verdict from :func:`input_behind`."""
    return (
        f"rank {ranks[i]}'s input is +{_ms(ex)} per step over the other ranks' (the latest in "
        f"{latest} of {n} steps), and the others spend as much more time outside their own "
        "classes: they wait for it outside the all-reduce, in a collective not measured "
        "(e.g. the Hugging Face Trainer's count of label tokens across ranks)"
    )


def excess_over_others(comp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per step and rank, compute minus the median of the other ranks' compute; and per step
    the ranks from fastest to slowest (argsort)."""
    k = comp.shape[1]
    order = np.argsort(comp, axis=1, kind="stable")  # per step, ranks from fastest to slowest
    srt = np.take_along_axis(comp, order, axis=1)
    # the median of the other ranks for the rank at sorted position p: drop p, take the middle
    pos = np.arange(k)
    m = k - 1

    def at(j: int) -> np.ndarray:  # element j of each row with position p removed
        return np.where(j < pos, srt[:, j][:, None], srt[:, min(j + 1, k - 1)][:, None])

    med_others = at(m // 2) if m % 2 else (at(m // 2 - 1) + at(m // 2)) / 2
    ex_sorted = srt - med_others
    excess = np.empty_like(ex_sorted)
    np.put_along_axis(excess, order, ex_sorted, axis=1)
    return excess, order
