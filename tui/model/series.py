"""Each region's time over the whole run, downsampled: bounded memory, constant work per step.

A rank keeps :data:`NBUCKETS` buckets of ``width`` consecutive steps each (step ``s`` falls in
bucket ``(s - 1) // width``): per region column the sum of its ms and the steps it ran in, and
the same for the step wall time. When a step falls past the last bucket, neighbouring buckets
merge in pairs and ``width`` doubles, so a run of any length fits and each bucket stays the
mean over the steps it holds. The chart of the selected region (:mod:`tui.view.widgets.chart`)
draws them: per rank, or the minimum, median and maximum across ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

NBUCKETS = 128  # buckets per rank: the chart's resolution over the run
RECENT = 48  # steps of each rank's heat strip (at most the aggregate's window)
MAX_WIDTH = 1 << 40  # steps per bucket at most (a step number is below 2**63)


class RegionSeries:
    """One rank's downsampled series of every region column and of the step wall time."""

    __slots__ = ("_dirty", "_planes", "cnt", "sum", "wall_cnt", "wall_sum", "width")

    def __init__(self, cap: int = 0) -> None:
        self.width = 1
        self.sum = np.zeros((NBUCKETS, cap))
        self.cnt = np.zeros((NBUCKETS, cap), dtype=np.int32)
        self.wall_sum = np.zeros(NBUCKETS)
        self.wall_cnt = np.zeros(NBUCKETS, dtype=np.int32)
        # the means last read by :meth:`planes` (its gather, the float32 means) and the
        # buckets changed since (lowest, highest): a full snapshot redoes only those
        self._planes: tuple[bytes, np.ndarray] | None = None
        self._dirty = (NBUCKETS, -1)

    def _touch(self, lo: int, hi: int) -> None:
        d = self._dirty
        self._dirty = (min(d[0], lo), max(d[1], hi))

    def _means_rows(self, lo: int, hi: int, gather: np.ndarray) -> np.ndarray:
        """Bucket means of rows ``lo`` to ``hi`` of the planes ``gather`` picks among
        [wall | region columns | an empty column], float32 (NaN: no step), each element as
        :func:`series_set` divides it."""
        s = np.concatenate([self.wall_sum[lo:hi, None], self.sum[lo:hi]], axis=1)
        c = np.concatenate([self.wall_cnt[lo:hi, None], self.cnt[lo:hi]], axis=1)
        ncols = s.shape[1]
        have = gather < ncols
        pick = gather[have]
        sm = s[:, pick].astype(np.float64)
        cn = c[:, pick].astype(np.float64)
        out = np.full((hi - lo, len(gather)), np.nan, dtype=np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, have] = np.where(cn > 0, sm / np.maximum(cn, 1), np.nan)
        return out

    def planes(self, gather: np.ndarray) -> np.ndarray:
        """:meth:`_means_rows` of every bucket, kept between reads: only the buckets
        steps went into since the last read are divided again (at 64 ranks the chart's
        series of a full snapshot were its second largest part). Read-only."""
        key = gather.tobytes()
        cached = self._planes
        lo, hi = self._dirty
        if cached is None or cached[0] != key:
            m = self._means_rows(0, NBUCKETS, gather)
            self._planes = (key, m)
        else:
            m = cached[1]
            if hi >= lo:
                m[lo : hi + 1] = self._means_rows(lo, hi + 1, gather)
        self._dirty = (NBUCKETS, -1)
        return m

    def grow(self, cap: int) -> None:
        """Room for ``cap`` region columns (new ones empty)."""
        old = self.sum.shape[1]
        if cap <= old:
            return
        s = np.zeros((NBUCKETS, cap))
        c = np.zeros((NBUCKETS, cap), dtype=np.int32)
        s[:, :old] = self.sum
        c[:, :old] = self.cnt
        self.sum, self.cnt = s, c
        self._planes = None

    def _halve(self) -> None:
        """Merge neighbouring buckets in pairs: twice as many steps per bucket."""
        h = NBUCKETS // 2
        for name in ("sum", "cnt", "wall_sum", "wall_cnt"):
            a = getattr(self, name)
            merged = np.zeros_like(a)
            merged[:h] = a[0::2] + a[1::2]
            setattr(self, name, merged)
        self.width *= 2
        self._planes = None

    def add(self, steps: np.ndarray, m: np.ndarray, walls: np.ndarray) -> None:
        """A batch of steps (``m``: rows × columns ms, NaN where a region did not run)."""
        if not len(steps):
            return
        top = int(steps.max()) - 1
        while top // self.width >= NBUCKETS and self.width < MAX_WIDTH:
            # the steps before the first one past the buckets are added before they are
            # halved, as one step at a time would (the same sums whatever the batches)
            k = int(np.argmax(steps - 1 >= NBUCKETS * self.width))
            if k > 0:
                self.add(steps[:k], m[:k], walls[:k])
                steps, m, walls = steps[k:], m[k:], walls[k:]
            self._halve()
        if len(steps) == 1:  # the live case: one step at a time, the fewest numpy calls
            i = min(max(0, (int(steps[0]) - 1) // self.width), NBUCKETS - 1)
            self._touch(i, i)
            row = m[0]
            present = row == row
            self.sum[i] += np.where(present, row, 0.0)
            self.cnt[i] += present
            self.wall_sum[i] += walls[0]
            self.wall_cnt[i] += 1
            return
        idx = np.clip((steps - 1) // self.width, 0, NBUCKETS - 1)
        self._touch(int(idx.min()), int(idx.max()))
        present = ~np.isnan(m)
        vals = np.where(present, m, 0.0)
        if bool((idx[:-1] <= idx[1:]).all()):  # in order: one pass per bucket
            starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
            at = idx[starts]
            self._add_in_order(at, starts, vals, walls)
            self.cnt[at] += np.add.reduceat(present, starts, axis=0, dtype=np.int32)
            self.wall_cnt[at] += np.diff(np.r_[starts, len(idx)]).astype(np.int32)
        else:  # steps out of order (a resumed run): scattered adds
            np.add.at(self.sum, idx, vals)
            np.add.at(self.cnt, idx, present.astype(np.int32))
            np.add.at(self.wall_sum, idx, walls)
            np.add.at(self.wall_cnt, idx, 1)

    def _add_in_order(
        self, at: np.ndarray, starts: np.ndarray, vals: np.ndarray, walls: np.ndarray
    ) -> None:
        """The sums of an in-order batch's buckets (``at``, each from ``starts``), the steps
        added one after another to what the bucket holds: the same bits as one step at a
        time (``np.add.reduceat`` is not sequential; a reduction along a middle axis is). The
        buckets' steps go into a zero-padded (buckets, 1 + steps, columns) block (adding 0.0
        changes no sum)."""
        n = len(walls)
        lens = np.diff(np.r_[starts, n])
        size = int(lens.max()) + 1
        if len(at) * size > 4 * n + 1024:  # very uneven buckets: one at a time
            for i, a, ln in zip(at.tolist(), starts.tolist(), lens.tolist(), strict=True):
                self._add_in_order(
                    np.array([i]), np.array([0]), vals[a : a + ln], walls[a : a + ln]
                )
            return
        seg = np.repeat(np.arange(len(at)), lens)
        pos = 1 + np.arange(n) - starts[seg]
        block = np.zeros((len(at), size, vals.shape[1]))
        block[:, 0] = self.sum[at]
        block[seg, pos] = vals
        self.sum[at] = np.add.reduce(block, axis=1)
        wblock = np.zeros((len(at), size, 1))
        wblock[:, 0, 0] = self.wall_sum[at]
        wblock[seg, pos, 0] = walls
        self.wall_sum[at] = np.add.reduce(wblock, axis=1)[:, 0]

    def means_at(self, width: int) -> np.ndarray:
        """Bucket means (NaN: no step) of the step wall time (column 0) and of every region
        column (1 + column), merged to ``width`` steps per bucket (a multiple of this
        series' width): NBUCKETS × (1 + columns)."""
        s = np.concatenate([self.wall_sum[:, None], self.sum], axis=1)
        c = np.concatenate([self.wall_cnt[:, None], self.cnt], axis=1)
        f = width // self.width
        if f > 1:
            n = NBUCKETS // f
            s = np.vstack([s.reshape(n, f, -1).sum(axis=1), np.zeros((NBUCKETS - n, s.shape[1]))])
            c = np.vstack([c.reshape(n, f, -1).sum(axis=1), np.zeros((NBUCKETS - n, c.shape[1]))])
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(c > 0, s / np.maximum(c, 1), np.nan)


@dataclass(frozen=True, slots=True)
class SeriesSet:
    """What the chart draws, taken when a full snapshot is made: for the step wall time and
    each region, one row of bucket means per rank (NaN where it did not run), all on one
    width. ``ranks`` orders the rows."""

    width: int  # steps per bucket
    used: int  # buckets holding steps (the chart's x extent)
    ranks: tuple[int, ...]
    names: dict[str, int] = field(default_factory=dict, compare=False)  # region -> plane
    means: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 1)), compare=False)
    # the ranks' last RECENT steps, aligned by step number (column 0 is step
    # ``recent_first``; NaN where a rank has no such step or the region did not run): ranks ×
    # steps × planes, plane 0 the compute (step wall minus the waits the straggler verdict
    # takes out, tui.model.rankstats.WAIT_REGIONS), then the regions as in ``names``. The
    # ranks panel's heat strips.
    recent: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 1)), compare=False)
    recent_first: int = 0

    def recent_of(self, name: str | None) -> np.ndarray | None:
        """Ranks × recent steps of region ``name`` (None: the compute)."""
        j = 0 if name is None else self.names.get(name)
        if j is None or not self.recent.size:
            return None
        return self.recent[:, :, j]

    def of(self, name: str | None) -> np.ndarray | None:
        """The ranks × buckets means of region ``name`` (None: the step wall time)."""
        j = 0 if name is None else self.names.get(name)
        if j is None:
            return None
        return self.means[:, :, j]

    def bands(self, name: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Minimum, median and maximum across ranks per bucket (NaN where no rank ran it)."""
        m = self.of(name)
        if m is None or not m.size:
            return None
        ok = ~np.isnan(m)
        cols = ok.any(axis=0)
        lo = np.full(m.shape[1], np.nan)
        md, hi = lo.copy(), lo.copy()
        if cols.any():
            sub = m[:, cols].astype(np.float64)
            lo[cols] = np.nanmin(sub, axis=0)
            md[cols] = np.nanmedian(sub, axis=0)
            hi[cols] = np.nanmax(sub, axis=0)
        return lo, md, hi

    def first_step(self, bucket: int) -> int:
        """The first step of bucket ``bucket``."""
        return bucket * self.width + 1


def _gather(cmap: dict[str, int], names: Sequence[str], ncols: int) -> np.ndarray:
    """For each of ``names``, its column in a rank (``cmap``), or ``ncols`` (a NaN column
    appended) when the rank has none."""
    get = cmap.get
    return np.fromiter((get(n, ncols) for n in names), np.int64, count=len(names))


def _groups(keys: Sequence[object]) -> dict[object, list[int]]:
    """Indices by key: ranks of one layout are handled in one numpy pass (at 512 ranks the
    per-rank calls would cost more than the arithmetic)."""
    out: dict[object, list[int]] = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return out


def recent_planes(
    rings: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    cols: Sequence[dict[str, int]],
    names: Sequence[str],
    waits: Sequence[str],
) -> tuple[np.ndarray, int]:
    """The ranks' last :data:`RECENT` steps aligned by step number (see
    :attr:`SeriesSet.recent`): ``rings`` are each rank's (steps, walls, ms rows × columns)
    of its window, oldest first, ``waits`` the regions subtracted from the wall for the
    compute."""
    last = max((int(st[-1]) for st, _, _ in rings if len(st)), default=0)
    first = last - RECENT + 1  # the newest step in the last column (columns before step 1: NaN)
    out = np.full((len(rings), RECENT, 1 + len(names)), np.nan, dtype=np.float32)
    keys = [
        (len(st), ring.shape[1], tuple(cmap))
        for (st, _, ring), cmap in zip(rings, cols, strict=True)
    ]
    for (k, ncols, _), idx in _groups(keys).items():
        if k == 0:
            continue
        cmap = cols[idx[0]]
        st = np.stack([rings[i][0] for i in idx])  # g × k
        walls = np.stack([rings[i][1] for i in idx])
        ring = np.stack([rings[i][2] for i in idx])  # g × k × columns
        ring = np.concatenate([ring, np.full((len(idx), k, 1), np.nan)], axis=2)
        compute = walls.copy()
        for w in waits:
            c = cmap.get(w)
            if c is not None:
                compute -= np.nan_to_num(ring[:, :, c])
        keep = (st >= first) & (st <= last)
        g, j = np.nonzero(keep)
        rows, at = np.asarray(idx)[g], st[g, j] - first
        out[rows, at, 0] = compute[g, j]
        out[rows, at, 1:] = ring[g, j][:, _gather(cmap, names, ncols)]
    return out, first


def series_set(
    ranks: Sequence[int],
    series: Sequence[RegionSeries],
    cols: Sequence[dict[str, int]],
    names: Sequence[str],
    rings: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]] = (),
    waits: Sequence[str] = (),
    planes_of: Callable[[list[int], np.ndarray], np.ndarray] | None = None,
) -> SeriesSet:
    """Every rank's series of ``names`` and of the step wall time, on the widest rank's width
    (float32: a chart's precision), and (given each rank's ``rings``) its recent steps.
    ``planes_of(ranks, gather)``: the ranks' :meth:`RegionSeries.planes` (of one layout, at
    the widest width) stacked, made side by side (:mod:`tui.model.crossrank`)."""
    width = max((s.width for s in series), default=1)
    planes = {n: j + 1 for j, n in enumerate(names)}
    out = np.full((len(series), NBUCKETS, 1 + len(names)), np.nan, dtype=np.float32)
    keys = [(s.width, s.sum.shape[1], tuple(cmap)) for s, cmap in zip(series, cols, strict=True)]
    for (w, ncols, _), idx in _groups(keys).items():
        # the planes wanted, as columns of [wall | regions | an empty column]
        gather = np.concatenate([[0], 1 + _gather(cols[idx[0]], names, ncols)])
        ss = [series[i] for i in idx]
        if w == width:  # the usual case: each rank's means as it keeps them
            if planes_of is not None and len(idx) > 1:
                out[idx] = planes_of(idx, gather)
            else:
                out[idx] = np.stack([s.planes(gather) for s in ss])
            continue
        have = gather <= ncols
        g, pick = len(idx), gather[have]
        # the group's ranks stacked: [wall | regions] of each, then the planes picked
        sm = np.concatenate(
            [np.stack([s.wall_sum for s in ss])[:, :, None], np.stack([s.sum for s in ss])], axis=2
        )[:, :, pick].astype(np.float64)
        cn = np.concatenate(
            [np.stack([s.wall_cnt for s in ss])[:, :, None], np.stack([s.cnt for s in ss])], axis=2
        )[:, :, pick].astype(np.float64)
        f = width // w
        if f > 1:  # merged to the common width
            n = NBUCKETS // f
            pad = np.zeros((g, NBUCKETS - n, len(pick)))
            sm = np.concatenate([sm.reshape(g, n, f, -1).sum(axis=2), pad], axis=1)
            cn = np.concatenate([cn.reshape(g, n, f, -1).sum(axis=2), pad], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.where(cn > 0, sm / np.maximum(cn, 1), np.nan)
        block = np.full((g, NBUCKETS, len(gather)), np.nan, dtype=np.float32)
        block[:, :, have] = m
        out[idx] = block
    walls = out[:, :, 0]
    filled = np.flatnonzero(~np.isnan(walls).all(axis=0)) if len(series) else np.zeros(0, int)
    used = int(filled[-1]) + 1 if len(filled) else 0
    recent, first = recent_planes(rings, cols, names, waits) if rings else (out[:, :0], 0)
    return SeriesSet(width, used, tuple(ranks), planes, out[:, :used], recent, first)
