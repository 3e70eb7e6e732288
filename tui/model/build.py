"""The steps that turn the ranks' statistics into the figures of a
:class:`~tui.model.snapshot.RunSnapshot` (:meth:`tui.model.aggregate.RunAgg.snapshot` calls
them in turn): the region rows, the ranks compared, throughput, memory, scalars.

Each step reads :class:`~tui.model.ranks.RankAgg` objects (ranks in order) and returns plain
values; none changes them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter, mul

import numpy as np

from stagewatch.records import RunEnd, RunStart
from tui.model import crossrank, crossread
from tui.model.order import CUT, tree_rows
from tui.model.ranks import RankAgg
from tui.model.rankstats import WAIT_REGIONS, StragglerVerdict, judge_stragglers
from tui.model.readout import NF, read_all_fields, stats_of
from tui.model.series import RECENT, SeriesSet, series_set
from tui.model.snapshot import (
    EMPTY,
    NAN,
    UNACCOUNTED,
    LazyRanks,
    RankInfo,
    RankStats,
    RegionRow,
    Stats,
)

Recent = tuple[tuple[float, ...], ...]  # RankInfo.recent: (step, *RECENT_COLUMNS)

# a light snapshot's unaccounted row: no figures (the header does not show it)
BLANK_UNACCOUNTED = RegionRow(
    name=UNACCOUNTED, leaf=UNACCOUNTED, depth=0, parent=None, whole=EMPTY, window=EMPTY
)


# --------------------------------------------------------------------------- regions


def _mean(vals: list[float]) -> float:
    vals = [v for v in vals if v == v]  # drop NaN
    return sum(vals) / len(vals) if vals else NAN


_LAST, _AVG, _MIN, _MAX, _P50, _P95, _STEPS, _CALLS, _SHARE, _LAST_SHARE = (
    attrgetter(f) for f in Stats.__slots__
)


def merge(stats: Sequence[Stats]) -> Stats:
    """Several ranks' statistics of one region as one (weighted by steps seen)."""
    if len(stats) == 1:
        return stats[0]
    live = [s for s in stats if s.steps > 0]
    if not live:
        last = _mean(list(map(_LAST, stats)))
        return Stats(last=last) if last == last else EMPTY
    steps = list(map(_STEPS, live))
    n = sum(steps)
    return Stats(
        last=_mean(list(map(_LAST, stats))),
        avg=sum(map(mul, map(_AVG, live), steps)) / n,
        min=min(map(_MIN, live)),
        max=max(map(_MAX, live)),
        p50=_mean(list(map(_P50, live))),  # mean of the ranks' medians: ranks run the same code
        p95=max(map(_P95, live)),
        steps=n,
        calls=sum(map(_CALLS, live)),
        share=_mean(list(map(_SHARE, stats))),
        last_share=_mean(list(map(_LAST_SHARE, stats))),
    )


def _cut_row(name: str) -> RegionRow:
    i = name.rfind("/")
    return RegionRow(
        name=name,
        leaf=CUT,
        depth=name.count("/"),
        parent=name[:i] if i > 0 else None,
        whole=EMPTY,
        window=EMPTY,
        cut=True,
    )


def _seqsum(x: np.ndarray) -> np.ndarray:
    """Column sums of a (ranks, columns) array added in rank order, as Python's ``sum`` of
    floats adds (starting from 0): the same bits as :func:`merge`."""
    return np.add.accumulate(x, axis=0)[-1] + 0.0


def _mean_cols(x: np.ndarray, keep: np.ndarray | bool) -> np.ndarray:
    """:func:`_mean` of each column's kept values."""
    ok = (x == x) & keep
    cnt = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, _seqsum(np.where(ok, x, 0.0)) / cnt, NAN)


def merge_columns(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`merge` of every column of ``f`` (ranks, NF fields, columns: each rank's Stats
    of one span as :func:`~tui.model.readout.stats_of` reads them) at once, ranks >= 2: the
    merged fields (NF, columns) and what each column is (0: EMPTY, 1: a ``last`` only, 2:
    all fields), the same values to the bit."""
    last, avg, lo, hi, p50, p95, steps, calls, share, lshare = (f[:, i] for i in range(NF))
    live = steps > 0
    n = np.where(live, steps, 0.0).sum(axis=0)  # whole numbers: exact in any order
    out = np.empty((NF, f.shape[2]))
    out[0] = _mean_cols(last, True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[1] = _seqsum(np.where(live, avg * steps, 0.0)) / n
    # live values are never NaN: min and max in any order are Python's
    out[2] = np.where(live, lo, np.inf).min(axis=0)
    out[3] = np.where(live, hi, -np.inf).max(axis=0)
    out[4] = _mean_cols(p50, live)
    out[5] = np.where(live, p95, -np.inf).max(axis=0)
    out[6] = n
    out[7] = np.where(live, calls, 0.0).sum(axis=0)
    out[8] = _mean_cols(share, True)
    out[9] = _mean_cols(lshare, True)
    kind = np.where(live.any(axis=0), 2, np.where(out[0] == out[0], 1, 0))
    return out, kind


def _merged_stats(v: list[float], kind: int) -> Stats:
    if kind == 2:
        return stats_of(v)
    return Stats(last=v[0]) if kind == 1 else EMPTY


def _rank_column(ranks: tuple[int, ...], table: np.ndarray, j: int) -> tuple[RankStats, ...]:
    """Each rank's (rank, whole, window) of region column ``j`` of ``table``."""
    return tuple(
        (r, stats_of(v[:NF]), stats_of(v[NF:]))
        for r, v in zip(ranks, table[:, :, j].tolist(), strict=True)
    )


def region_table(aggs: Sequence[RankAgg], names: Sequence[str]) -> np.ndarray:
    """Every rank's Stats fields of ``names`` (ranks, 2 * NF, names): whole run then window,
    an absent region as (EMPTY, EMPTY)."""
    fields = read_all_fields(aggs)
    out = np.empty((len(aggs), 2 * NF, len(names)))
    layouts: dict[tuple[str, ...], list[int]] = {}
    for i, a in enumerate(aggs):
        layouts.setdefault(tuple(a.names), []).append(i)
    for key, idx in layouts.items():
        cmap = aggs[idx[0]].cols
        k = len(key)
        gather = np.fromiter((cmap.get(n, k) for n in names), np.int64, count=len(names))
        out[idx] = np.stack([fields[i] for i in idx])[:, :, gather]
    return out


def region_rows(
    aggs: Sequence[RankAgg], with_ranks: bool, rows: crossrank.RankRows | None = None
) -> tuple[tuple[RegionRow, ...], RegionRow]:
    """The tree's rows (each region's ranks merged) and the unaccounted row: the bulk of
    a snapshot's cost (regions × ranks). Every rank's figures are read as arrays and merged
    column-wise; a row's per-rank Stats are made when something reads them (the ranks panel
    of the selected region, the advice), not for every region. ``rows``: the ranks' arrays
    side by side (:mod:`tui.model.crossrank`), where the read-outs are made in one pass."""
    if rows is not None and len(aggs) > 1:
        crossrank.flush(rows, aggs)
        crossrank.read_fields(rows, aggs)
        crossrank.read_unaccounted(rows, aggs)
    names: dict[str, None] = {}
    for a in aggs:
        for n in a.names:
            names.setdefault(n, None)
    order = tree_rows(names)
    wanted = [n for n, cut in order if not cut]
    table = region_table(aggs, wanted)
    ranks = tuple(a.rank for a in aggs)
    if not wanted:
        merged = []
    elif len(aggs) == 1:
        vals = table[0].T.tolist()
        merged = [(stats_of(v[:NF]), stats_of(v[NF:])) for v in vals]
    else:
        w, wk = merge_columns(table[:, :NF])
        x, xk = merge_columns(table[:, NF:])
        merged = [
            (_merged_stats(a, ka), _merged_stats(b, kb))
            for a, ka, b, kb in zip(
                w.T.tolist(), wk.tolist(), x.T.tolist(), xk.tolist(), strict=True
            )
        ]
    regions = []
    j = 0
    for name, cut in order:
        if cut:
            regions.append(_cut_row(name))
            continue
        whole, window = merged[j]
        i = name.rfind("/")
        regions.append(
            RegionRow(
                name=name,
                leaf=name[i + 1 :] if i >= 0 else name,
                depth=name.count("/"),
                parent=name[:i] if i > 0 else None,
                whole=whole,
                window=window,
                ranks=LazyRanks(partial(_rank_column, ranks, table, j)) if with_ranks else (),
            )
        )
        j += 1
    un = [(a.rank, *a.unaccounted()) for a in aggs]
    unaccounted = RegionRow(
        name=UNACCOUNTED,
        leaf=UNACCOUNTED,
        depth=0,
        parent=None,
        whole=merge([u[1] for u in un]),
        window=merge([u[2] for u in un]),
        ranks=tuple(un) if with_ranks else (),
    )
    return tuple(regions), unaccounted


def region_series(
    aggs: Sequence[RankAgg],
    regions: Sequence[RegionRow],
    rows: crossrank.RankRows | None = None,
) -> SeriesSet:
    """The chart's data and the heat strips': every rank's downsampled series of the tree's
    regions, and its last steps (``rows``: the ranks' means made side by side)."""
    rings = []
    for a in aggs:
        o = a._order()[-RECENT:]
        rings.append((a.ring_step[o], a.ring_wall[o], a.ring[o]))
    return series_set(
        [a.rank for a in aggs],
        [a.series for a in aggs],
        [a.cols for a in aggs],
        [r.name for r in regions if not r.cut],
        rings,
        WAIT_REGIONS,
        crossread.planes_of(rows, aggs) if rows is not None and len(aggs) > 1 else None,
    )


# --------------------------------------------------------------------------- ranks


@dataclass(frozen=True, slots=True)
class RankComparison:
    """The ranks compared step by step (see :func:`compare_ranks`)."""

    slowest: dict[int, int] = field(default_factory=dict)  # rank -> steps slowest by wall
    spread: float = NAN  # mean (max - min) step wall ms across ranks
    straggler: int | None = None
    excess: float = NAN  # ms the straggler is behind
    verdict: StragglerVerdict | None = None


def compare_ranks(
    walls: tuple[np.ndarray, np.ndarray, np.ndarray],
    recent: Mapping[int, Recent],
    window: int,
    tables: Mapping[int, np.ndarray] | None = None,
) -> RankComparison:
    """Who is slowest: ``walls`` is :func:`~tui.model.rankstats.compare_walls` (per step:
    slowest rank, spread, excess over the median), ``recent`` each rank's recent work (one
    entry per rank; ``tables``: some of them as arrays already).

    The straggler is the verdict's (by compute: under DDP every rank's step is equally long)
    whenever one is made, that is whenever the ranks' windows share a step; else the rank
    slowest by wall time in most compared steps.
    """
    slow, spreads, ex = walls
    straggler, excess, spread = None, NAN, NAN
    slowest: dict[int, int] = {}
    if len(slow):
        spread = float(np.mean(spreads))
        for r in np.unique(slow):
            slowest[int(r)] = int((slow == r).sum())
        top = max(slowest, key=slowest.__getitem__)
        # a straggler is slowest in most compared steps, not just by chance
        if len(recent) > 1 and slowest[top] >= 0.5 * len(slow):
            straggler = top
            excess = float(np.mean(ex[slow == top]))
    verdict = judge_stragglers(recent, window=window, tables=tables)
    if verdict is not None:
        straggler = verdict.straggler
        excess = verdict.excess_ms if verdict.straggler is not None else NAN
    return RankComparison(slowest, spread, straggler, excess, verdict)


def recent_work(aggs: Sequence[RankAgg]) -> dict[int, Recent]:
    """Each rank's window of (step, *RECENT_COLUMNS) ms; none with a single rank."""
    return {a.rank: a.recent_work() if len(aggs) > 1 else () for a in aggs}


def rank_infos(
    aggs: Sequence[RankAgg],
    walls: Sequence[tuple[Stats, Stats]],
    sps: Sequence[tuple[float, float]],
    starts: Mapping[int, RunStart],
    slowest: Mapping[int, int],
    recent: Mapping[int, Recent],
) -> tuple[RankInfo, ...]:
    """One :class:`~tui.model.snapshot.RankInfo` per rank."""
    out = []
    for a, (ww, wwin), (_, s_win) in zip(aggs, walls, sps, strict=True):
        rs = starts.get(a.rank)
        out.append(
            RankInfo(
                rank=a.rank,
                step=a.last_step,
                wall=ww,
                wall_window=wwin,
                samples_per_s=s_win,
                host=rs.host if rs else "",
                device=rs.device if rs else "",
                slowest_steps=slowest.get(a.rank, 0),
                mem_peak=a.mem_peak,
                recent=recent[a.rank],
            )
        )
    return tuple(out)


def step_times(aggs: Sequence[RankAgg], window: int) -> tuple[float, ...]:
    """The sparkline: the slowest rank's wall ms per step, over the window, oldest first."""
    if not aggs:
        return ()
    parts = [a.recent_walls() for a in aggs]
    steps = np.concatenate([p[0] for p in parts])
    if not len(steps):
        return ()
    walls = np.concatenate([p[1] for p in parts])
    uniq, inv = np.unique(steps, return_inverse=True)
    top = np.full(len(uniq), -np.inf)
    np.fmax.at(top, inv, walls)  # a NaN wall is no wall
    top = top[top > -np.inf]
    return tuple(top[-window:].tolist())


# --------------------------------------------------------------------------- run figures


def throughput(
    sps: Sequence[tuple[float, float]], walls: Sequence[tuple[Stats, Stats]]
) -> tuple[float, float, float]:
    """Samples per second (whole run, window; summed over the ranks' ``sps``) and steps per
    second (of the slowest rank over the window)."""
    sps_whole = sum(s[0] for s in sps if not math.isnan(s[0])) if sps else NAN
    sps_win = sum(s[1] for s in sps if not math.isnan(s[1])) if sps else NAN
    slowest_avg = max((w[1].avg for w in walls if w[1].steps), default=NAN)
    steps_per_s = 1000.0 / slowest_avg if slowest_avg and slowest_avg > 0 else NAN
    return sps_whole, sps_win, steps_per_s


def memory_figures(aggs: Sequence[RankAgg]) -> tuple[int | None, int | None]:
    """(peak, last) bytes over ranks: last is ``allocated`` (else ``rss``) of the last step."""
    peaks = [a.mem_peak for a in aggs if a.mem_peak is not None]
    mems = [a.memory for a in aggs if a.memory]
    last = None
    if mems:
        vals = [m.get("allocated") or m.get("rss") for m in mems]
        ints = [int(v) for v in vals if v is not None]
        last = max(ints) if ints else None
    return (max(peaks) if peaks else None), last


def last_scalars(aggs: Sequence[RankAgg]) -> tuple[tuple[str, float], ...]:
    """The last step's scalars, the lowest rank's first."""
    out: dict[str, float] = {}
    for a in aggs:
        if a.scalars:
            for k, v in a.scalars.items():
                if v is not None and k not in out:
                    out[k] = float(v)
    return tuple(out.items())


def loss_window(aggs: Sequence[RankAgg]) -> float:
    """Mean loss over the ranks' windows (NaN when none is known)."""
    losses = np.concatenate([a.ring_loss[: a.filled] for a in aggs]) if aggs else np.array([])
    return float(np.nanmean(losses)) if len(losses) and not np.isnan(losses).all() else NAN


def run_error(ends: Mapping[int, RunEnd]) -> str | None:
    """The first error a rank's ``run_end`` reports, in one line."""
    for e in ends.values():
        if e.error_type or e.error_message:
            return f"{e.error_type or 'error'}: {e.error_message or ''}".strip()
    return None
