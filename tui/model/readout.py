"""What one rank's folded arrays say: :class:`~tui.model.snapshot.Stats` of each region, of
the step wall time and of the unaccounted time, over the whole run and the recent window.

:class:`RankReadout` is the read-only half of :class:`~tui.model.ranks.RankAgg` (which folds
steps into the arrays it declares); every figure is computed column-wise with numpy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from tui.model.histogram import (
    BUCKET_VALUES,
    NBUCKETS,
    bucket_value,
    col_percentiles,
    hist_quantile_pair,
)
from tui.model.phases import BUFFERS_REGION, find_phase, top_columns
from tui.model.rankstats import (
    EXPOSED_REGIONS,
    H2D_REGIONS,
    INPUT_REGIONS,
    LAUNCH_REGION,
    SYNC_REGION,
)
from tui.model.snapshot import EMPTY, NAN, Stats

StatsPair = tuple[Stats, Stats]  # (whole run, window)
F = TypeVar("F", bound=Callable[..., Any])


def memo(fn: F) -> F:
    """A read-out kept until the rank folds its next steps (``RankAgg._fold`` clears
    ``_memo``): a snapshot re-reads only the ranks that changed since the last one."""
    name = fn.__name__

    @functools.wraps(fn)
    def read(self: Any) -> Any:
        m = self.__dict__.get("_memo")
        if m is None:
            m = self._memo = {}
        v = m.get(name, m)
        if v is m:
            v = m[name] = fn(self)
        return v

    return read  # type: ignore[return-value]


def _percentiles(vals: np.ndarray, *qs: float) -> list[float]:
    """``np.percentile(vals, 100 * q)`` for each q (its default linear method, to the last
    bit), on one sort: numpy's general path costs ~60 µs a call, which at 64 ranks and 8
    snapshots a second was the largest part of a light snapshot."""
    return _lerp_percentiles(np.sort(vals), *qs)


def _lerp_percentiles(s: np.ndarray, *qs: float) -> list[float]:
    """:func:`_percentiles` of values sorted already."""
    n = len(s)
    out = []
    for q in qs:
        x = q * (n - 1)
        i = min(int(x), n - 1)
        t = x - i
        a = float(s[i])
        b = float(s[min(i + 1, n - 1)])
        d = b - a
        out.append(b - d * (1.0 - t) if t >= 0.5 else a + d * t)  # numpy's _lerp
    return out


def _nan_to_num(x: np.ndarray) -> np.ndarray:
    """``np.nan_to_num(x)`` of a float array, in two ufunc calls when it holds no infinity
    (numpy's own costs ~15 µs a call: a live snapshot makes hundreds)."""
    y = np.where(x != x, 0.0, x)
    return y if np.isfinite(y).all() else np.nan_to_num(x)


def _share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else NAN


def _region_arrays(
    qidx: np.ndarray,
    n: np.ndarray,
    sums: np.ndarray,
    mins: np.ndarray,
    maxs: np.ndarray,
    calls: np.ndarray,
    last: np.ndarray,
    ring: np.ndarray,
    ring_calls: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Per region column: the whole run's (steps, sum, min, max, p50, p95, calls, last) and
    the window's (steps, sum, p50, p95, min, max, calls). Every figure is computed column by
    column (``qidx``: the histogram buckets of p50 and p95, :meth:`RankReadout._quantile_idx`;
    sums along the ring's steps in order), so several ranks' columns side by side give each
    rank's own figures, to the bit."""
    p50, p95 = (np.clip(BUCKET_VALUES[q], mins, maxs) for q in qidx)
    f, kk = ring.shape
    valid = ~np.isnan(ring)
    wn = valid.sum(axis=0)
    vals = np.where(valid, ring, 0.0)
    if kk == 1:  # one column is summed pairwise, several in step order: always in order
        vals = np.concatenate([vals, vals], axis=1)
    wsum = vals.sum(axis=0)[:kk]
    srt = np.sort(ring, axis=0)  # NaN sorts last
    wp50, wp95 = col_percentiles(srt, wn, (0.50, 0.95))
    wmin = srt[0]
    wmax = srt[np.maximum(wn - 1, 0), np.arange(kk)] if f else np.full(kk, NAN)
    wcalls = ring_calls.sum(axis=0)
    return (n, sums, mins, maxs, p50, p95, calls, last, wn, wsum, wp50, wp95, wmin, wmax, wcalls)


def _region_columns(*inputs: np.ndarray) -> list[list[Any]]:
    """:func:`_region_arrays` as lists."""
    return [c.tolist() for c in _region_arrays(*inputs)]


_QS = np.array([[0.50], [0.95]])  # the whole run's quantiles: p50, p95
_QUANTILE_STEPS = 24  # buckets a quantile may move between reads before a full recount

NF = 10  # the fields of a Stats, in order (a field matrix's rows: whole run, then window)


def _fields(cols: tuple[np.ndarray, ...], wall_last: Any, wall_sum: Any, wwall: Any) -> np.ndarray:
    """The Stats fields of each region column, as a (2 * NF, columns) matrix
    (rows 0-9 the whole run's Stats, 10-19 the window's; counts as floats): the same values,
    element by element, without a Python object per figure. ``wall_last``, ``wall_sum`` and
    ``wwall`` (the window's wall ms) are the rank's, or per column (ranks side by side)."""
    n, sums, mins, maxs, p50, p95, calls, last, wn, wsum, wp50, wp95, wmin, wmax, wcalls = cols
    out = np.full((2 * NF, len(n)), NAN)
    live = n > 0
    win = live & (wn > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        last_share = np.where(wall_last > 0, last / wall_last, NAN)
        whole = (
            last,
            sums / n,
            mins,
            maxs,
            p50,
            p95,
            n,
            calls,
            np.where(wall_sum > 0, sums / wall_sum, NAN),
            last_share,
        )
        window = (
            last,
            wsum / wn,
            wmin,
            wmax,
            wp50,
            wp95,
            wn,
            np.trunc(wcalls),
            np.where(wwall > 0, wsum / wwall, NAN),
            last_share,
        )
    for i, v in enumerate(whole):
        out[i] = np.where(live, v, NAN)
        out[NF + i] = np.where(win, window[i], NAN)
    # not seen: EMPTY (no steps, no calls); seen but not in the window: its last figures
    for i in (6, 7):
        out[i] = np.where(live, out[i], 0.0)
        out[NF + i] = np.where(win, out[NF + i], 0.0)
    idle = live & ~win
    out[NF] = np.where(idle, last, out[NF])
    out[NF + 8] = np.where(idle, 0.0, out[NF + 8])
    out[NF + 9] = np.where(idle, last_share, out[NF + 9])
    return out


def _nan(x: float) -> float:
    return x if x == x else NAN


def stats_of(v: Sequence[float]) -> Stats:
    """The Stats of one column of a field matrix (``v``: its NF values): :data:`EMPTY`
    itself where it is empty, NaN as :data:`NAN` (Stats compare equal as the eager ones)."""
    if v[6] == 0 and v[8] != v[8]:
        return EMPTY
    return Stats(
        _nan(v[0]),
        _nan(v[1]),
        _nan(v[2]),
        _nan(v[3]),
        _nan(v[4]),
        _nan(v[5]),
        int(v[6]),
        int(v[7]),
        _nan(v[8]),
        _nan(v[9]),
    )


def read_all_fields(ranks: Sequence[RankReadout]) -> list[np.ndarray]:
    """``[a.fields() for a in ranks]``, the ranks whose read-outs changed read in one pass
    of numpy calls per group of equally filled windows, not one pass per rank (at 64 ranks
    a full snapshot's largest part): the same figures."""
    groups: dict[int, list[RankReadout]] = {}
    for a in ranks:
        m = a.__dict__.get("_memo")
        if len(a.names) and (m is None or "fields" not in m):
            groups.setdefault(a.filled, []).append(a)
    for g in groups.values():
        if len(g) < 2:
            continue
        inputs = [a._region_inputs(len(a.names)) for a in g]
        joined = [
            np.concatenate([x[i] for x in inputs], axis=1 if i >= 7 or i == 0 else 0)
            for i in range(9)
        ]
        ks = [len(a.names) for a in g]
        per = [(a.wall_last, a.wall_sum, a._wwall()) for a in g]
        scal = [np.repeat(np.array(x, dtype=np.float64), ks) for x in zip(*per, strict=True)]
        fm = _fields(_region_arrays(*joined), *scal)
        off = 0
        for a, k in zip(g, ks, strict=True):
            a.__dict__.setdefault("_memo", {})["fields"] = _with_absent(fm[:, off : off + k])
            off += k
    return [a.fields() for a in ranks]


_ABSENT = np.array([NAN] * 6 + [0.0, 0.0, NAN, NAN] + [NAN] * 6 + [0.0, 0.0, NAN, NAN])


def _with_absent(fm: np.ndarray) -> np.ndarray:
    """A field matrix with one more column: a region the rank never ran (EMPTY, EMPTY)."""
    return np.concatenate([fm, _ABSENT[:, None]], axis=1)


def read_all_stats(ranks: Sequence[RankReadout]) -> list[list[StatsPair]]:
    """``[a.all_stats() for a in ranks]`` (:func:`read_all_fields`' grouped read)."""
    read_all_fields(ranks)
    return [a.all_stats() for a in ranks]


class RankReadout:
    """Read-outs of one rank's statistics (the arrays are :class:`~tui.model.ranks.RankAgg`'s).

    Per region column: ``n`` steps seen, ``sum``, ``min``, ``max``, ``calls``, ``hist`` (log
    buckets), ``last`` / ``last_calls`` / ``last_seen`` (the step it was last seen in); per
    step: the ring of the last ``window`` steps (``ring``, ``ring_calls``, ``ring_wall``,
    ``ring_samples``, ``ring_step``, ``ring_loss``; row ``i`` of the file in slot ``i %
    window``) and the step wall time's running figures.
    """

    window: int
    cols: dict[str, int]
    names: list[str]
    last: np.ndarray
    last_calls: np.ndarray
    last_seen: np.ndarray
    sum: np.ndarray
    min: np.ndarray
    max: np.ndarray
    n: np.ndarray
    calls: np.ndarray
    hist: np.ndarray
    ring: np.ndarray
    ring_calls: np.ndarray
    ring_wall: np.ndarray
    ring_samples: np.ndarray
    ring_step: np.ndarray
    pos: int
    filled: int
    steps: int
    last_step: int
    wall_sum: float
    wall_min: float
    wall_max: float
    wall_last: float
    wall_hist: np.ndarray
    samples_total: int
    mem_trend: Any

    def _order(self) -> np.ndarray:
        """Ring rows oldest first."""
        if self.filled < self.window:
            return np.arange(self.filled)
        return (self.pos + np.arange(self.window)) % self.window

    def region_stats(self, col: int) -> StatsPair:
        """(whole run, window) statistics of one region column."""
        return self.all_stats()[col]

    @memo
    def fields(self) -> np.ndarray:
        """The Stats fields of every region column (:func:`_fields`), plus a last column for
        a region this rank never ran: a (2 * NF, columns + 1) matrix."""
        k = len(self.names)
        if k == 0:
            return _ABSENT[:, None].copy()
        cols = _region_arrays(*self._region_inputs(k))
        return _with_absent(_fields(cols, self.wall_last, self.wall_sum, self._wwall()))

    def _quantile_idx(self, k: int) -> np.ndarray:
        """The histogram bucket of p50 and of p95 of the first ``k`` region columns (2, k):
        what :func:`~tui.model.histogram.hist_quantiles` finds by a cumulative sum of every
        bucket, found from the last read's buckets (``_qk``) and the counts at or below them
        (``_qc``, kept as values are folded: ``RankAgg``) by a few steps up or down. A
        column with no value keeps a meaningless index (its figures are not shown)."""
        hist = self.hist  # folds the pending steps (which keep _qc)
        n = self.n[:k]
        t = np.maximum(1.0, np.ceil(_QS * n))  # (2, k): the rank each quantile needs
        qk, qc = self.__dict__.get("_qk"), self.__dict__.get("_qc")
        if qk is None or qc is None:
            return self._quantile_reset(k, t)
        kk, cc = qk[:, :k], qc[:, :k]
        live = n > 0
        rows = np.arange(k)
        h = hist[:k]
        for _ in range(_QUANTILE_STEPS):
            hk = h[rows, kk]
            up = (cc < t) & live
            down = (cc - hk >= t) & (kk > 0)
            if not (up.any() or down.any()):
                return kk.copy()
            cc -= np.where(down, hk, 0)
            kk -= down
            nxt = np.minimum(kk + up, NBUCKETS - 1)
            cc += np.where(up, h[rows, nxt], 0)
            kk[...] = np.where(up, nxt, kk)
        return self._quantile_reset(k, t)  # moved far (a big batch): from the start

    def _quantile_reset(self, k: int, t: np.ndarray) -> np.ndarray:
        """:meth:`_quantile_idx` from a cumulative sum of every bucket (the first read)."""
        cap = self.cap
        c = np.cumsum(self.hist[:k], axis=1)
        qk = np.zeros((2, cap), dtype=np.int64)
        qc = np.zeros((2, cap), dtype=np.int64)
        for j in range(2):
            qk[j, :k] = np.minimum((c < t[j][:, None]).sum(axis=1), NBUCKETS - 1)
            qc[j, :k] = c[np.arange(k), qk[j, :k]] if k else 0
        self.__dict__["_qk"], self.__dict__["_qc"] = qk, qc
        return qk[:, :k].copy()

    def _wwall(self) -> float:
        """The window's wall ms."""
        return float(self.ring_wall[: self.filled].sum())

    @memo
    def all_stats(self) -> list[StatsPair]:
        """(whole run, window) statistics of every region column, computed column-wise."""
        if not self.names:
            return []
        vals = self.fields()[:, :-1].T.tolist()
        return [(stats_of(v[:NF]), stats_of(v[NF:])) for v in vals]

    def _region_inputs(self, k: int) -> tuple[np.ndarray, ...]:
        """What :func:`_region_arrays` reads of the first ``k`` region columns."""
        last = np.where(self.last_seen[:k] == self.last_step, self.last[:k], 0.0)
        return (
            self._quantile_idx(k),
            self.n[:k],
            self.sum[:k],
            self.min[:k],
            self.max[:k],
            self.calls[:k],
            last,
            self.ring[: self.filled, :k],
            self.ring_calls[: self.filled, :k],
        )

    def wall_whole(self, p50: float, p95: float) -> Stats:
        """The whole run's step wall time statistics, given its quantiles (steps > 0)."""
        return Stats(
            last=self.wall_last,
            avg=self.wall_sum / self.steps,
            min=self.wall_min,
            max=self.wall_max,
            p50=p50,
            p95=p95,
            steps=self.steps,
            calls=self.steps,
            share=1.0,
            last_share=1.0,
        )

    @memo
    def wall_stats(self) -> StatsPair:
        """(whole run, window) statistics of the step wall time."""
        if self.steps == 0:
            return EMPTY, EMPTY
        whole = self.wall_whole(*self._wall_quantiles())
        vals = self.ring_wall[: self.filled]
        srt = np.sort(vals)
        p50, p95 = _lerp_percentiles(srt, 0.50, 0.95)
        # np.min and np.max: NaN if any (sorted last), else the ends of the sorted values
        lo, hi = (float(srt[0]), float(srt[-1])) if srt[-1] == srt[-1] else (NAN, NAN)
        window = Stats(
            last=self.wall_last,
            avg=float(vals.sum()) / len(vals),  # np.mean's arithmetic
            min=lo,
            max=hi,
            p50=float(p50),
            p95=float(p95),
            steps=len(vals),
            calls=len(vals),
            share=1.0,
            last_share=1.0,
        )
        return whole, window

    def _wall_quantiles(self) -> tuple[float, float]:
        """``hist_quantile_pair`` of the step wall time's histogram at 0.5 and 0.95, from
        the buckets of the last read (``_wqk``) and the counts at or below them (``_wqc``,
        kept as walls are folded: ``RankAgg._fold_walls``), moved a few buckets: the same
        figures without a cumulative sum of every bucket for every rank in every snapshot."""
        d = self.__dict__
        qk, qc = d.get("_wqk"), d.get("_wqc")
        lo, hi = self.wall_min, self.wall_max
        if qk is None or qc is None:
            q50, q95 = hist_quantile_pair(self.wall_hist, 0.5, 0.95, lo, hi)
            c = np.cumsum(self.wall_hist)
            total = int(c[-1])
            ks = [int(np.searchsorted(c, max(1.0, math.ceil(q * total)))) for q in (0.5, 0.95)]
            d["_wqk"], d["_wqc"] = ks, [int(c[k]) for k in ks]
            return q50, q95
        h = self.wall_hist
        total = self.steps  # every folded wall is in one bucket
        out = []
        for j, q in enumerate((0.5, 0.95)):
            t = max(1.0, math.ceil(q * total))
            k, c = qk[j], qc[j]
            for _ in range(64):
                if c < t:
                    k += 1
                    c += int(h[k])
                elif k > 0 and c - int(h[k]) >= t:
                    c -= int(h[k])
                    k -= 1
                else:
                    break
            else:
                d.pop("_wqk")  # moved far (a big batch): counted again
                return self._wall_quantiles()
            qk[j], qc[j] = k, c
            out.append(float(min(max(bucket_value(k), lo), hi)))
        return out[0], out[1]

    @memo
    def unaccounted(self) -> StatsPair:
        """Wall time not covered by top-level regions, per step (never negative)."""
        if self.steps == 0:
            return EMPTY, EMPTY
        top = top_columns(self)
        f = self.filled
        covered_sum = float(self.sum[top].sum())
        whole_ms = max(0.0, self.wall_sum - covered_sum)
        ring_cov = np.nansum(self.ring[:f][:, top], axis=1) if len(top) else np.zeros(f)
        vals = np.sort(np.maximum(0.0, self.ring_wall[:f] - ring_cov))
        seen = top[self.last_seen[top] == self.last_step]
        last = max(0.0, self.wall_last - float(self.last[seen].sum()))
        last_share = _share(last, self.wall_last)
        wsum = float(self.ring_wall[:f].sum())
        lo, hi = (float(vals[0]), float(vals[-1])) if f else (NAN, NAN)
        cnt = np.array([f])
        p50, p95 = (float(x[0]) for x in col_percentiles(vals[:, None], cnt, (0.50, 0.95)))
        # exact whole-run min/max would need per-step data: the window's stand in for them
        share = _share(whole_ms, self.wall_sum)
        whole = Stats(
            last, whole_ms / self.steps, lo, hi, NAN, NAN, self.steps, 0, share, last_share
        )
        avg = float(vals.mean()) if f else NAN
        window = Stats(
            last, avg, lo, hi, p50, p95, f, 0, _share(float(vals.sum()), wsum), last_share
        )
        return whole, window

    @memo
    def samples_per_s(self) -> tuple[float, float]:
        """Samples per second (whole run, window) of this rank."""
        whole = self.samples_total / (self.wall_sum / 1000.0) if self.wall_sum > 0 else NAN
        wsum = float(self.ring_wall[: self.filled].sum())
        window = (
            float(self.ring_samples[: self.filled].sum()) / (wsum / 1000.0) if wsum > 0 else NAN
        )
        return whole, window

    def _ring_col(self, o: np.ndarray, name: str) -> np.ndarray | None:
        """Region ``name`` over the window rows ``o`` (0 where a step lacks it); None when
        the rank never timed it."""
        c = self.cols.get(name)
        return _nan_to_num(self.ring[o, c]) if c is not None else None

    def _col_of(self, o: np.ndarray, name: str | None) -> np.ndarray | None:
        return None if name is None else self._ring_col(o, name)

    def _phases(self) -> tuple[dict[str, str | None], np.ndarray]:
        """The regions holding each phase (:func:`~tui.model.phases.find_phase`: as
        named, or nested under a loop's own region) and the columns of the direct children
        of the ``backward`` one (cached: names only grow)."""
        cache = getattr(self, "_phase_cache", None)
        if cache is None or cache[0] != len(self.names):
            names = self.cols
            ph = {
                "exposed": find_phase(names, EXPOSED_REGIONS),
                "sync": find_phase(names, (SYNC_REGION,)),
                "data": find_phase(names, INPUT_REGIONS),
                "h2d": find_phase(names, H2D_REGIONS),
            }
            kids: list[int] = []
            if ph["sync"] is not None:
                pre = ph["sync"] + "/"
                kids = [
                    c for n, c in names.items() if n.startswith(pre) and "/" not in n[len(pre) :]
                ]
            cache = (len(self.names), ph, np.asarray(kids, dtype=np.int64))
            self._phase_cache = cache
        return cache[1], cache[2]

    def recent_work(self) -> tuple[tuple[float, ...], ...]:
        """Per window step, oldest first: (step, wall, wait, data, h2d, launch, sync,
        exposed, untimed) ms (:data:`~tui.model.phases.RECENT_COLUMNS`). ``exposed``: the
        measured exposed all-reduce, ``wait`` the part of it that is waiting (minus this
        rank's own hook time, plus DDP's buffer broadcast ``comm/buffers``), both NaN when
        not measured; ``sync``: the self time of the ``backward`` region (minus its direct
        children), where an unmeasured wait hides (NaN without one); data, h2d, launch 0
        when untimed. The phases may be nested under the loop's own region (``find_phase``)."""
        c = self.__dict__.get("_recent")
        k = len(self.names)
        # rows made of a single step were summed as 1-D (in pairs): made again with the next
        new = (
            self.steps - c[1] if c is not None and c[0] == k and len(c[2]) > 1 else self.window + 1
        )
        if new == 0:
            return c[2]
        o = self._order()
        if new < len(o):
            # a step's row never changes while it is in the window: only the new steps'
            # rows are made, two at least (one row alone is summed in another order)
            more = self._recent_rows(o[len(o) - max(new, 2) :])[-new:]
            rows = (c[2] + more)[-len(o) :]
        else:
            rows = self._recent_rows(o)
        self.__dict__["_recent"] = (k, self.steps, rows)
        return rows

    def _recent_rows(self, o: np.ndarray) -> tuple[tuple[float, ...], ...]:
        """:meth:`recent_work`'s rows of the ring rows ``o``."""
        n = len(o)
        nan = np.full(n, NAN)
        zero = np.zeros(n)
        ph, kids = self._phases()
        exposed = self._col_of(o, ph["exposed"])
        launch = self._ring_col(o, LAUNCH_REGION)
        launch = zero if launch is None else launch
        wait = nan if exposed is None else np.maximum(0.0, exposed - launch)
        buffers = self._ring_col(o, BUFFERS_REGION)
        if exposed is not None and buffers is not None:
            wait = wait + buffers  # the buffer broadcast of forward is waited in too
        sync = self._col_of(o, ph["sync"])
        if sync is not None:
            if len(kids):
                sync = sync - np.nansum(self.ring[o][:, kids], axis=1)
            sync = np.maximum(0.0, sync)
        data = self._col_of(o, ph["data"])
        h2d = self._col_of(o, ph["h2d"])
        if data is not None and ph["data"] is not None and not ph["data"].endswith("/wait"):
            nested = self._ring_col(o, ph["data"] + "/h2d")
            if nested is not None:  # "data" holds its copy: input is the rest
                data = np.maximum(0.0, data - nested)
        top = top_columns(self)
        covered = np.nansum(self.ring[o][:, top], axis=1) if len(top) else zero
        untimed = np.maximum(0.0, self.ring_wall[o] - covered)
        return tuple(
            zip(
                self.ring_step[o].tolist(),
                self.ring_wall[o].tolist(),
                wait.tolist(),
                (zero if data is None else data).tolist(),
                (zero if h2d is None else h2d).tolist(),
                launch.tolist(),
                (nan if sync is None else sync).tolist(),
                (nan if exposed is None else exposed).tolist(),
                untimed.tolist(),
                strict=True,
            )
        )

    @memo
    def mem_facts(self) -> Any:
        """The memory trend's facts (``MemTrend.facts``), kept until the next fold: a light
        snapshot reads every rank's, several times a second."""
        return self.mem_trend.facts()

    @memo
    def recent_walls(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, wall ms) of the window, oldest first."""
        o = self._order()
        return self.ring_step[o], self.ring_wall[o]
