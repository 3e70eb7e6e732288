"""Many ranks at once, the rest of a snapshot's read-outs (:mod:`tui.model.crossrank` holds
the shared rows, the fold and the region figures): each rank's recent rows for the straggler
verdict, its step wall figures, and the chart's bucket means, made side by side for ranks
alike, the same figures to the bit as each rank's own read-out.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tui.model.crossrank import (
    _SERIES_ARRAYS,
    RankRows,
    _nansum_last,
    _rowsums,
    _series,
    _take,
    groups_by_cap,
)
from tui.model.histogram import BUCKET_VALUES
from tui.model.histogram import NBUCKETS as HBUCKETS
from tui.model.phases import BUFFERS_REGION, top_columns
from tui.model.ranks import RankAgg
from tui.model.rankstats import LAUNCH_REGION
from tui.model.series import NBUCKETS as SBUCKETS
from tui.model.series import RegionSeries
from tui.model.snapshot import NAN, Stats


# --------------------------------------------------------------------------- recent work
def _recent_key(a: RankAgg, m: int) -> tuple[Any, ...]:
    """The columns :meth:`RankReadout._recent_rows` reads (-1: none): ranks alike are made
    together, whatever their layouts."""
    ph, kids = a._phases()
    get = a.cols.get
    data = ph["data"]
    nested = None if data is None or data.endswith("/wait") else get(data + "/h2d")
    cols = (ph["exposed"], LAUNCH_REGION, BUFFERS_REGION, ph["sync"], data, ph["h2d"])
    top = top_columns(a).tobytes()  # the untimed column: wall minus the top-level regions
    return (m, *(-1 if n is None else get(n, -1) for n in cols), nested, kids.tobytes(), top)


def read_recent(rows: RankRows, aggs: Sequence[RankAgg]) -> None:
    """Every rank's ``recent_work()`` made for the steps it folded since the last read
    (``RankReadout.recent_work``'s rows, to the bit), ranks alike side by side."""
    for grp in groups_by_cap(aggs).values():
        by: dict[tuple[Any, ...], list[tuple[int, np.ndarray]]] = {}
        for i, a in enumerate(grp):
            c = a.__dict__.get("_recent")
            if c is None or c[0] != len(a.names) or len(c[2]) < 2:
                continue  # a first read (or of one step): the rank's own, the whole window
            new = a.steps - c[1]
            o = a._order()
            if new == 0 or new >= len(o):
                continue
            m = max(new, 2)
            by.setdefault(_recent_key(a, m), []).append((i, o[len(o) - m :]))
        for key, sel in by.items():
            if len(sel) >= 2:
                _recent_of(rows, grp, sel, key)


def _recent_of(
    rows: RankRows, grp: list[RankAgg], sel: list[tuple[int, np.ndarray]], key: tuple[Any, ...]
) -> None:
    """:func:`read_recent` of ranks whose rows read the same columns."""
    s = np.array([i for i, _ in sel])[:, None]
    o = np.stack([x for _, x in sel])  # g × m ring rows
    ring = rows.get(grp, "ring")[s, o]  # g × m × columns
    step = rows.get(grp, "ring_step")[s, o]
    wall = rows.get(grp, "ring_wall")[s, o]
    _, exposed_c, launch_c, buffers_c, sync_c, data_c, h2d_c, nested_c, kids_b, top_b = key
    kids = np.frombuffer(kids_b, dtype=np.int64)
    top = np.frombuffer(top_b, dtype=np.int64)

    def col(c: int | None) -> np.ndarray | None:
        return None if c is None or c < 0 else np.nan_to_num(ring[:, :, c])

    nan, zero = np.full(o.shape, NAN), np.zeros(o.shape)
    exposed, launch, buffers = col(exposed_c), col(launch_c), col(buffers_c)
    launch = zero if launch is None else launch
    wait = nan if exposed is None else np.maximum(0.0, exposed - launch)
    if exposed is not None and buffers is not None:
        wait = wait + buffers
    sync = col(sync_c)
    if sync is not None:
        if len(kids):
            sync = sync - _nansum_last(ring[:, :, kids])
        sync = np.maximum(0.0, sync)
    data, h2d, nested = col(data_c), col(h2d_c), col(nested_c)
    if data is not None and nested is not None:
        data = np.maximum(0.0, data - nested)
    parts = [
        step,
        wall,
        wait,
        zero if data is None else data,
        zero if h2d is None else h2d,
        launch,
        nan if sync is None else sync,
        nan if exposed is None else exposed,
        np.maximum(0.0, wall - (_nansum_last(ring[:, :, top]) if len(top) else zero)),
    ]
    lists = [p.tolist() for p in parts]
    table = np.stack(parts, axis=-1).astype(np.float64)  # the rows as np.array makes them
    for j, (i, _) in enumerate(sel):
        a = grp[i]
        d = a.__dict__
        c = d["_recent"]
        new = a.steps - c[1]
        more = tuple(zip(*(x[j] for x in lists), strict=True))[-new:]
        rows = (c[2] + more)[-a.filled :]
        d["_recent"] = (len(a.names), a.steps, rows)
        arr = d.get("_recent_arr")
        if arr is not None and arr[0] is c[2]:
            d["_recent_arr"] = (rows, np.concatenate([arr[1], table[j, -new:]])[-a.filled :])
        else:
            d["_recent_arr"] = (rows, np.array(rows, dtype=np.float64))


def recent_tables(aggs: Sequence[RankAgg], recent: Any) -> dict[int, np.ndarray]:
    """Each rank's recent rows (``recent``: rank -> rows) as the array :func:`read_recent`
    keeps of them, where it is of these very rows."""
    out = {}
    for a in aggs:
        arr = a.__dict__.get("_recent_arr")
        if arr is not None and arr[0] is recent.get(a.rank):
            out[a.rank] = arr[1]
    return out


# --------------------------------------------------------------------------- the chart
MAX_PLANE_GROUPS = 16  # groups of ranks whose chart means are kept


def _means(bases: list[np.ndarray], s: np.ndarray, lo: int, hi: int, gather: np.ndarray) -> Any:
    """``RegionSeries._means_rows`` of the ranks at rows ``s`` of the shared series arrays
    (sum, cnt, wall_sum, wall_cnt), side by side: g × (hi - lo) × planes, element by element
    the same."""
    ssum, scnt, wsum, wcnt = bases
    sm_all = np.concatenate([_take(wsum, s)[:, lo:hi, None], _take(ssum, s)[:, lo:hi]], axis=2)
    cn_all = np.concatenate([_take(wcnt, s)[:, lo:hi, None], _take(scnt, s)[:, lo:hi]], axis=2)
    have = gather < sm_all.shape[2]
    pick = gather[have]
    sm = sm_all[:, :, pick].astype(np.float64)
    cn = cn_all[:, :, pick].astype(np.float64)
    out = np.full((len(s), hi - lo, len(gather)), np.nan, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, :, have] = np.where(cn > 0, sm / np.maximum(cn, 1), np.nan)
    return out


def planes_of(rows: RankRows, aggs: Sequence[RankAgg]) -> Callable[[list[int], np.ndarray], Any]:
    """``series_set``'s ``planes_of`` for ``aggs``: a group's means kept between full
    snapshots, only the buckets steps went into since (any rank's) made again."""
    caps = groups_by_cap(aggs)
    slot = {id(a): i for grp in caps.values() for i, a in enumerate(grp)}

    def planes(idx: list[int], gather: np.ndarray) -> Any:
        mine = [aggs[i] for i in idx]
        grp = caps[mine[0].cap]
        s = np.array([slot[id(a)] for a in mine])
        bases = [rows.get(grp, n, _series) for n in _SERIES_ARRAYS]
        series: list[RegionSeries] = [_series(a) for a in mine]
        lo = min(x._dirty[0] for x in series)
        hi = max(x._dirty[1] for x in series)
        key = (gather.tobytes(), s.tobytes(), mine[0].cap)
        c = rows.planes.get(key)
        if c is None or not all(map(operator.is_, c[0], bases)):
            m = _means(bases, s, 0, SBUCKETS, gather)
        else:
            m = c[1]
            if hi >= lo:
                m[:, lo : hi + 1] = _means(bases, s, lo, hi + 1, gather)
        if key not in rows.planes and len(rows.planes) >= MAX_PLANE_GROUPS:
            rows.planes.clear()
        rows.planes[key] = (bases, m)
        for x in series:  # read here: a rank's own cache is made again if ever read alone
            x._dirty = (SBUCKETS, -1)
            x._planes = None
        return m

    return planes


# --------------------------------------------------------------------------- step walls
def read_walls(rows: RankRows, aggs: Sequence[RankAgg]) -> None:
    """Every rank's ``wall_stats()`` read-out whose memo is gone, the windows of ranks
    equally filled sorted and read side by side (the same figures)."""
    for cap_grp in groups_by_cap(aggs).values():
        by: dict[int, list[int]] = {}
        for i, a in enumerate(cap_grp):
            m = a.__dict__.get("_memo")
            if a.steps and (m is None or "wall_stats" not in m):
                by.setdefault(a.filled, []).append(i)
        for f, sel in by.items():
            if len(sel) >= 2:
                s = np.array(sel)
                vals = rows.get(cap_grp, "ring_wall")[s, :f]
                qs = _wall_quantiles(rows.get(cap_grp, "wall_hist"), s, cap_grp)
                _walls_of([cap_grp[i] for i in sel], vals, f, qs)


def _wall_quantiles(
    hist: np.ndarray, s: np.ndarray, grp: list[RankAgg]
) -> list[tuple[float, float]]:
    """``RankReadout._wall_quantiles`` of the ranks ``grp[s]`` (``hist``: the group's wall
    histograms), their running buckets moved side by side: the same buckets and figures."""
    mine = [grp[i] for i in s.tolist()]
    have = [j for j, a in enumerate(mine) if a.__dict__.get("_wqk") is not None]
    out: dict[int, tuple[float, float]] = {}
    if have:
        h = hist[s[have]]
        g = np.arange(len(have))[:, None]
        k = np.array([mine[j].__dict__["_wqk"] for j in have], dtype=np.int64)
        c = np.array([mine[j].__dict__["_wqc"] for j in have], dtype=np.int64)
        total = np.array([mine[j].steps for j in have], dtype=np.float64)[:, None]
        t = np.maximum(1.0, np.ceil(np.array([[0.5, 0.95]]) * total))
        settled = False
        for _ in range(64):
            hk = h[g, k]
            up = c < t
            down = ~up & (k > 0) & (c - hk >= t)
            if not (up.any() or down.any()):
                settled = True
                break
            c = c + np.where(up, h[g, np.minimum(k + 1, HBUCKETS - 1)], 0) - np.where(down, hk, 0)
            k = k + up - down
        if settled:  # else moved far: counted again, rank by rank
            for j, kk, cc in zip(have, k.tolist(), c.tolist(), strict=True):
                a = mine[j]
                a.__dict__["_wqk"], a.__dict__["_wqc"] = kk, cc
                lo, hi = a.wall_min, a.wall_max
                b50, b95 = (float(min(max(BUCKET_VALUES[x], lo), hi)) for x in kk)
                out[j] = (b50, b95)
    for j, a in enumerate(mine):
        if j not in out:
            a.__dict__.pop("_wqk", None)
            out[j] = a._wall_quantiles()
    return [out[j] for j in range(len(mine))]


def _walls_of(grp: list[RankAgg], vals: np.ndarray, f: int, qs: list[tuple[float, float]]) -> None:
    """:func:`read_walls` of ranks whose windows hold ``f`` steps (``vals``: their walls;
    ``qs``: their whole-run p50 and p95)."""
    srt = np.sort(vals, axis=1)
    p50, p95 = (_lerp(srt, q).tolist() for q in (0.50, 0.95))
    sums = _rowsums(vals)
    lo, hi = srt[:, 0].tolist(), srt[:, -1].tolist()
    for j, a in enumerate(grp):
        whole = a.wall_whole(*qs[j])
        ok = hi[j] == hi[j]  # np.min and np.max: NaN if any (sorted last)
        window = Stats(
            last=a.wall_last,
            avg=sums[j] / f,
            min=lo[j] if ok else NAN,
            max=hi[j] if ok else NAN,
            p50=p50[j],
            p95=p95[j],
            steps=f,
            calls=f,
            share=1.0,
            last_share=1.0,
        )
        a.__dict__.setdefault("_memo", {})["wall_stats"] = (whole, window)


def _lerp(srt: np.ndarray, q: float) -> np.ndarray:
    """``readout._lerp_percentiles`` of each row of ``srt`` (rows sorted, all as long), in
    the same arithmetic."""
    n = srt.shape[1]
    x = q * (n - 1)
    i = min(int(x), n - 1)
    t = x - i
    a = srt[:, i]
    b = srt[:, min(i + 1, n - 1)]
    d = b - a
    return b - d * (1.0 - t) if t >= 0.5 else a + d * t  # type: ignore[no-any-return]
