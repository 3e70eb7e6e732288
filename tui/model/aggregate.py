"""Running statistics of a run with constant cost per record and bounded memory.

Per rank and region: last, sum, min, max, steps seen, calls, and a fixed-bucket log
histogram (p50/p95 within ~3.7%, clamped to the exact min/max) over the whole run; plus a
ring buffer of the last ``window`` steps for the same figures over a recent window. Records
arrive in batches (one line live, thousands in a replay) and are folded in with numpy, so a
long file costs little more than parsing it. Ranks are compared per step (spread,
straggler) through a small table of steps not yet seen by every rank.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from stagewatch.records import STATUS_FAILED, STATUS_INTERRUPTED, Eval, RunEnd, RunStart
from tui.model.order import CUT, tree_rows
from tui.model.rankstats import WAIT_REGIONS, MemTrend, compare_walls, judge_stragglers, worst_trend
from tui.model.snapshot import (
    EMPTY,
    FAILED,
    FINISHED,
    INTERRUPTED,
    NAN,
    RUNNING,
    STALE,
    UNACCOUNTED,
    WAITING,
    FileInfo,
    RankInfo,
    RegionRow,
    RunSnapshot,
    Stats,
)
from tui.source.decode import LIMITS, StepBlock, StepRow

PER_DECADE = 32
LO_EXP = -3  # 0.001 ms
HI_EXP = 7  # 1e7 ms (~2.8 h)
NBUCKETS = (HI_EXP - LO_EXP) * PER_DECADE + 2  # + underflow and overflow buckets
_LO = 10.0**LO_EXP
DEFAULT_WINDOW = 100
MAX_REGIONS = 1024  # distinct region names tracked per rank
_chain = chain.from_iterable
_step_wall = itemgetter(0, 2)  # StepRow (step, time, wall, ...) -> (step, wall)
# a light snapshot's unaccounted row: no figures (the header does not show it)
_BLANK_UNACCOUNTED = RegionRow(
    name=UNACCOUNTED, leaf=UNACCOUNTED, depth=0, parent=None, whole=EMPTY, window=EMPTY
)


def hist_index(values: np.ndarray) -> np.ndarray:
    """Bucket of each value (ms) in the log histogram."""
    v = np.maximum(values, _LO * 0.5)
    idx = np.floor((np.log10(v) - LO_EXP) * PER_DECADE).astype(np.int64) + 1
    return np.clip(idx, 0, NBUCKETS - 1)


def _bucket_value(i: int) -> float:
    if i <= 0:
        return _LO
    if i >= NBUCKETS - 1:
        return 10.0**HI_EXP
    return 10.0 ** (LO_EXP + (i - 0.5) / PER_DECADE)  # geometric middle of the bucket


_BUCKET_VALUES = np.array([_bucket_value(i) for i in range(NBUCKETS)])


def _col_percentile(srt: np.ndarray, n: np.ndarray, q: float) -> np.ndarray:
    """Per column, the ``q`` percentile (linear, as numpy's default) of its ``n`` first values."""
    if srt.shape[0] == 0:
        return np.full(srt.shape[1], NAN)
    pos = q * np.maximum(n - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    cols = np.arange(srt.shape[1])
    a, b = srt[lo, cols], srt[hi, cols]
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, a + (b - a) * (pos - lo), NAN)


def hist_quantile(hist: np.ndarray, q: float, lo: float, hi: float) -> float:
    """Quantile ``q`` of a histogram row, clamped to the exact [lo, hi]."""
    c = np.cumsum(hist)
    total = int(c[-1]) if len(c) else 0
    if total == 0:
        return NAN
    k = int(np.searchsorted(c, max(1.0, math.ceil(q * total))))
    return float(min(max(_bucket_value(k), lo), hi))


def _is_prefix(cols: np.ndarray) -> bool:
    """``cols`` is 0, 1, ..., len - 1 (a schema whose names took the first columns in order)."""
    return bool(
        len(cols) and cols[0] == 0 and cols[-1] == len(cols) - 1 and (np.diff(cols) == 1).all()
    )


def _put(
    m: np.ndarray, c: np.ndarray, rows: Any, cols: np.ndarray, ms: np.ndarray, calls: np.ndarray
) -> None:
    """Values of a schema's columns into the batch's (rows, columns) matrices; names not
    tracked (column -1) are left out."""
    if cols.min() < 0:
        keep = cols >= 0
        cols, ms, calls = cols[keep], ms[:, keep], calls[:, keep]
    m[rows, cols] = ms
    c[rows, cols] = calls


class RankAgg:
    """Statistics of one rank file."""

    def __init__(self, rank: int, window: int = DEFAULT_WINDOW) -> None:
        self.rank = rank
        self.window = max(2, int(window))
        self.cols: dict[str, int] = {}
        self.names: list[str] = []
        self._schemas: dict[tuple[str, ...], np.ndarray] = {}
        self.cap = 0
        self._alloc(16)
        w = self.window
        self.ring_wall = np.full(w, NAN)
        self.ring_samples = np.zeros(w)
        self.ring_step = np.full(w, -1, dtype=np.int64)
        self.ring_loss = np.full(w, NAN)
        self.pos = 0
        self.filled = 0
        self.steps = 0
        self.last_step = 0
        self.wall_sum = 0.0
        self.wall_min = math.inf
        self.wall_max = -math.inf
        self.wall_last = NAN
        self.wall_hist = np.zeros(NBUCKETS, dtype=np.int64)
        self.samples_total = 0
        self.last_time = 0.0
        self.memory: dict[str, Any] | None = None
        self.mem_peak: int | None = None
        self.mem_trend = MemTrend()  # memory over the run for the advice (bounded)
        self.scalars: dict[str, Any] | None = None
        self.dropped_names = 0

    # ----------------------------------------------------------------- storage
    def _alloc(self, cap: int) -> None:
        old = self.cap
        w = self.window

        def grow(a: np.ndarray, fill: float, dtype: Any = np.float64) -> np.ndarray:
            new = np.full(cap, fill, dtype=dtype)
            new[:old] = a
            return new

        if old == 0:
            self.last = np.full(cap, NAN)
            self.last_calls = np.zeros(cap, dtype=np.int64)
            self.last_seen = np.full(cap, -1, dtype=np.int64)
            self.sum = np.zeros(cap)
            self.min = np.full(cap, math.inf)
            self.max = np.full(cap, -math.inf)
            self.n = np.zeros(cap, dtype=np.int64)
            self.calls = np.zeros(cap, dtype=np.int64)
            self.hist = np.zeros((cap, NBUCKETS), dtype=np.int64)
            self.ring = np.full((w, cap), NAN)
            self.ring_calls = np.zeros((w, cap))
        else:
            self.last = grow(self.last, NAN)
            self.last_calls = grow(self.last_calls, 0, np.int64)
            self.last_seen = grow(self.last_seen, -1, np.int64)
            self.sum = grow(self.sum, 0.0)
            self.min = grow(self.min, math.inf)
            self.max = grow(self.max, -math.inf)
            self.n = grow(self.n, 0, np.int64)
            self.calls = grow(self.calls, 0, np.int64)
            hist = np.zeros((cap, NBUCKETS), dtype=np.int64)
            hist[:old] = self.hist
            self.hist = hist
            ring = np.full((w, cap), NAN)
            ring[:, :old] = self.ring
            self.ring = ring
            rc = np.zeros((w, cap))
            rc[:, :old] = self.ring_calls
            self.ring_calls = rc
        self.cap = cap

    def _cols_for(self, keys: tuple[str, ...]) -> np.ndarray:
        cols = self._schemas.get(keys)
        if cols is None:
            idx = []
            for k in keys:
                c = self.cols.get(k)
                if c is None:
                    # bounded memory: names beyond the cap (or longer than the writer ever
                    # writes; checked here once per schema, not per line) are not tracked
                    if len(self.names) >= MAX_REGIONS or len(k) > LIMITS.MAX_NAME_CHARS:
                        self.dropped_names += 1
                        idx.append(-1)
                        continue
                    c = len(self.names)
                    self.cols[k] = c
                    self.names.append(k)
                idx.append(c)
            if len(self.names) > self.cap:
                self._alloc(max(self.cap * 2, len(self.names)))
            cols = np.asarray(idx, dtype=np.int64)
            if len(self._schemas) < 4096:
                self._schemas[keys] = cols
        return cols

    # ----------------------------------------------------------------- ingest
    def ingest(self, rows: Sequence[StepRow]) -> None:
        """Fold a batch of validated steps (in file order) into the statistics."""
        b = len(rows)
        if b == 0:
            return
        # one pass of C code turns the rows into columns (steps, times, walls, ...)
        steps_t, times_t, walls_t, samples_t, _ep, keys_t, regs_t, mems_t, scs_t = zip(
            *rows, strict=True
        )
        k0 = keys_t[0]
        if keys_t.count(k0) == b:  # the usual case: every step has the same regions
            groups: dict[tuple[str, ...], list[int]] | None = None
            colmap = {k0: self._cols_for(k0)}
        else:
            groups = {}
            for i, k in enumerate(keys_t):
                g = groups.get(k)
                if g is None:
                    groups[k] = [i]
                else:
                    g.append(i)
            colmap = {k: self._cols_for(k) for k in groups}
        cap = self.cap
        m = np.full((b, cap), NAN)
        c = np.zeros((b, cap))
        for k, cols in colmap.items():
            if not len(cols):
                continue
            if groups is None:
                sel = regs_t
                ii: Any = slice(None)
            else:
                idx = groups[k]
                sel = [regs_t[i] for i in idx]
                ii = np.asarray(idx)[:, None]
            cells = len(sel) * len(cols)
            # (ms, calls) pairs, flattened in one pass of C code
            vals = np.fromiter(_chain(_chain(map(dict.values, sel))), np.float64, count=2 * cells)
            vals = vals.reshape(len(sel), -1)
            _put(m, c, ii, cols, vals[:, 0::2], vals[:, 1::2])
        self._fold(b, m, c, steps_t, times_t, walls_t, samples_t, mems_t, scs_t)

    def ingest_block(self, blk: StepBlock) -> None:
        """Fold a :class:`StepBlock` (steps of one schema, values in arrays): the same
        statistics as :meth:`ingest` of the same steps as rows."""
        msgs = blk.msgs
        b = len(msgs)
        if b == 0:
            return
        cols = self._cols_for(blk.keys)
        cap = self.cap
        ms, calls = blk.ms[:b], blk.calls[:b]
        if len(cols) == cap and _is_prefix(cols):
            m, c = ms, calls  # the block's columns are the rank's, in order (the usual run)
        else:
            m = np.full((b, cap), NAN)
            c = np.zeros((b, cap))
            if len(cols):
                _put(m, c, slice(None), cols, ms, calls)
        self._fold(
            b,
            m,
            c,
            [x.step for x in msgs],
            [x.time for x in msgs],
            [x.wall_ms for x in msgs],
            [x.samples for x in msgs],
            [x.memory for x in msgs],
            [x.scalars for x in msgs],
        )

    def _fold(
        self,
        b: int,
        m: np.ndarray,
        c: np.ndarray,
        steps_t: Sequence[int],
        times_t: Sequence[float],
        walls_t: Sequence[float],
        samples_t: Sequence[int],
        mems_t: Sequence[Any],
        scs_t: Sequence[Any],
    ) -> None:
        """The batch statistics: ``m``/``c`` are the (rows, columns) ms and calls (NaN: absent)."""
        cap = m.shape[1]
        present = ~np.isnan(m)
        anyp = present.any(axis=0)
        self.n += present.sum(axis=0)
        # sums in file order, row after row (a reduction along axis 0 is sequential): the
        # same figures whatever the batches were (a run index resumed mid-file included)
        self.sum = np.add.reduce(np.vstack([self.sum[None, :], np.where(present, m, 0.0)]), axis=0)
        self.calls += c.sum(axis=0).astype(np.int64)
        self.min = np.fmin(self.min, np.fmin.reduce(m, axis=0))
        self.max = np.fmax(self.max, np.fmax.reduce(m, axis=0))
        steps = np.array(steps_t, dtype=np.int64)
        pc = np.nonzero(anyp)[0]
        if len(pc):
            lastrow = (b - 1) - present[::-1].argmax(axis=0)[pc]
            self.last[pc] = m[lastrow, pc]
            self.last_calls[pc] = c[lastrow, pc].astype(np.int64)
            self.last_seen[pc] = steps[lastrow]
        rr, cc = np.nonzero(present)
        if len(rr):
            flat_idx = cc * NBUCKETS + hist_index(m[rr, cc])
            self.hist += np.bincount(flat_idx, minlength=cap * NBUCKETS).reshape(cap, NBUCKETS)
        walls = np.array(walls_t, dtype=np.float64)
        samples = np.array(samples_t, dtype=np.float64)
        self.steps += b
        self.wall_sum = float(
            np.cumsum(np.concatenate(([self.wall_sum], walls)))[-1]
        )  # sequential too
        self.wall_min = min(self.wall_min, float(walls.min()))
        self.wall_max = max(self.wall_max, float(walls.max()))
        self.wall_last = float(walls[-1])
        self.wall_hist += np.bincount(hist_index(walls), minlength=NBUCKETS)
        self.samples_total += int(sum(samples_t))
        self.last_step = int(steps[-1])
        self.last_time = float(times_t[-1])
        peaks = [mem.get("peak") for mem in mems_t if mem]
        if not all(peaks):  # a step without a (non-zero) peak: the full rule
            peaks = [
                mem.get("peak") or mem.get("allocated") or mem.get("rss") for mem in mems_t if mem
            ]
            peaks = [p for p in peaks if p is not None]
        self.mem_trend.add_batch(steps_t, mems_t)
        if peaks:
            p = max(peaks)
            if self.mem_peak is None or p > self.mem_peak:
                self.mem_peak = int(p)
        # ring buffer: the last `window` rows of the batch. Row number i of the file is
        # always in slot i % window, whatever the batches were (reductions over the ring
        # then see the same order, to the last bit)
        w = self.window
        k = min(b, w)
        at = (self.pos + (b - k) + np.arange(k)) % w
        self.ring[at] = m[b - k :]
        self.ring_calls[at] = c[b - k :]
        self.ring_wall[at] = walls[b - k :]
        self.ring_samples[at] = samples[b - k :]
        self.ring_step[at] = steps[b - k :]
        self.ring_loss[at] = np.array(
            [sc.get("loss") if sc else None for sc in scs_t[b - k :]], dtype=np.float64
        )
        self.pos = (self.pos + b) % w
        self.filled = min(w, self.filled + k)
        for mem in reversed(mems_t):
            if mem:
                self.memory = mem
                break
        for sc in reversed(scs_t):
            if sc:
                self.scalars = sc
                break

    # ----------------------------------------------------------------- read out
    def _order(self) -> np.ndarray:
        """Ring rows oldest first."""
        if self.filled < self.window:
            return np.arange(self.filled)
        return (self.pos + np.arange(self.window)) % self.window

    def region_stats(self, col: int) -> tuple[Stats, Stats]:
        """(whole run, window) statistics of one region column."""
        return self.all_stats()[col]

    def all_stats(self) -> list[tuple[Stats, Stats]]:
        """(whole run, window) statistics of every region column, computed column-wise."""
        k = len(self.names)
        if k == 0:
            return []
        n = self.n[:k]
        mins, maxs = self.min[:k], self.max[:k]
        c = np.cumsum(self.hist[:k], axis=1)
        tot = c[:, -1]
        p50 = np.clip(
            _BUCKET_VALUES[(c < np.maximum(1, np.ceil(0.50 * tot))[:, None]).sum(axis=1)],
            mins,
            maxs,
        )
        p95 = np.clip(
            _BUCKET_VALUES[(c < np.maximum(1, np.ceil(0.95 * tot))[:, None]).sum(axis=1)],
            mins,
            maxs,
        )
        last = np.where(self.last_seen[:k] == self.last_step, self.last[:k], 0.0)
        ring = self.ring[: self.filled, :k]
        valid = ~np.isnan(ring)
        wn = valid.sum(axis=0)
        wsum = np.where(valid, ring, 0.0).sum(axis=0)
        srt = np.sort(ring, axis=0)  # NaN sorts last
        wp50, wp95 = _col_percentile(srt, wn, 0.50), _col_percentile(srt, wn, 0.95)
        wmin = srt[0]
        wmax = srt[np.maximum(wn - 1, 0), np.arange(k)] if self.filled else np.full(k, NAN)
        wcalls = self.ring_calls[: self.filled, :k].sum(axis=0)
        wall_sum, wall_last = self.wall_sum, self.wall_last
        wwall = float(self.ring_wall[: self.filled].sum())
        out: list[tuple[Stats, Stats]] = []
        cols = zip(
            n.tolist(),
            self.sum[:k].tolist(),
            mins.tolist(),
            maxs.tolist(),
            p50.tolist(),
            p95.tolist(),
            self.calls[:k].tolist(),
            last.tolist(),
            wn.tolist(),
            wsum.tolist(),
            wp50.tolist(),
            wp95.tolist(),
            wmin.tolist(),
            wmax.tolist(),
            wcalls.tolist(),
            strict=True,
        )
        for cn, cs, lo, hi, q50, q95, calls, la, wcount, ws, w50, w95, wlo, whi, wc in cols:
            if cn == 0:
                out.append((EMPTY, EMPTY))
                continue
            last_share = la / wall_last if wall_last > 0 else NAN
            whole = Stats(
                la,
                cs / cn,
                lo,
                hi,
                q50,
                q95,
                cn,
                calls,
                cs / wall_sum if wall_sum > 0 else NAN,
                last_share,
            )
            if wcount == 0:
                window = Stats(last=la, steps=0, calls=0, share=0.0, last_share=last_share)
            else:
                window = Stats(
                    la,
                    ws / wcount,
                    wlo,
                    whi,
                    w50,
                    w95,
                    wcount,
                    int(wc),
                    ws / wwall if wwall > 0 else NAN,
                    last_share,
                )
            out.append((whole, window))
        return out

    def wall_stats(self) -> tuple[Stats, Stats]:
        if self.steps == 0:
            return EMPTY, EMPTY
        whole = Stats(
            last=self.wall_last,
            avg=self.wall_sum / self.steps,
            min=self.wall_min,
            max=self.wall_max,
            p50=hist_quantile(self.wall_hist, 0.5, self.wall_min, self.wall_max),
            p95=hist_quantile(self.wall_hist, 0.95, self.wall_min, self.wall_max),
            steps=self.steps,
            calls=self.steps,
            share=1.0,
            last_share=1.0,
        )
        vals = self.ring_wall[: self.filled]
        p50, p95 = np.percentile(vals, [50, 95])
        window = Stats(
            last=self.wall_last,
            avg=float(vals.mean()),
            min=float(vals.min()),
            max=float(vals.max()),
            p50=float(p50),
            p95=float(p95),
            steps=len(vals),
            calls=len(vals),
            share=1.0,
            last_share=1.0,
        )
        return whole, window

    def unaccounted(self) -> tuple[Stats, Stats]:
        """Wall time not covered by top-level regions, per step (never negative)."""
        if self.steps == 0:
            return EMPTY, EMPTY
        top = np.fromiter((c for n, c in self.cols.items() if "/" not in n), dtype=np.int64)
        f = self.filled
        covered_sum = float(self.sum[top].sum())
        whole_ms = max(0.0, self.wall_sum - covered_sum)
        ring_cov = np.nansum(self.ring[:f][:, top], axis=1) if len(top) else np.zeros(f)
        vals = np.sort(np.maximum(0.0, self.ring_wall[:f] - ring_cov))
        seen = top[self.last_seen[top] == self.last_step]
        last = max(0.0, self.wall_last - float(self.last[seen].sum()))
        last_share = last / self.wall_last if self.wall_last > 0 else NAN
        wsum = float(self.ring_wall[:f].sum())
        lo, hi = (float(vals[0]), float(vals[-1])) if f else (NAN, NAN)
        cnt = np.array([f])
        p50 = float(_col_percentile(vals[:, None], cnt, 0.50)[0])
        p95 = float(_col_percentile(vals[:, None], cnt, 0.95)[0])
        # exact whole-run min/max would need per-step data: the window's stand in for them
        whole = Stats(
            last,
            whole_ms / self.steps,
            lo,
            hi,
            NAN,
            NAN,
            self.steps,
            0,
            whole_ms / self.wall_sum if self.wall_sum > 0 else NAN,
            last_share,
        )
        window = Stats(
            last,
            float(vals.mean()) if f else NAN,
            lo,
            hi,
            p50,
            p95,
            f,
            0,
            float(vals.sum()) / wsum if wsum > 0 else NAN,
            last_share,
        )
        return whole, window

    def samples_per_s(self) -> tuple[float, float]:
        whole = self.samples_total / (self.wall_sum / 1000.0) if self.wall_sum > 0 else NAN
        wsum = float(self.ring_wall[: self.filled].sum())
        window = (
            float(self.ring_samples[: self.filled].sum()) / (wsum / 1000.0) if wsum > 0 else NAN
        )
        return whole, window

    def recent_work(self) -> tuple[tuple[int, float, float, float], ...]:
        """(step, wall, allreduce, data) ms of the window's steps, oldest first (0 when untimed)."""
        o = self._order()
        waits = []
        for name in WAIT_REGIONS:
            c = self.cols.get(name)
            waits.append(np.nan_to_num(self.ring[o, c]) if c is not None else np.zeros(len(o)))
        return tuple(
            zip(
                self.ring_step[o].tolist(),
                self.ring_wall[o].tolist(),
                waits[0].tolist(),
                waits[1].tolist(),
                strict=True,
            )
        )

    def recent_walls(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, wall ms) of the window, oldest first."""
        o = self._order()
        return self.ring_step[o], self.ring_wall[o]


def _mean(vals: list[float]) -> float:
    vals = [v for v in vals if v == v]  # drop NaN
    return sum(vals) / len(vals) if vals else NAN


def _merge(stats: Sequence[Stats]) -> Stats:
    """Several ranks' statistics of one region as one (weighted by steps seen)."""
    if len(stats) == 1:
        return stats[0]
    live = [s for s in stats if s.steps > 0]
    if not live:
        last = _mean([s.last for s in stats])
        return Stats(last=last) if last == last else EMPTY
    n = sum(s.steps for s in live)
    return Stats(
        last=_mean([s.last for s in stats]),
        avg=sum(s.avg * s.steps for s in live) / n,
        min=min(s.min for s in live),
        max=max(s.max for s in live),
        p50=_mean([s.p50 for s in live]),  # mean of the ranks' medians: ranks run the same code
        p95=max(s.p95 for s in live),
        steps=n,
        calls=sum(s.calls for s in live),
        share=_mean([s.share for s in stats]),
        last_share=_mean([s.last_share for s in stats]),
    )


class RunAgg:
    """All ranks of one run: records in, :class:`RunSnapshot` out."""

    def __init__(self, run_id: str, path: str = "", window: int = DEFAULT_WINDOW) -> None:
        self.run_id = run_id
        self.path = path
        self.window = max(2, int(window))
        self.ranks: dict[int, RankAgg] = {}
        self.starts: dict[int, RunStart] = {}
        self.ends: dict[int, RunEnd] = {}
        self.evals: dict[str, float] = {}
        self.eval_step: int | None = None
        # rank -> its last (step, wall ms): ranks are compared per step over these when a
        # snapshot is made, so the comparison does not depend on the order ranks were read
        self.tails: dict[int, deque[tuple[int, float]]] = {}
        self.compared_steps = 0
        self.compare_ranks = True  # kept for callers; the comparison is always made

    @property
    def pending_limit(self) -> int:
        """Steps waiting for the other ranks at most (older ones are dropped)."""
        return max(4 * self.window, 4096)

    @property
    def world_size(self) -> int:
        ws = max((s.world_size for s in self.starts.values()), default=0)
        return max(ws, len(self.ranks), 1)

    def rank(self, r: int) -> RankAgg:
        agg = self.ranks.get(r)
        if agg is None:
            agg = self.ranks[r] = RankAgg(r, self.window)
        return agg

    def add_record(self, rank: int, rec: Any) -> None:
        """A non-step record of ``rank``."""
        if isinstance(rec, RunStart):
            self.starts[rank] = rec
            self.ends.pop(rank, None)  # a resumed run appends a new run_start
            self.rank(rank)
        elif isinstance(rec, RunEnd):
            self.ends[rank] = rec
        elif isinstance(rec, Eval) and (self.eval_step is None or rec.step >= self.eval_step):
            self.eval_step = rec.step
            self.evals = dict(rec.metrics)

    def add_steps(self, rank: int, rows: Sequence[StepRow]) -> None:
        """A batch of steps of one rank, in file order."""
        if not rows:
            return
        self.rank(rank).ingest(rows)
        t = self.tails.get(rank)
        if t is None:
            t = self.tails[rank] = deque(maxlen=self.pending_limit)
        t.extend(map(_step_wall, rows))  # (step, wall ms) of each row, in C

    def add_block(self, rank: int, blk: StepBlock) -> None:
        """A :class:`StepBlock` of one rank, in file order (as :meth:`add_steps`)."""
        if not blk.msgs:
            return
        self.rank(rank).ingest_block(blk)
        t = self.tails.get(rank)
        if t is None:
            t = self.tails[rank] = deque(maxlen=self.pending_limit)
        msgs = blk.msgs
        t.extend(zip([x.step for x in msgs], [x.wall_ms for x in msgs], strict=True))

    def drop_rank(self, rank: int) -> None:
        """Forget everything read of one rank (its file is read again)."""
        self.ranks.pop(rank, None)
        self.starts.pop(rank, None)
        self.ends.pop(rank, None)
        self.tails.pop(rank, None)

    def absorb(self, other: RunAgg) -> None:
        """Take the ranks another aggregate read (in another process) of the same run."""
        for r, a in other.ranks.items():
            self.ranks[r] = a
        self.starts.update(other.starts)
        for r in other.starts:
            if r not in other.ends:
                self.ends.pop(r, None)
        self.ends.update(other.ends)
        if other.eval_step is not None and (
            self.eval_step is None or other.eval_step >= self.eval_step
        ):
            self.eval_step = other.eval_step
            self.evals = dict(other.evals)
        self.tails.update(other.tails)

    def compare_absorbed(self) -> None:
        """Nothing left to do (ranks are compared when a snapshot is made); kept for callers."""

    def compare(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per step that every rank has among its last :attr:`pending_limit` steps (the last
        ``window`` such steps, oldest first): slowest rank, spread (max - min wall ms) and
        excess of the slowest over the median."""
        return compare_walls(self.tails, self.world_size, self.window)

    # ----------------------------------------------------------------- state
    def state(self, idle_s: float, stale_after: float) -> str:
        if not self.ranks and not self.starts:
            return WAITING
        ends = self.ends.values()
        if any(e.status == STATUS_FAILED for e in ends):
            return FAILED
        seen = set(self.ranks) | set(self.starts)
        if ends and all(r in self.ends for r in seen) and len(self.ends) >= self.world_size:
            if any(e.status == STATUS_INTERRUPTED for e in ends):
                return INTERRUPTED
            return FINISHED
        if idle_s > stale_after:
            return STALE
        return RUNNING

    @property
    def last_step(self) -> int:
        return max((a.last_step for a in self.ranks.values()), default=0)

    @property
    def total_steps(self) -> int | None:
        vals = [s.total_steps for s in self.starts.values() if s.total_steps]
        return max(vals) if vals else None

    def _regions(
        self, aggs: list[RankAgg], with_ranks: bool
    ) -> tuple[tuple[RegionRow, ...], RegionRow]:
        """The tree's rows (each region's ranks merged) and the unaccounted row: the bulk of
        a snapshot's cost (regions × ranks)."""
        names: dict[str, None] = {}
        for a in aggs:
            for n in a.names:
                names.setdefault(n, None)
        regions = []
        all_stats = [a.all_stats() for a in aggs]
        for name, cut in tree_rows(names):
            i = name.rfind("/")
            if cut:
                regions.append(
                    RegionRow(
                        name=name,
                        leaf=CUT,
                        depth=name.count("/"),
                        parent=name[:i] if i > 0 else None,
                        whole=EMPTY,
                        window=EMPTY,
                        cut=True,
                    )
                )
                continue
            per = []
            for a, st in zip(aggs, all_stats, strict=True):
                c = a.cols.get(name)
                w, win = st[c] if c is not None else (EMPTY, EMPTY)
                per.append((a.rank, w, win))
            leaf = name[i + 1 :] if i >= 0 else name
            regions.append(
                RegionRow(
                    name=name,
                    leaf=leaf,
                    depth=name.count("/"),
                    parent=name[:i] if i > 0 else None,
                    whole=_merge([p[1] for p in per]),
                    window=_merge([p[2] for p in per]),
                    ranks=tuple(per) if with_ranks else (),
                )
            )
        un = [(a.rank, *a.unaccounted()) for a in aggs]
        unaccounted = RegionRow(
            name=UNACCOUNTED,
            leaf=UNACCOUNTED,
            depth=0,
            parent=None,
            whole=_merge([u[1] for u in un]),
            window=_merge([u[2] for u in un]),
            ranks=tuple(un) if with_ranks else (),
        )
        return tuple(regions), unaccounted

    def snapshot(
        self,
        *,
        idle_s: float = 0.0,
        stale_after: float = 60.0,
        files: tuple[FileInfo, ...] = (),
        with_ranks: bool = True,
        replay: str | None = None,
        light: bool = False,
    ) -> RunSnapshot:
        """An immutable picture of the run now (cost bounded by regions × ranks × window).

        ``light``: without the per-region figures (``regions`` empty, ``unaccounted`` blank,
        ``light`` set): what the header shows, at a fraction of the cost; every other field
        is what the full snapshot would hold.
        """
        aggs = [self.ranks[r] for r in sorted(self.ranks)]
        regions, unaccounted = (
            self._regions(aggs, with_ranks) if not light else ((), _BLANK_UNACCOUNTED)
        )
        walls = [a.wall_stats() for a in aggs]
        sps = [a.samples_per_s() for a in aggs]
        sps_whole = sum(s[0] for s in sps if not math.isnan(s[0])) if sps else NAN
        sps_win = sum(s[1] for s in sps if not math.isnan(s[1])) if sps else NAN
        wall_win = _merge([w[1] for w in walls])
        slowest_avg = max((w[1].avg for w in walls if w[1].steps), default=NAN)
        steps_per_s = 1000.0 / slowest_avg if slowest_avg and slowest_avg > 0 else NAN
        step = self.last_step
        total = self.total_steps
        st = self.state(idle_s, stale_after)
        eta = None
        if total and step < total and st == RUNNING and not math.isnan(steps_per_s):
            eta = (total - step) / steps_per_s
        # per-step slowest rank over the window
        straggler, excess, spread = None, NAN, NAN
        rank_slow: dict[int, int] = {}
        slow, spreads, ex = self.compare()
        self.compared_steps = len(slow)
        if len(slow):
            spread = float(np.mean(spreads))
            for r in np.unique(slow):
                rank_slow[int(r)] = int((slow == r).sum())
            top = max(rank_slow, key=rank_slow.__getitem__)
            # a straggler is slowest in most compared steps, not just by chance
            if len(aggs) > 1 and rank_slow[top] >= 0.5 * len(slow):
                straggler = top
                excess = float(np.mean(ex[slow == top]))
        # sparkline: slowest rank per step over the window
        recent: dict[int, float] = {}
        for a in aggs:
            s_arr, w_arr = a.recent_walls()
            for s, w in zip(s_arr.tolist(), w_arr.tolist(), strict=False):
                if w > recent.get(s, -1.0):
                    recent[s] = w
        step_times = tuple(recent[s] for s in sorted(recent)[-self.window :])
        mem_peaks = [a.mem_peak for a in aggs if a.mem_peak is not None]
        mems = [a.memory for a in aggs if a.memory]
        mem_last = None
        if mems:
            vals = [m.get("allocated") or m.get("rss") for m in mems]
            vals = [int(v) for v in vals if v is not None]
            mem_last = max(vals) if vals else None
        start0 = self.starts.get(0) or next(iter(self.starts.values()), None)
        scalars: dict[str, float] = {}
        for a in aggs:
            if a.scalars:
                for k, v in a.scalars.items():
                    if v is not None and k not in scalars:
                        scalars[k] = float(v)
        losses = np.concatenate([a.ring_loss[: a.filled] for a in aggs]) if aggs else np.array([])
        loss_window = (
            float(np.nanmean(losses)) if len(losses) and not np.isnan(losses).all() else NAN
        )
        err = None
        for e in self.ends.values():
            if e.error_type or e.error_message:
                err = f"{e.error_type or 'error'}: {e.error_message or ''}".strip()
                break
        rank_info = []
        for a, (ww, wwin), (_s_whole, s_win) in zip(aggs, walls, sps, strict=True):
            rs = self.starts.get(a.rank)
            rank_info.append(
                RankInfo(
                    rank=a.rank,
                    step=a.last_step,
                    wall=ww,
                    wall_window=wwin,
                    samples_per_s=s_win,
                    host=rs.host if rs else "",
                    device=rs.device if rs else "",
                    slowest_steps=rank_slow.get(a.rank, 0),
                    mem_peak=a.mem_peak,
                    recent=a.recent_work() if len(aggs) > 1 else (),
                )
            )
        # under DDP every rank's step is equally long: judge ranks by compute instead
        verdict = judge_stragglers({ri.rank: ri.recent for ri in rank_info}, window=self.window)
        if verdict is not None:
            straggler, excess = (
                verdict.straggler,
                verdict.excess_ms if verdict.straggler is not None else NAN,
            )
        return RunSnapshot(
            run_id=self.run_id,
            path=self.path,
            state=st,
            step=step,
            total_steps=total,
            world_size=self.world_size,
            ranks_seen=tuple(sorted(set(self.ranks) | set(self.starts))),
            window_size=self.window,
            wall=_merge([w[0] for w in walls]),
            wall_window=wall_win,
            samples_per_s=sps_whole,
            samples_per_s_window=sps_win,
            steps_per_s_window=steps_per_s,
            eta_s=eta,
            mem_peak=max(mem_peaks) if mem_peaks else None,
            mem_last=mem_last,
            mem_total=start0.device_memory_total if start0 else None,
            scalars=tuple(scalars.items()),
            loss_window=loss_window,
            evals=tuple(self.evals.items()),
            eval_step=self.eval_step,
            regions=regions,
            unaccounted=unaccounted,
            step_times=step_times,
            rank_info=tuple(rank_info),
            straggler=straggler,
            straggler_excess=excess,
            spread_window=spread,
            files=files,
            error=err,
            host=start0.host if start0 else "",
            device=start0.device if start0 else "",
            gpu_name=start0.gpu_name if start0 else None,
            started=start0.time if start0 else None,
            idle_s=idle_s,
            replay=replay,
            mem_trend=worst_trend(a.mem_trend.facts() for a in aggs),
            config=start0.config if start0 else None,
            stragglers=verdict,
            light=light,
        )
