"""The full snapshot's incremental and column-wise figures against a from-scratch computation
(the eager code they replaced, kept here as the reference): the same values, to the bit,
over random runs (ranks of other regions and windows, regions missing from steps, batches
of any size)."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stagewatch.records import Step
from tui.model import build
from tui.model.aggregate import RunAgg
from tui.model.histogram import hist_quantiles
from tui.model.readout import _region_columns
from tui.model.snapshot import EMPTY, NAN, RegionRow, Stats
from tui.source.decode import row_from_step


# --------------------------------------------------------------------------- the reference
def _ref_share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else NAN


def _ref_window(*a: Any) -> Stats:
    last, last_share, wall, count, total, p50, p95, lo, hi, calls = a
    if count == 0:
        return Stats(last=last, steps=0, calls=0, share=0.0, last_share=last_share)
    share = _ref_share(total, wall)
    return Stats(last, total / count, lo, hi, p50, p95, count, int(calls), share, last_share)


def _ref_all_stats(a: Any) -> list[tuple[Stats, Stats]]:
    """A rank's (whole, window) Stats per region column, one Stats at a time."""
    k = len(a.names)
    if k == 0:
        return []
    cols = _region_columns(*a._region_inputs(k))
    # the whole run's quantiles from a cumulative sum of every bucket
    p50, p95 = hist_quantiles(a.hist[:k], (0.50, 0.95), a.min[:k], a.max[:k])
    cols[4], cols[5] = p50.tolist(), p95.tolist()
    wwall = float(a.ring_wall[: a.filled].sum())
    out: list[tuple[Stats, Stats]] = []
    for (cn, cs, lo, hi, q50, q95, calls, la), win in zip(
        zip(*cols[:8], strict=True), zip(*cols[8:], strict=True), strict=True
    ):
        if cn == 0:
            out.append((EMPTY, EMPTY))
            continue
        last_share = la / a.wall_last if a.wall_last > 0 else NAN
        share = _ref_share(cs, a.wall_sum)
        whole = Stats(la, cs / cn, lo, hi, q50, q95, cn, calls, share, last_share)
        out.append((whole, _ref_window(la, last_share, wwall, *win)))
    return out


def _ref_region_rows(aggs: list[Any]) -> tuple[RegionRow, ...]:
    names: dict[str, None] = {}
    for a in aggs:
        for n in a.names:
            names.setdefault(n, None)
    per_rank = [_ref_all_stats(a) for a in aggs]
    rows = []
    for name, cut in build.tree_rows(names):
        if cut:
            rows.append(build._cut_row(name))
            continue
        per = []
        for a, sts in zip(aggs, per_rank, strict=True):
            c = a.cols.get(name)
            w, win = sts[c] if c is not None else (EMPTY, EMPTY)
            per.append((a.rank, w, win))
        i = name.rfind("/")
        rows.append(
            RegionRow(
                name=name,
                leaf=name[i + 1 :] if i >= 0 else name,
                depth=name.count("/"),
                parent=name[:i] if i > 0 else None,
                whole=build.merge([p[1] for p in per]),
                window=build.merge([p[2] for p in per]),
                ranks=tuple(per),
            )
        )
    return tuple(rows)


def _bits(x: Any) -> str:
    """repr, with every float's 17 digits (NaN as nan): equal strings are equal bits."""
    return repr(x)


# --------------------------------------------------------------------------- random runs
def _run(seed: int, n_ranks: int, window: int, batches: int) -> RunAgg:
    rng = np.random.default_rng(seed)
    agg = RunAgg("r", window=window)
    pool = [f"s{j}" for j in range(6)] + ["s0/a", "s0/b", "s1/x/y", "late"]
    for r in range(n_ranks):
        names = [str(n) for n in rng.choice(pool, size=int(rng.integers(0, len(pool))))]
        steps = int(rng.integers(0, 3 * window + 3))
        rows = []
        for i in range(1, steps + 1):
            keep = [n for n in names if rng.random() < 0.8 and (n != "late" or i > steps - 2)]
            if rng.random() < 0.15 and i < steps - window:  # a region seen only long ago
                keep.append("old")
            regs = {n: (float(rng.choice([0.0, rng.lognormal(1, 2)])), 1) for n in keep}
            wall = float(rng.lognormal(4, 0.5))
            rows.append(row_from_step(Step(step=i, time=float(i), wall_ms=wall, regions=regs)))
        cuts = sorted(rng.integers(0, max(1, steps), size=batches).tolist())
        for a, b in zip([0, *cuts], [*cuts, steps], strict=True):
            if b > a:
                agg.add_steps(r, rows[a:b])
                if rng.random() < 0.5:  # read between batches: the quantiles move from here
                    agg.ranks[r].all_stats()
        if steps == 0 and rng.random() < 0.5:
            agg.rank(r)  # a rank seen (its run_start) with no step yet
    return agg


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_ranks=st.integers(1, 12),
    window=st.integers(2, 12),
    batches=st.integers(0, 6),
)
def test_region_rows_are_the_eager_figures(
    seed: int, n_ranks: int, window: int, batches: int
) -> None:
    """Column-wise read-outs, merged column-wise, per-rank Stats made on first read, the
    whole run's quantiles moved from the last read's buckets: the same rows as every rank's
    Stats made one by one from scratch and merged by ``build.merge``."""
    agg = _run(seed, n_ranks, window, batches)
    aggs = [agg.ranks[r] for r in sorted(agg.ranks)]
    want = _ref_region_rows(aggs)
    got, _ = build.region_rows(aggs, with_ranks=True)
    assert _bits(got) == _bits(want)
    for g, w in zip(got, want, strict=True):  # reading the ranks gives what was merged
        assert _bits(tuple(g.ranks)) == _bits(w.ranks)
        assert g == w or g.whole.p50 != g.whole.p50 or g.window.avg != g.window.avg
    for a in aggs:  # a rank's own read-out too
        assert _bits(a.all_stats()) == _bits(_ref_all_stats(a))


def _ref_series_means(aggs: list[Any], names: list[str]) -> np.ndarray:
    """The chart's means divided from scratch (every bucket, every snapshot)."""
    from tui.model.series import NBUCKETS

    series = [a.series for a in aggs]
    width = max((s.width for s in series), default=1)
    out = np.full((len(series), NBUCKETS, 1 + len(names)), np.nan, dtype=np.float32)
    for i, (s, a) in enumerate(zip(series, aggs, strict=True)):
        ncols = s.sum.shape[1]
        gather = np.array([0] + [1 + a.cols.get(n, ncols) for n in names])
        have = gather <= ncols
        sm = np.concatenate([s.wall_sum[:, None], s.sum], axis=1)[:, gather[have]]
        cn = np.concatenate([s.wall_cnt[:, None], s.cnt], axis=1)[:, gather[have]]
        sm, cn = sm.astype(np.float64), cn.astype(np.float64)
        f = width // s.width
        if f > 1:
            n = NBUCKETS // f
            pad = np.zeros((NBUCKETS - n, sm.shape[1]))
            sm = np.concatenate([sm.reshape(n, f, -1).sum(axis=1), pad])
            cn = np.concatenate([cn.reshape(n, f, -1).sum(axis=1), pad])
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i][:, have] = np.where(cn > 0, sm / np.maximum(cn, 1), np.nan)
    return out


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_ranks=st.integers(1, 5))
def test_chart_series_kept_between_snapshots_are_divided_from_scratch(
    seed: int, n_ranks: int
) -> None:
    """The chart's bucket means, redone only where steps went since the last full snapshot:
    the same bits as every bucket divided again, through halvings (runs past 128 steps,
    ranks at other widths), new regions and steps out of order (a resumed run)."""
    rng = np.random.default_rng(seed)
    agg = RunAgg("r", window=8)
    nxt = [1] * n_ranks
    for _ in range(int(rng.integers(3, 25))):
        r = int(rng.integers(0, n_ranks))
        k = int(rng.choice([1, 1, 2, 5, 40, 150]))
        if rng.random() < 0.1:  # back to an earlier step (a resume)
            nxt[r] = max(1, nxt[r] - int(rng.integers(1, 30)))
        names = ["a", "b/c"] + (["late"] if rng.random() < 0.3 else [])
        rows = []
        for s in range(nxt[r], nxt[r] + k):
            regs = {n: (float(rng.lognormal(1, 1)), 1) for n in names if rng.random() < 0.9}
            wall = float(rng.lognormal(3, 0.3))
            rows.append(row_from_step(Step(step=s, time=float(s), wall_ms=wall, regions=regs)))
        nxt[r] += k
        agg.add_steps(r, rows)
        if rng.random() < 0.6:
            snap = agg.snapshot()
            aggs = [agg.ranks[x] for x in sorted(agg.ranks)]
            names_ = [x.name for x in snap.regions if not x.cut]
            want = _ref_series_means(aggs, names_)[:, : snap.series.used]
            assert snap.series.means.tobytes() == want.tobytes()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), window=st.integers(2, 30))
def test_recent_work_kept_between_reads_is_made_from_scratch(seed: int, window: int) -> None:
    """A rank's recent rows (the straggler verdict's input), made only for the steps that
    came since the last read: the same rows, to the bit, as the whole window made again,
    through ring wrap-arounds, new region names and reads after any number of steps."""
    from tui.model.ranks import RankAgg

    rng = np.random.default_rng(seed)
    phases = ["comm/exposed", "comm/launch", "comm/buffers", "data", "data/h2d", "backward"]
    phases += [f"backward/k{j}" for j in range(10)] + ["forward"]
    a = RankAgg(0, window=window)
    step = 1
    for _ in range(int(rng.integers(2, 30))):
        names = [n for n in phases if rng.random() < 0.85]
        rows = []
        for _ in range(int(rng.choice([1, 1, 2, 3, window - 1, window, 2 * window]))):
            regs = {n: (float(rng.lognormal(1, 2)), 1) for n in names if rng.random() < 0.9}
            wall = float(rng.lognormal(4, 0.5))
            rows.append(
                row_from_step(Step(step=step, time=float(step), wall_ms=wall, regions=regs))
            )
            step += 1
        a.ingest(rows)
        if rng.random() < 0.7:
            got = a.recent_work()
            assert _bits(got) == _bits(a._recent_rows(a._order()))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), skip=st.integers(0, 4), window=st.integers(1, 9))
def test_memory_trend_one_step_fold_is_the_batch_fold(seed: int, skip: int, window: int) -> None:
    """The live one-step fold of the memory trend in plain floats: the same bits as the
    numpy batch fold of one step (the moments, means and counts the advice reads)."""
    from tui.model.ranks import _mem_value
    from tui.model.rankstats import MemTrend

    rng = np.random.default_rng(seed)
    fast, ref = MemTrend(window=window, skip=skip), MemTrend(window=window, skip=skip)
    for s in range(1, int(rng.integers(1, 80))):
        r = rng.random()
        m: dict[str, Any] | None = (
            None
            if r < 0.1
            else {"rss": int(rng.integers(0, 2**62))}
            if r < 0.3
            else {"allocated": None, "rss": 5}
            if r < 0.35
            else {"allocated": int(rng.integers(0, 2**40)) + 7000 * s, "peak": 1}
        )
        fast.add(s, _mem_value(m), merged=True)  # RankAgg's one-step fold
        ref.add_batch([s], [m])
        assert _bits(vars_of(fast)) == _bits(vars_of(ref))


def vars_of(t: Any) -> dict[str, Any]:
    return {k: getattr(t, k) for k in ("_n", "_mx", "_my", "_sxx", "_cxy", "_first", "_last")} | {
        "early": list(t._early),
        "ring": list(t._ring),
        "skipped": t._skipped,
        "facts": t.facts(),
    }


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_running_quantile_buckets_are_the_cumulative_sums(seed: int) -> None:
    """The whole run's p50/p95, moved from the last read's buckets as steps come one or a
    few at a time (values drifting up and down, new regions, a big batch now and then): the
    buckets a cumulative sum of every bucket finds, at every read."""
    from tui.model.ranks import RankAgg

    rng = np.random.default_rng(seed)
    a = RankAgg(0, window=10)
    level, step = 1.0, 1
    for _ in range(int(rng.integers(5, 60))):
        level *= float(rng.choice([0.5, 0.9, 1.0, 1.1, 2.0]))
        names = ["a", "b"] + [f"n{j}" for j in range(int(rng.integers(0, 20)))]
        rows = []
        for _ in range(int(rng.choice([1, 1, 1, 2, 3, 9, 50]))):
            regs = {n: (float(level * rng.lognormal(0, 0.3)), 1) for n in names}
            rows.append(row_from_step(Step(step=step, time=float(step), wall_ms=9.0, regions=regs)))
            step += 1
        a.ingest(rows)
        if rng.random() < 0.8:
            k = len(a.names)
            got = a._quantile_idx(k)
            c = np.cumsum(a.hist[:k], axis=1)
            for j, q in enumerate((0.50, 0.95)):
                want = (c < np.maximum(1, np.ceil(q * c[:, -1]))[:, None]).sum(axis=1)
                assert got[j].tolist() == want.tolist()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_step_wall_stats_are_the_numpy_figures(seed: int) -> None:
    """The step wall time's Stats (the header's, every snapshot): the whole run's quantiles
    moved from the last read's buckets, the window's from one sort: the same bits as the
    histogram's cumulative sum and numpy's percentile, mean, min and max."""
    from tui.model.histogram import hist_quantile_pair
    from tui.model.ranks import RankAgg

    rng = np.random.default_rng(seed)
    a = RankAgg(0, window=int(rng.integers(2, 40)))
    level, step = 50.0, 1
    for _ in range(int(rng.integers(5, 80))):
        level *= float(rng.choice([0.5, 0.9, 1.0, 1.1, 2.0]))
        rows = []
        for _ in range(int(rng.choice([1, 1, 1, 2, 3, 9, 80]))):
            wall = float(level * rng.lognormal(0, 0.3))
            rows.append(row_from_step(Step(step=step, time=float(step), wall_ms=wall, regions={})))
            step += 1
        a.ingest(rows)
        if rng.random() < 0.8:
            whole, window = a.wall_stats()
            want = hist_quantile_pair(a.wall_hist, 0.5, 0.95, a.wall_min, a.wall_max)
            assert _bits((whole.p50, whole.p95)) == _bits(want)
            vals = a.ring_wall[: a.filled]
            w50, w95 = np.percentile(vals, [50, 95])
            ref = (float(vals.mean()), float(vals.min()), float(vals.max()), w50, w95)
            got = (window.avg, window.min, window.max, window.p50, window.p95)
            assert _bits(got) == _bits(tuple(float(x) for x in ref))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_few_step_wall_folds_are_the_batch_fold(seed: int) -> None:
    """A live tick's few steps fold their walls in plain floats: the same bits as the whole
    run folded in one numpy batch (sum in order, min, max, histogram), reads between."""
    from tui.model.ranks import RankAgg

    rng = np.random.default_rng(seed)
    walls = (rng.lognormal(3, 2, int(rng.integers(2, 200)))).tolist()
    rows = [
        row_from_step(Step(step=i + 1, time=float(i), wall_ms=w, regions={"a": (1.0, 1)}))
        for i, w in enumerate(walls)
    ]
    live, whole = RankAgg(0, window=16), RankAgg(0, window=16)
    i = 0
    while i < len(rows):
        k = int(rng.integers(1, 20))
        live.ingest(rows[i : i + k])
        i += k
        if rng.random() < 0.5:
            live.wall_stats()
    whole.ingest(rows)
    for name in ("wall_sum", "wall_min", "wall_max", "wall_last", "steps"):
        assert _bits(getattr(live, name)) == _bits(getattr(whole, name)), name
    assert live.wall_hist.tobytes() == whole.wall_hist.tobytes()
    assert _bits(live.wall_stats()) == _bits(whole.wall_stats())
