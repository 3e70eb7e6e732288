"""Many ranks at once: their pending region values folded, and their region figures read
out, in a few numpy calls on (ranks × columns) arrays instead of one pass per rank.

At 64 ranks a full snapshot of ``tui watch`` made the same ~30 small numpy calls once per
rank, for the fold of the steps that came since the last one and again for the read-outs.
Here the ranks' arrays are rows of shared arrays (:class:`RankRows`: each rank's array
becomes a view of its row, so the per-rank code keeps working on the same memory, and a rank
that replaced an array is stacked again the next time). Each figure is the one the per-rank
code makes, element by element, to the bit: the fold adds the pending steps one after another
(round ``k`` takes every rank's ``k``-th pending step), as the per-rank fold does; ranks of
another column count are another group. Column layouts may differ between ranks (each rank
maps names to columns in the order it saw them): the fold and these read-outs work on each
rank's own columns, and the merge across ranks (:mod:`tui.model.build`) gathers by name.
The other read-outs side by side (recent rows, step walls, the chart's means) are
:mod:`tui.model.crossread`'s.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tui.model.histogram import NBUCKETS as HBUCKETS
from tui.model.histogram import col_percentiles, hist_index
from tui.model.phases import top_columns
from tui.model.ranks import RankAgg
from tui.model.readout import _QS, _QUANTILE_STEPS, _fields, _region_arrays, _with_absent
from tui.model.series import MAX_WIDTH
from tui.model.series import NBUCKETS as SBUCKETS
from tui.model.snapshot import NAN, Stats

MAX_ROUNDS = 16  # pending steps of one rank folded in rounds, at most (more: its own fold)

_RANK_ARRAYS = ("n", "sum", "calls", "min", "max", "last", "last_calls", "last_seen", "hist")
_RANK_ARRAYS += ("ring", "ring_calls")
_SERIES_ARRAYS = ("sum", "cnt", "wall_sum", "wall_cnt")


def _vars(a: Any) -> dict[str, Any]:
    return a.__dict__  # type: ignore[no-any-return]


def _series(a: RankAgg) -> Any:
    return a.__dict__["series"]


class RankRows:
    """Arrays of several ranks as the rows of one array each (kept while no rank replaces
    its array; then stacked again)."""

    def __init__(self) -> None:
        self._bases: dict[tuple[str, int], tuple[list[np.ndarray], np.ndarray]] = {}
        # the chart's means of a group of ranks: (their series arrays, g × buckets × planes)
        self.planes: dict[tuple[Any, ...], tuple[list[np.ndarray], np.ndarray]] = {}

    def get(
        self, aggs: Sequence[RankAgg], name: str, owner: Callable[[RankAgg], Any] = _vars
    ) -> np.ndarray:
        """(len(aggs), ...) array whose row i is ``aggs[i]``'s array ``name`` (of the object
        ``owner`` gives: the rank's ``__dict__`` or its series). The ranks' arrays become
        its rows' views: changes in place through either are the other's."""
        get = owner is _vars
        objs = [owner(a) for a in aggs]
        views = [o[name] for o in objs] if get else [getattr(o, name) for o in objs]
        key = (name if get else "series." + name, aggs[0].cap)  # ranks are grouped by cap
        c = self._bases.get(key)
        if c is not None and len(c[0]) == len(views) and all(map(operator.is_, c[0], views)):
            return c[1]
        base = np.stack(views)
        rows = list(base)
        for o, v in zip(objs, rows, strict=True):
            if get:
                o[name] = v
            else:
                setattr(o, name, v)
        self._bases[key] = (rows, base)
        return base

    def keep(self, caps: set[int]) -> None:
        """Forget the stacks of column counts no rank has now (bounded memory: a run whose
        ranks grew their columns would keep each size's copy)."""
        for key in [k for k in self._bases if k[1] not in caps]:
            del self._bases[key]
        for key in [k for k in self.planes if k[2] not in caps]:
            del self.planes[key]


def _take(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Rows ``s`` of ``x``: ``x`` itself (no copy) when ``s`` is every row in order."""
    if len(s) == len(x) and s[0] == 0 and s[-1] == len(s) - 1:
        return x  # s is sorted and distinct
    return x[s]


def groups_by_cap(aggs: Sequence[RankAgg]) -> dict[int, list[RankAgg]]:
    """Ranks by their column count (the rows of one shared array), in the order given."""
    out: dict[int, list[RankAgg]] = {}
    for a in aggs:
        out.setdefault(a.cap, []).append(a)
    return out


# --------------------------------------------------------------------------- the fold
def _own_fold(a: RankAgg) -> bool:
    """The rank's pending steps are folded by its own code: many of them, or a step that
    needs the chart's buckets merged."""
    p = a.__dict__["_pending"]
    n = top = 0
    for x in p:
        st = x[3]
        n += len(st)
        top = max(top, int(st[0]) if len(st) == 1 else int(st.max()))
    if n > MAX_ROUNDS:
        return True
    s = _series(a)
    return (top - 1) // s.width >= SBUCKETS and s.width < MAX_WIDTH


def flush(rows: RankRows, aggs: Sequence[RankAgg]) -> None:
    """Fold every rank's pending region values (``RankAgg._flush``'s figures, to the bit)."""
    rows.keep({a.cap for a in aggs})
    todo = []
    for a in aggs:
        if a.__dict__["_pending"]:
            if _own_fold(a):
                a._flush()
            else:
                todo.append(a)
    if len(todo) < 2:
        for a in todo:
            a._flush()
        return
    for grp in groups_by_cap(aggs).values():
        slots = {id(a): i for i, a in enumerate(grp)}
        mine = [a for a in todo if id(a) in slots]
        if mine:
            _flush_group(rows, grp, [slots[id(a)] for a in mine], mine)


def _pending_rows(mine: list[RankAgg], slots: list[int], w: int) -> tuple[np.ndarray, ...]:
    """Every pending step of the ranks as rows: (slot, round, ring position, step, wall,
    ms, calls), the rank's steps in file order."""
    ms, cs, st, wl, meta = [], [], [], [], []
    for a, s in zip(mine, slots, strict=True):
        p = a.__dict__["_pending"]
        a.__dict__["_pending"] = []
        k = 0
        for pos, m, c, steps, walls in p:
            b = len(steps)
            ms.append(m)
            cs.append(c)
            st.append(steps)
            wl.append(walls)
            meta.append((s, k, pos, b))
            k += b
    lens = np.array([x[3] for x in meta])
    first = np.repeat(np.cumsum(lens) - lens, lens)
    within = np.arange(int(lens.sum())) - first
    slot = np.repeat(np.array([x[0] for x in meta]), lens)
    rnd = np.repeat(np.array([x[1] for x in meta]), lens) + within
    ringpos = (np.repeat(np.array([x[2] for x in meta]), lens) + within) % w
    return (
        slot,
        rnd,
        ringpos,
        np.concatenate(st),
        np.concatenate(wl),
        np.concatenate(ms),
        np.concatenate(cs),
    )


def _flush_group(rows: RankRows, grp: list[RankAgg], slots: list[int], mine: list[RankAgg]) -> None:
    """:func:`flush` of ranks of one column count (``grp``: all of them, the rows of the
    shared arrays; ``mine`` at ``slots``: those with pending steps)."""
    R = {name: rows.get(grp, name) for name in _RANK_ARRAYS}
    S = {name: rows.get(grp, name, _series) for name in _SERIES_ARRAYS}
    withq = [a for a in grp if "_qk" in a.__dict__]
    qslot = np.full(len(grp), -1)
    qk = qc = None
    if withq:
        qk, qc = rows.get(withq, "_qk"), rows.get(withq, "_qc")
        ids = {id(a): j for j, a in enumerate(withq)}
        qslot = np.array([ids.get(id(a), -1) for a in grp])
    widths = np.array([_series(a).width for a in grp], dtype=np.int64)
    slot, rnd, ringpos, steps, walls, m, c = _pending_rows(mine, slots, grp[0].window)
    bucket = np.clip((steps - 1) // widths[slot], 0, SBUCKETS - 1)
    order = np.argsort(rnd, kind="stable")
    cuts = np.searchsorted(rnd[order], np.arange(int(rnd.max()) + 2))
    for k in range(len(cuts) - 1):
        sel = order[cuts[k] : cuts[k + 1]]
        if len(sel):
            si, bi, ms, cs = slot[sel], bucket[sel], m[sel], c[sel]
            # every rank a step (the usual round; slots in order): slices, not gathers
            ix: Any = slice(None) if len(si) == len(grp) else si
            present = ms == ms
            _fold_round(R, qk, qc, qslot, si, ix, ms, cs, steps[sel], present)
            S["sum"][si, bi] += np.where(present, ms, 0.0)
            S["cnt"][si, bi] += present
            S["wall_sum"][si, bi] += walls[sel]
            S["wall_cnt"][si, bi] += 1
            R["ring"][si, ringpos[sel]] = ms
            R["ring_calls"][si, ringpos[sel]] = cs
    lo = np.full(len(grp), SBUCKETS)
    hi = np.full(len(grp), -1)
    np.minimum.at(lo, slot, bucket)
    np.maximum.at(hi, slot, bucket)
    for s in slots:
        _series(grp[s])._touch(int(lo[s]), int(hi[s]))


def _fold_round(
    R: dict[str, np.ndarray],
    qk: np.ndarray | None,
    qc: np.ndarray | None,
    qslot: np.ndarray,
    si: np.ndarray,
    ix: Any,
    m: np.ndarray,
    c: np.ndarray,
    steps: np.ndarray,
    present: np.ndarray,
) -> None:
    """One step of each rank at ``si`` (distinct and increasing; ``ix``: the same rows as an
    index, a slice when they are all): ``RankAgg._fold_region_row``, element by element."""
    R["n"][ix] += present
    R["sum"][ix] = R["sum"][ix] + np.where(present, m, 0.0)
    ci = c.astype(np.int64)
    R["calls"][ix] += ci
    R["min"][ix] = np.fmin(R["min"][ix], m)
    R["max"][ix] = np.fmax(R["max"][ix], m)
    R["last"][ix] = np.where(present, m, R["last"][ix])
    R["last_calls"][ix] = np.where(present, ci, R["last_calls"][ix])
    R["last_seen"][ix] = np.where(present, steps[:, None], R["last_seen"][ix])
    rr, cc = np.nonzero(present)
    if len(rr):
        b = hist_index(m[rr, cc])
        R["hist"][si[rr], cc, b] += 1
        if qk is not None and qc is not None:
            qs = qslot[si[rr]]
            ok = qs >= 0
            if ok.any():
                qs, qcol, qb = qs[ok], cc[ok], b[ok]
                for j in range(2):
                    qc[qs, j, qcol] += qb <= qk[qs, j, qcol]


# --------------------------------------------------------------------------- read-outs
def _quantile_idx(
    hist: np.ndarray, s: np.ndarray, n: np.ndarray, qk: np.ndarray, qc: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``RankReadout._quantile_idx`` of the ranks at rows ``s`` of ``hist`` (ranks × cap ×
    buckets) side by side (n: g × cap; qk, qc: g × 2 × cap, moved in place): the buckets
    (g × 2 × cap) and which ranks did not settle in the steps allowed (to count again)."""
    t = np.maximum(1.0, np.ceil(_QS[None] * n[:, None, :]))  # g × 2 × cap
    live = (n > 0)[:, None, :]
    g, _, cap = qk.shape
    gi = s[:, None, None]
    ci = np.arange(cap)[None, None, :]
    for _ in range(_QUANTILE_STEPS):
        hk = hist[gi, ci, qk]
        up = (qc < t) & live
        down = (qc - hk >= t) & (qk > 0)
        if not (up.any() or down.any()):
            return qk.copy(), np.zeros(g, dtype=bool)
        qc -= np.where(down, hk, 0)
        qk -= down
        nxt = np.minimum(qk + up, HBUCKETS - 1)
        qc += np.where(up, hist[gi, ci, nxt], 0)
        qk[...] = np.where(up, nxt, qk)
    hk = hist[gi, ci, qk]
    moving = (((qc < t) & live) | ((qc - hk >= t) & (qk > 0))).any(axis=(1, 2))
    return qk.copy(), moving


def _quantiles_of(rows: RankRows, grp: list[RankAgg], sel: list[int]) -> np.ndarray:
    """The p50 and p95 buckets (len(sel) × 2 × cap) of the ranks ``grp[sel]`` (all with
    ``_qk``), their running buckets moved as :meth:`RankReadout._quantile_idx` moves them."""
    hist, n = rows.get(grp, "hist"), rows.get(grp, "n")
    withq = [a for a in grp if "_qk" in a.__dict__]  # as the fold takes them: one stack
    qk, qc = rows.get(withq, "_qk"), rows.get(withq, "_qc")
    at = {id(a): j for j, a in enumerate(withq)}
    s = np.asarray(sel)
    q = np.array([at[id(grp[i])] for i in sel])
    k, c = qk[q], qc[q]
    got, moving = _quantile_idx(hist, s, _take(n, s), k, c)
    qk[q], qc[q] = k, c
    for i in np.flatnonzero(moving).tolist():  # moved far: counted again
        a = grp[sel[i]]
        got[i] = 0
        got[i, :, : len(a.names)] = a._quantile_reset(len(a.names), _t_of(a))
    return got


def _t_of(a: RankAgg) -> np.ndarray:
    return np.maximum(1.0, np.ceil(_QS * a.n[: len(a.names)]))


def read_fields(rows: RankRows, aggs: Sequence[RankAgg]) -> None:
    """Every rank's ``fields()`` read-out whose memo is gone, made side by side (the same
    figures): at 64 ranks the per-rank passes were a full snapshot's largest part."""
    for grp in groups_by_cap(aggs).values():
        want = []
        for i, a in enumerate(grp):
            m = a.__dict__.get("_memo")
            if len(a.names) and (m is None or "fields" not in m):
                if "_qk" not in a.__dict__:
                    a._quantile_idx(len(a.names))  # its first read: the buckets counted
                want.append(i)
        if len(want) < 2:
            continue
        qidx = _quantiles_of(rows, grp, want)
        by_filled: dict[int, list[int]] = {}
        for j, i in enumerate(want):
            by_filled.setdefault(grp[i].filled, []).append(j)
        for js in by_filled.values():
            _fields_of(rows, grp, [want[j] for j in js], qidx[js])


def _fields_of(rows: RankRows, grp: list[RankAgg], sel: list[int], qidx: np.ndarray) -> None:
    """:func:`read_fields` of ranks whose windows hold as many steps."""
    s = np.asarray(sel)
    g, cap, f = len(sel), grp[0].cap, grp[sel[0]].filled
    R = {name: rows.get(grp, name) for name in _RANK_ARRAYS}
    laststep = np.array([grp[i].last_step for i in sel], dtype=np.int64)
    last = np.where(_take(R["last_seen"], s) == laststep[:, None], _take(R["last"], s), 0.0)

    def flat(x: np.ndarray) -> np.ndarray:  # g × f × cap -> f × (g · cap)
        return np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(x.shape[1], g * cap)

    inputs = (
        flat(qidx),
        _take(R["n"], s).reshape(-1),
        _take(R["sum"], s).reshape(-1),
        _take(R["min"], s).reshape(-1),
        _take(R["max"], s).reshape(-1),
        _take(R["calls"], s).reshape(-1),
        last.reshape(-1),
        flat(_take(R["ring"], s)[:, :f]),
        flat(_take(R["ring_calls"], s)[:, :f]),
    )
    per = [(grp[i].wall_last, grp[i].wall_sum, grp[i]._wwall()) for i in sel]
    scal = [np.repeat(np.array(x, dtype=np.float64), cap) for x in zip(*per, strict=True)]
    fm = _fields(_region_arrays(*inputs), *scal)
    for j, i in enumerate(sel):
        a = grp[i]
        k = len(a.names)
        a.__dict__.setdefault("_memo", {})["fields"] = _with_absent(fm[:, j * cap : j * cap + k])


def _top(a: RankAgg) -> np.ndarray:
    """The rank's top-level region columns (as ``unaccounted`` takes them)."""
    return top_columns(a)


def read_unaccounted(rows: RankRows, aggs: Sequence[RankAgg]) -> None:
    """Every rank's ``unaccounted()`` read-out whose memo is gone, ranks of one layout side
    by side (the same figures)."""
    for grp in groups_by_cap(aggs).values():
        by: dict[tuple[int, bytes], list[int]] = {}
        tops: dict[tuple[int, bytes], np.ndarray] = {}
        for i, a in enumerate(grp):
            m = a.__dict__.get("_memo")
            if a.steps and a.filled and (m is None or "unaccounted" not in m):
                top = _top(a)
                key = (a.filled, top.tobytes())
                by.setdefault(key, []).append(i)
                tops[key] = top
        for key, sel in by.items():
            if len(sel) >= 2 and len(tops[key]):
                _unaccounted_of(rows, grp, sel, tops[key])


def _nansum_last(x: np.ndarray) -> np.ndarray:
    """``np.nansum(a, axis=1)`` of each rank's (rows, columns) block ``a`` of ``x``, as the
    rank's own code makes ``a`` (a fancy index of its columns: column-major), stacked. That
    sum adds the columns one after another; a single row is summed as a 1-D array (in
    pairs): the same bits here."""
    y = np.where(x == x, x, 0.0)
    if x.shape[1] == 1:
        return np.array(_rowsums(y[:, 0, :]))[:, None]
    return np.ascontiguousarray(np.moveaxis(y, 2, 0)).sum(axis=0)  # type: ignore[no-any-return]


def _rowsums(x: np.ndarray) -> list[float]:
    """Each row's sum as the rank's own code sums its 1-D array (pairwise; a reduction along
    the last axis of a 2-D array adds in another order)."""
    return [float(r.sum()) for r in x]


def _unaccounted_of(rows: RankRows, grp: list[RankAgg], sel: list[int], top: np.ndarray) -> None:
    """:func:`read_unaccounted` of ranks of one window fill and one top-level layout."""
    s = np.asarray(sel)
    f = grp[sel[0]].filled
    ring = _take(rows.get(grp, "ring"), s)[:, :f][:, :, top]  # g × f × tops
    rwall = _take(rows.get(grp, "ring_wall"), s)[:, :f]
    covered = _rowsums(_take(rows.get(grp, "sum"), s)[:, top])
    cov = _nansum_last(ring)
    vals = np.sort(np.maximum(0.0, rwall - cov), axis=1)
    wsum = _rowsums(rwall)
    cnt = np.full(len(sel), f)
    p50, p95 = (x.tolist() for x in col_percentiles(np.ascontiguousarray(vals.T), cnt, (0.5, 0.95)))
    vsum = _rowsums(vals)
    lo, hi = vals[:, 0].tolist(), vals[:, -1].tolist()
    laststep = np.array([grp[i].last_step for i in sel])
    seen = _take(rows.get(grp, "last_seen"), s)[:, top] == laststep[:, None]
    last_top = _take(rows.get(grp, "last"), s)[:, top]
    for j, i in enumerate(sel):
        a = grp[i]
        ls = float(last_top[j][seen[j]].sum())
        last = max(0.0, a.wall_last - ls)
        last_share = _share(last, a.wall_last)
        whole_ms = max(0.0, a.wall_sum - covered[j])
        whole = Stats(
            last,
            whole_ms / a.steps,
            lo[j],
            hi[j],
            NAN,
            NAN,
            a.steps,
            0,
            _share(whole_ms, a.wall_sum),
            last_share,
        )
        window = Stats(
            last,
            vsum[j] / f,
            lo[j],
            hi[j],
            p50[j],
            p95[j],
            f,
            0,
            _share(vsum[j], wsum[j]),
            last_share,
        )
        a.__dict__.setdefault("_memo", {})["unaccounted"] = (whole, window)


def _share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else NAN
