"""One rank's statistics with constant cost per record and bounded memory.

Per region: last, sum, min, max, steps seen, calls, and a fixed-bucket log histogram
(:mod:`tui.model.histogram`) over the whole run; plus a ring buffer of the last ``window``
steps for the same figures over a recent window. Records arrive in batches (one line live,
thousands in a replay) and are folded in with numpy, so a long file costs little more than
parsing it. The read-outs (:class:`~tui.model.snapshot.Stats`) are
:class:`~tui.model.readout.RankReadout`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np

from tui.model.histogram import NBUCKETS, bucket_of, hist_index
from tui.model.rankstats import MemTrend
from tui.model.readout import RankReadout
from tui.model.rows import LIMITS, StepBlock, StepRow
from tui.model.series import RegionSeries
from tui.model.snapshot import NAN

DEFAULT_WINDOW = 100
MAX_REGIONS = 1024  # distinct region names tracked per rank
MAX_PENDING = 64  # batches whose region values wait to be folded, at most
DEFER_ROWS = 8  # a batch of more steps is folded at once (the live case is a step or two)
_chain = chain.from_iterable


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


def _mem_value(m: Any) -> Any:
    """What :meth:`MemTrend.add_batch` takes of one step's ``memory``: ``allocated``, else
    ``rss``."""
    val = m.get("allocated") if m else None
    return m.get("allocated", m.get("rss")) if m and val is None else val


class _Deferred:
    """A region array of :class:`RankAgg` (stored in the instance's ``__dict__`` under its
    own name): reading it first folds the steps whose region part is still pending."""

    __slots__ = ("name",)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        d = obj.__dict__
        if d["_pending"]:
            obj._flush()
        return d[self.name]

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value


class RankAgg(RankReadout):
    """Statistics of one rank file.

    A small batch's region values (the whole-run region figures, the chart's series, the
    ring's region columns) are folded when something first reads them, not when it comes:
    ``tui watch`` reads a live rank a step or two at a time, 8 times a second, but reads
    the region figures only for a full snapshot (once a second), so at 64 ranks it folds
    64 batches of several steps a second instead of hundreds of single steps. The figures
    are the same to the bit (the batch fold is sequential, as the one-step fold). The step
    wall times, samples, memory and scalars (the header's) are folded at once.
    """

    last = _Deferred()
    last_calls = _Deferred()
    last_seen = _Deferred()
    sum = _Deferred()
    min = _Deferred()
    max = _Deferred()
    n = _Deferred()
    calls = _Deferred()
    hist = _Deferred()
    ring = _Deferred()
    ring_calls = _Deferred()
    series = _Deferred()

    def __init__(self, rank: int, window: int = DEFAULT_WINDOW) -> None:
        # batches whose region part is not folded yet: (ring pos, m, c, steps, walls)
        self._pending: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.rank = rank
        self.window = max(2, int(window))
        self.cols: dict[str, int] = {}
        self.names: list[str] = []
        self._schemas: dict[tuple[str, ...], np.ndarray] = {}
        self._prefix: dict[tuple[str, ...], bool] = {}  # schema -> _is_prefix of its columns
        self.cap = 0
        self.series = RegionSeries()  # each region over the whole run, downsampled (the chart)
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
        self.series.grow(cap)
        qk = self.__dict__.get("_qk")
        if qk is not None:  # new columns: no value, bucket 0
            for name in ("_qk", "_qc"):
                q = np.zeros((2, cap), dtype=np.int64)
                q[:, :old] = self.__dict__[name]
                self.__dict__[name] = q
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
        prefix = self._prefix.get(blk.keys)
        if prefix is None:  # a schema's columns never change: checked once per schema
            prefix = _is_prefix(cols)
            if len(self._prefix) < 4096:
                self._prefix[blk.keys] = prefix
        if len(cols) == cap and prefix:
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
        self._memo = {}  # the read-outs change
        steps = np.array(steps_t, dtype=np.int64)
        walls = np.array(walls_t, dtype=np.float64)
        self._pending.append((self.pos, m, c, steps, walls))
        # a big batch (a replay, a first read) gains nothing by waiting; and bounded memory
        # when nothing reads the regions
        if b > DEFER_ROWS or len(self._pending) >= MAX_PENDING:
            self._flush()
        self._fold_walls(b, walls)
        self.samples_total += int(sum(samples_t))
        self.last_step = int(steps[-1])
        self.last_time = float(times_t[-1])
        self._fold_memory(steps_t, mems_t)
        self._fold_ring(b, steps, walls, samples_t, scs_t)
        for sc in reversed(scs_t):
            if sc:
                self.scalars = sc
                break

    def _flush(self) -> None:
        """Fold the pending batches' region values (as one batch: the same figures)."""
        d = self.__dict__
        p, d["_pending"] = d["_pending"], []
        if len(p) <= 2 and all(len(x[3]) == 1 for x in p):
            # a step or two (a slow live run): the one-step folds take fewer numpy calls
            for pos, m, c, steps, walls in p:
                self._fold_region_row(m[0], c[0], int(steps[0]))
                self.series.add(steps, m, walls)
                self.ring[pos] = m[0]
                self.ring_calls[pos] = c[0]
            return
        if len(p) == 1:
            pos, m, c, steps, walls = p[0]
        else:
            pos = p[0][0]
            m = np.concatenate([x[1] for x in p])
            c = np.concatenate([x[2] for x in p])
            steps = np.concatenate([x[3] for x in p])
            walls = np.concatenate([x[4] for x in p])
        b = len(steps)
        self._fold_regions(b, m, c, steps)
        self.series.add(steps, m, walls)
        w = self.window
        k = min(b, w)
        at = (pos + (b - k) + np.arange(k)) % w
        self.ring[at] = m[b - k :]
        self.ring_calls[at] = c[b - k :]

    def _fold_regions(self, b: int, m: np.ndarray, c: np.ndarray, steps: np.ndarray) -> None:
        """Whole-run figures of each region column."""
        if b == 1:
            self._fold_region_row(m[0], c[0], int(steps[0]))
            return
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
        pc = np.nonzero(anyp)[0]
        if len(pc):
            lastrow = (b - 1) - present[::-1].argmax(axis=0)[pc]
            self.last[pc] = m[lastrow, pc]
            self.last_calls[pc] = c[lastrow, pc].astype(np.int64)
            self.last_seen[pc] = steps[lastrow]
        rr, cc = np.nonzero(present)
        if len(rr):
            b = hist_index(m[rr, cc])
            self.hist += np.bincount(cc * NBUCKETS + b, minlength=cap * NBUCKETS).reshape(
                cap, NBUCKETS
            )
            qk = self.__dict__.get("_qk")
            if qk is not None:  # the counts at or below each quantile's bucket
                for j in range(2):
                    self._qc[j] += np.bincount(cc[b <= qk[j, cc]], minlength=cap)

    def _fold_region_row(self, row: np.ndarray, crow: np.ndarray, step: int) -> None:
        """:meth:`_fold_regions` of one step (the live case), in fewer numpy calls: the same
        figures to the last bit (one addition per sum, as the batch's sequential reduce)."""
        present = row == row
        self.n += present
        self.sum = self.sum + np.where(present, row, 0.0)
        self.calls += crow.astype(np.int64)
        self.min = np.fmin(self.min, row)
        self.max = np.fmax(self.max, row)
        pc = np.flatnonzero(present)
        if len(pc):
            vals = row[pc]
            self.last[pc] = vals
            self.last_calls[pc] = crow[pc].astype(np.int64)
            self.last_seen[pc] = step
            b = hist_index(vals)
            self.hist[pc, b] += 1
            qk = self.__dict__.get("_qk")
            if qk is not None:  # the counts at or below each quantile's bucket
                self._qc[:, pc] += b <= qk[:, pc]

    def _fold_walls(self, b: int, walls: np.ndarray) -> None:
        """Whole-run figures of the step wall time."""
        self.steps += b
        if b == 1:  # the live case, in plain floats: the same figures
            w = float(walls[0])
            self.wall_sum += w
            self.wall_min = min(self.wall_min, w)
            self.wall_max = max(self.wall_max, w)
            self.wall_last = w
            i = bucket_of(w)
            self.wall_hist[i] += 1
            qk = self.__dict__.get("_wqk")
            if qk is not None:  # the counts at or below each wall quantile's bucket
                qc = self._wqc
                qc[0] += i <= qk[0]
                qc[1] += i <= qk[1]
            return
        ws = walls.tolist()
        if b <= 16 and all(w == w for w in ws):  # a live tick's few steps: plain floats
            self._fold_few_walls(ws, [bucket_of(w) for w in ws])
            return
        # sequential too
        self.wall_sum = float(np.cumsum(np.concatenate(([self.wall_sum], walls)))[-1])
        self.wall_min = min(self.wall_min, float(walls.min()))
        self.wall_max = max(self.wall_max, float(walls.max()))
        self.wall_last = float(walls[-1])
        b = hist_index(walls)
        self.wall_hist += np.bincount(b, minlength=NBUCKETS)
        qk = self.__dict__.get("_wqk")
        if qk is not None:
            self._wqc[0] += int((b <= qk[0]).sum())
            self._wqc[1] += int((b <= qk[1]).sum())

    def _fold_few_walls(self, ws: list[float], idx: list[int]) -> None:
        """:meth:`_fold_walls` of a few walls (none NaN; ``idx``: their buckets): the same
        figures (the sum in order, as the cumulative sum; min and max of numbers)."""
        s = self.wall_sum
        for w in ws:
            s += w
        self.wall_sum = s
        self.wall_min = min(self.wall_min, min(ws))
        self.wall_max = max(self.wall_max, max(ws))
        self.wall_last = ws[-1]
        h = self.wall_hist
        for i in idx:
            h[i] += 1
        qk = self.__dict__.get("_wqk")
        if qk is not None:
            qc = self._wqc
            for i in idx:
                qc[0] += i <= qk[0]
                qc[1] += i <= qk[1]

    def _fold_memory(self, steps_t: Sequence[int], mems_t: Sequence[Any]) -> None:
        """Peak, trend and last ``memory`` of the steps."""
        peaks = [mem.get("peak") for mem in mems_t if mem]
        if not all(peaks):  # a step without a (non-zero) peak: the full rule
            peaks = [
                mem.get("peak") or mem.get("allocated") or mem.get("rss") for mem in mems_t if mem
            ]
            peaks = [p for p in peaks if p is not None]
        if len(mems_t) == 1:  # one step (the live case): add_batch's figures, no numpy
            self.mem_trend.add(int(steps_t[0]), _mem_value(mems_t[0]), merged=True)
        else:
            self.mem_trend.add_batch(steps_t, mems_t)
        if peaks:
            p = max(peaks)
            if self.mem_peak is None or p > self.mem_peak:
                self.mem_peak = int(p)
        for mem in reversed(mems_t):
            if mem:
                self.memory = mem
                break

    def _fold_ring(
        self,
        b: int,
        steps: np.ndarray,
        walls: np.ndarray,
        samples_t: Sequence[int],
        scs_t: Sequence[Any],
    ) -> None:
        """The last ``window`` steps of the batch into the ring buffer (their region columns:
        :meth:`_flush`). Row number i of the file is always in slot i % window, whatever the
        batches were (reductions over the ring then see the same order, to the last bit)."""
        w = self.window
        if b == 1:  # the live case: the same values, without building arrays
            p = self.pos
            self.ring_wall[p] = walls[0]
            self.ring_samples[p] = samples_t[0]
            self.ring_step[p] = steps[0]
            sc = scs_t[0]
            loss = sc.get("loss") if sc else None
            self.ring_loss[p] = NAN if loss is None else loss
            self.pos = (p + 1) % w
            self.filled = min(w, self.filled + 1)
            return
        samples = np.array(samples_t, dtype=np.float64)
        k = min(b, w)
        at = (self.pos + (b - k) + np.arange(k)) % w
        self.ring_wall[at] = walls[b - k :]
        self.ring_samples[at] = samples[b - k :]
        self.ring_step[at] = steps[b - k :]
        self.ring_loss[at] = np.array(
            [sc.get("loss") if sc else None for sc in scs_t[b - k :]], dtype=np.float64
        )
        self.pos = (self.pos + b) % w
        self.filled = min(w, self.filled + k)
