"""The ranks folded and read side by side (tui.model.crossrank) against each rank folded and
read on its own, and against the from-scratch reference: the same figures, to the bit, over
random live runs (ranks with other column orders, ranks joining late, a rank with more
regions, names beyond the cap, steps a few at a time between snapshots)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagewatch.records import Step
from tests.test_tui_incremental import _bits, _ref_all_stats, _ref_region_rows, _ref_series_means
from tui.model import build, crossrank, crossread, ranks
from tui.model.aggregate import RunAgg
from tui.source.decode import row_from_step

_ARRAYS = ("n", "sum", "calls", "min", "max", "last", "last_calls", "last_seen", "hist")
_ARRAYS += ("ring", "ring_calls", "ring_wall", "ring_step")


def _rows_of(rng: np.random.Generator, names: list[str], first: int, k: int) -> list[Any]:
    out = []
    for s in range(first, first + k):
        regs = {n: (float(rng.choice([0.0, rng.lognormal(1, 2)])), 1) for n in names}
        if s > 1:  # the first step has every region (as a real run's): its column order
            regs = {n: v for n, v in regs.items() if rng.random() < 0.85}
        wall = float(rng.lognormal(4, 0.5))
        out.append(row_from_step(Step(step=s, time=float(s), wall_ms=wall, regions=regs)))
    return out


def _live(
    seed: int, n_ranks: int, window: int, ticks: int, steady: bool = False
) -> tuple[RunAgg, RunAgg]:
    """The same random live run into two aggregates: ``a`` snapshots as ``tui watch`` does
    (the cross-rank path), ``b`` only reads its ranks one by one. ``steady``: one step of
    every rank a tick, one layout (the usual live run)."""
    rng = np.random.default_rng(seed)
    pool = [f"s{j}" for j in range(9)] + ["s0/a", "s0/b", "s1/x/y", "comm/exposed", "data"]
    pool += ["comm/launch", "comm/buffers", "data/h2d", "backward"]
    pool += [f"backward/k{j}" for j in range(int(rng.integers(0, 12)))]
    layouts = []
    for r in range(n_ranks):
        names = list(pool)
        if rng.random() < 0.4 and not steady:
            rng.shuffle(names)  # another column order
        if rng.random() < 0.1 and not steady:
            names = names[: int(rng.integers(0, 3))]  # no regions, or a few: another cap
        if r == n_ranks - 1 and rng.random() < 0.5 and not steady:
            names += [f"extra{j}" for j in range(int(rng.integers(1, 30)))]  # more regions
        layouts.append(names)
    start = [int(rng.integers(0, ticks)) if rng.random() < 0.3 else 0 for _ in range(n_ranks)]
    a, b = RunAgg("r", window=window), RunAgg("r", window=window)
    nxt = [1] * n_ranks
    for t in range(ticks):
        for r in range(n_ranks):
            if not steady and (t < start[r] or rng.random() < 0.2):
                continue
            k = 1 if steady else int(rng.choice([1, 1, 1, 2, 3, 9, 20]))
            names = list(layouts[r])
            if rng.random() < 0.1 and not steady:
                names.append(f"late{int(rng.integers(0, 3))}")
            rows = _rows_of(rng, names, nxt[r], k)
            nxt[r] += k
            a.add_steps(r, rows)
            b.add_steps(r, rows)
        if rng.random() < 0.5:
            a.snapshot(light=rng.random() < 0.5)
        if rng.random() < 0.3:
            for x in b.ranks.values():
                x.all_stats()
    return a, b


def _check(a: RunAgg, b: RunAgg) -> None:
    snap = a.snapshot()
    aggs = [a.ranks[r] for r in sorted(a.ranks)]
    baggs = [b.ranks[r] for r in sorted(b.ranks)]
    assert _bits(snap.regions) == _bits(_ref_region_rows(aggs))
    for x, y in zip(aggs, baggs, strict=True):
        for name in _ARRAYS:
            assert getattr(x, name).tobytes() == getattr(y, name).tobytes(), name
        sx, sy = x.series, y.series
        assert sx.width == sy.width
        for name in ("sum", "cnt", "wall_sum", "wall_cnt"):
            assert getattr(sx, name).tobytes() == getattr(sy, name).tobytes(), name
        assert _bits(x.all_stats()) == _bits(_ref_all_stats(x)) == _bits(y.all_stats())
        assert _bits(x.unaccounted()) == _bits(y.unaccounted())
        assert _bits(x.wall_stats()) == _bits(y.wall_stats())
        assert _bits(x.recent_work()) == _bits(y.recent_work())
        assert _bits(x.recent_work()) == _bits(x._recent_rows(x._order()))
    _, bun = build.region_rows(baggs, with_ranks=True)
    assert _bits(snap.unaccounted) == _bits(bun)
    recent = build.recent_work(aggs)
    tables = crossread.recent_tables(aggs, recent)
    assert _bits(build.compare_ranks(a.compare(), recent, a.window, tables)) == _bits(
        build.compare_ranks(a.compare(), build.recent_work(baggs), a.window)
    )
    names = [x.name for x in snap.regions if not x.cut]
    want = _ref_series_means(aggs, names)[:, : snap.series.used]
    assert snap.series.means.tobytes() == want.tobytes()


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_ranks=st.integers(2, 9),
    window=st.integers(2, 12),
    ticks=st.integers(1, 25),
    steady=st.booleans(),
)
def test_ranks_side_by_side_are_each_rank_alone(
    seed: int, n_ranks: int, window: int, ticks: int, steady: bool
) -> None:
    a, b = _live(seed, n_ranks, window, ticks, steady)
    _check(a, b)


@pytest.mark.parametrize("seed", [1, 2])
def test_names_beyond_the_cap(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """A rank past ``MAX_REGIONS`` names drops the rest, side by side as alone."""
    monkeypatch.setattr(ranks, "MAX_REGIONS", 6)
    a, b = _live(seed, 4, 5, 12)
    assert any(x.dropped_names for x in a.ranks.values())
    _check(a, b)


def test_shared_rows_are_the_ranks_arrays() -> None:
    """The ranks' arrays are views of one array per name while no rank replaces its own;
    one that does is stacked again."""
    a, _ = _live(7, 4, 6, 6)
    a.snapshot()
    aggs = [a.ranks[r] for r in sorted(a.ranks)]
    grp = crossrank.groups_by_cap(aggs)[aggs[0].cap]
    base = a._rows.get(grp, "sum")
    assert all(x.__dict__["sum"].base is base for x in grp)
    grp[0].__dict__["sum"] = grp[0].__dict__["sum"].copy()
    again = a._rows.get(grp, "sum")
    assert again is not base and all(x.__dict__["sum"].base is again for x in grp)


_PATHS = ("_flush_group", "_fields_of", "_unaccounted_of", "_quantiles_of", "_recent_of")
_PATHS += ("_means", "recent_tables", "_walls_of")


def test_the_side_by_side_paths_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs above go through the cross-rank fold and read-outs (not only the per-rank
    fallbacks)."""
    seen: dict[str, int] = {}
    for name in _PATHS:
        mod = crossrank if hasattr(crossrank, name) else crossread
        fn = getattr(mod, name)

        def wrap(*args: Any, _fn: Any = fn, _name: str = name) -> Any:
            seen[_name] = seen.get(_name, 0) + 1
            return _fn(*args)

        monkeypatch.setattr(mod, name, wrap)
    a, b = _live(3, 6, 8, 20)
    _check(a, b)
    a, b = _live(4, 6, 8, 20, steady=True)
    _check(a, b)
    aggs = [a.ranks[r] for r in sorted(a.ranks)]
    assert len(crossread.recent_tables(aggs, build.recent_work(aggs))) == len(aggs)
    assert set(seen) == set(_PATHS)


def _ref_per_step(per_rank: dict[int, Any], window: int | None) -> Any:
    """The per-step table rank by rank (the general path)."""
    from tui.model.perstep import _rank_table

    ranks_ = sorted(r for r, rows in per_rank.items() if len(rows))
    if len(ranks_) < 2:
        return None
    tables = [_rank_table(per_rank[r]) for r in ranks_]
    common = tables[0][0]
    for s, _ in tables[1:]:
        common = np.intersect1d(common, s, assume_unique=True)
    if window:
        common = common[-window:]
    if not len(common):
        return None
    x = np.stack([v[np.searchsorted(s, common)] for s, v in tables], axis=1)
    x[np.isinf(x)] = np.nan
    return ranks_, common.tolist(), x


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_ranks=st.integers(2, 6), window=st.integers(0, 12))
def test_per_step_table_of_aligned_ranks_is_the_general_one(
    seed: int, n_ranks: int, window: int
) -> None:
    """The one-pass table (ranks of the same steps, as arrays or rows) is the rank-by-rank
    one, to the bit; ranks of other steps, repeats, infinite or NaN walls take the general
    path."""
    from tui.model.perstep import _per_step

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 10))
    steps = np.cumsum(rng.integers(1, 3, size=n)) + int(rng.integers(0, 50))
    per_rank = {}
    for r in range(n_ranks):
        st_ = steps.copy()
        if rng.random() < 0.15:
            st_ = st_[int(rng.integers(0, n)) :]  # a rank with fewer steps
        if rng.random() < 0.1 and len(st_) > 1:
            st_[-1] = st_[-2]  # a repeated step
        vals = rng.lognormal(2, 1, size=(len(st_), 7))
        if rng.random() < 0.1:
            vals[0, 0] = rng.choice([np.nan, np.inf])
        if rng.random() < 0.2:
            vals[-1, 3] = np.inf
        per_rank[r] = tuple(
            (int(s), *map(float, v)) for s, v in zip(st_.tolist(), vals, strict=True)
        )
    w = window or None
    want = _ref_per_step(per_rank, w)
    arrays = {r: np.array(rows, dtype=np.float64) for r, rows in per_rank.items() if rows}
    for got in (_per_step(per_rank, w), _per_step(per_rank, w, arrays)):
        if want is None:
            assert got is None
            continue
        assert got is not None
        assert got[0] == want[0] and got[1] == want[1]
        assert got[2].tobytes() == want[2].tobytes()


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_ranks=st.integers(2, 6),
    window=st.integers(1, 40),
    resume=st.booleans(),
)
def test_rising_tails_compared_from_their_ends_are_compared_whole(
    seed: int, n_ranks: int, window: int, resume: bool
) -> None:
    """Ranks compared from the last entries of their (step, wall) tails, when steps rise: the
    same figures as the whole tails compared (long tails, ranks ahead or behind, gaps);
    a resumed run (a step again) is compared whole."""
    from tui.model.rankstats import compare_walls

    rng = np.random.default_rng(seed)
    agg = RunAgg("r", window=window)
    top = int(rng.integers(1, 400))
    for r in range(n_ranks):
        last = top - int(rng.integers(0, 3 * window + 2)) if rng.random() < 0.3 else top
        steps = [s for s in range(1, max(2, last)) if rng.random() < 0.97]
        if resume and r == 0 and len(steps) > 5:
            steps = steps + steps[-3:]
        for i in range(0, len(steps), 50):
            rows = [
                row_from_step(Step(step=s, time=float(s), wall_ms=float(rng.lognormal(3, 0.2))))
                for s in steps[i : i + 50]
            ]
            agg.add_steps(r, rows)
    want = compare_walls(agg.tails, agg.world_size, agg.window)
    got = agg.compare()
    assert agg._all_rising() == (not (resume and len(agg.tails[0]) > 5))
    for g, w in zip(got, want, strict=True):
        assert g.tobytes() == w.tobytes()


def test_a_rank_without_regions_beside_ranks_with_them() -> None:
    """A rank that timed no region shares its column count with ranks that did (they are
    stacked together): read side by side as alone."""
    rng = np.random.default_rng(5)
    a, b = RunAgg("r", window=6), RunAgg("r", window=6)
    for t in range(1, 12):
        for r in range(4):
            names = [] if r == 2 else ["x", "y", "x/z"]
            rows = _rows_of(rng, names, t, 1)
            a.add_steps(r, rows)
            b.add_steps(r, rows)
        a.snapshot(light=t % 3 == 0)
    assert len({x.cap for x in a.ranks.values()}) == 1
    _check(a, b)


@pytest.mark.parametrize("rows", [1, 2, 3, 48])
@pytest.mark.parametrize("cols", [1, 2, 7, 9, 40])
def test_nan_sums_side_by_side_are_each_ranks(rows: int, cols: int) -> None:
    """``np.nansum`` of a rank's fancy-indexed (rows, columns) block adds in an order of its
    own (column-major; one row in pairs): the stacked sums are the same bits."""
    rng = np.random.default_rng(rows * 100 + cols)
    rings = rng.lognormal(1, 2, size=(5, 60, 48))
    rings[rng.random(rings.shape) < 0.15] = np.nan
    top = rng.choice(48, size=cols, replace=False)
    o = rng.choice(60, size=rows, replace=False)
    want = np.stack([np.nansum(r[:rows][:, top], axis=1) for r in rings])
    assert crossrank._nansum_last(rings[:, :rows][:, :, top]).tobytes() == want.tobytes()
    want = np.stack([np.nansum(r[o][:, top], axis=1) for r in rings])
    got = crossrank._nansum_last(rings[np.arange(5)[:, None], o[None, :]][:, :, top])
    assert got.tobytes() == want.tobytes()


def test_recent_rows_of_a_first_single_step_are_made_again() -> None:
    """A rank's recent rows read when its window held one step (its backward children summed
    as a 1-D array, in pairs) are made again with the next read: the same bits as the whole
    window made from scratch (nine children: pairwise and in-order sums differ)."""
    from tui.model.ranks import RankAgg

    kids = [f"backward/k{j}" for j in range(9)]
    for seed in range(20):
        rng = np.random.default_rng(seed)
        a = RankAgg(0, window=8)
        for s in (1, 2, 3):
            regs = {n: (float(rng.lognormal(1, 2)), 1) for n in kids}
            regs["backward"] = (sum(v for v, _ in regs.values()) + 50.0, 1)  # its own time
            step = Step(step=s, time=float(s), wall_ms=500.0, regions=regs)
            a.ingest([row_from_step(step)])
            a.recent_work()
        assert _bits(a.recent_work()) == _bits(a._recent_rows(a._order()))


@settings(max_examples=300, deadline=None)
@given(
    v=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(min_value=0.0, max_value=1e8),
        st.integers(-100, 400).map(lambda k: 10.0 ** (-3 + k / 32)),  # bucket edges
    ),
    nudge=st.integers(-2, 2),
)
def test_one_value_bucket_is_numpys(v: float, nudge: int) -> None:
    """A live step's wall bucket in plain floats is ``hist_index``'s, edges included."""
    from tui.model.histogram import bucket_of, hist_index

    with np.errstate(all="ignore"):  # NaN and infinity: numpy's cast of them, as the fold's
        for _ in range(abs(nudge)):
            v = float(np.nextafter(v, np.inf if nudge > 0 else -np.inf))
        assert bucket_of(v) == int(hist_index(np.array([v]))[0])


def test_ranks_stacked_are_saved_and_read_back_as_their_own() -> None:
    """A run index taken of ranks whose arrays are views of shared rows reads back as the
    same aggregate: the same snapshot, and both go on folding alike."""
    from tui.model.state import agg_from_state, state_of

    a, _ = _live(9, 5, 6, 12, steady=True)
    a.snapshot()
    b = agg_from_state(msgspec_roundtrip(state_of(a)), "r", "", a.window)
    rng = np.random.default_rng(1)
    for r in sorted(a.ranks):
        rows = _rows_of(rng, list(a.ranks[r].names), a.ranks[r].last_step + 1, 2)
        a.add_steps(r, rows)
        b.add_steps(r, rows)
    sa, sb = a.snapshot(), b.snapshot()
    assert _bits(sa.regions) == _bits(sb.regions)
    assert _bits(sa.unaccounted) == _bits(sb.unaccounted)
    assert _bits(sa.rank_info) == _bits(sb.rank_info)


def msgspec_roundtrip(x: Any) -> Any:
    import msgspec

    return msgspec.msgpack.decode(msgspec.msgpack.encode(x), type=type(x))
