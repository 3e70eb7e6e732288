"""The screen's use of its space, the chart's series and drawing, many ranks, F10."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.test_tui_app import sync, wait_for
from tui.fmt import fmt_ms
from tui.model.aggregate import RunAgg
from tui.model.series import NBUCKETS, RegionSeries, series_set
from tui.source.live import LiveSource
from tui.source.reader import RunSource
from tui.source.replay import ReplaySource
from tui.testing import step_records, write_run
from tui.view.app import MonitorApp
from tui.view.layout import CHART_ROWS, SPARK_ROWS, share_heights
from tui.view.widgets.chart import BANDS, PER_RANK, RegionChart, chart_text
from tui.view.widgets.compare import CompareApp
from tui.view.widgets.tree import StageTree

# ----------------------------------------------------------------------------- series


def _feed(s: RegionSeries, steps: range, value: float = 10.0) -> None:
    st = np.array(list(steps), dtype=np.int64)
    m = np.full((len(st), 2), value)
    m[:, 1] = np.where(st % 2 == 0, np.nan, value * 2)  # column 1 runs every other step
    s.add(st, m, np.full(len(st), value * 3))


def test_series_is_bounded_and_keeps_bucket_means() -> None:
    s = RegionSeries(2)
    _feed(s, range(1, 50_001))
    assert s.sum.shape == (NBUCKETS, 2)  # bounded whatever the run's length
    assert s.width == 512  # 50,000 steps in 128 buckets of a power-of-two width
    m = s.means_at(s.width)
    used = ~np.isnan(m[:, 0])
    assert used.sum() == math.ceil(50_000 / 512)
    assert np.allclose(m[used, 0], 30.0)  # the wall time
    assert np.allclose(m[used, 1], 10.0)
    assert np.allclose(m[used, 2], 20.0)  # mean over the steps it ran in, not all steps
    assert int(s.wall_cnt.sum()) == 50_000
    assert int(s.cnt[:, 1].sum()) == 25_000


def test_series_batches_and_order_give_the_same_buckets() -> None:
    one, many, shuffled = RegionSeries(2), RegionSeries(2), RegionSeries(2)
    _feed(one, range(1, 1001))
    for a in range(1, 1001, 37):
        _feed(many, range(a, min(a + 37, 1001)))
    order = list(range(1, 1001))
    np.random.default_rng(0).shuffle(order)
    for i in range(0, 1000, 100):
        _feed(shuffled, order[i : i + 100])  # type: ignore[arg-type]
    for other in (many, shuffled):
        assert other.width == one.width
        assert np.allclose(other.sum, one.sum) and (other.cnt == one.cnt).all()
        assert (other.wall_cnt == one.wall_cnt).all()


def test_series_set_aligns_ranks_on_the_widest_width() -> None:
    a, b = RegionSeries(1), RegionSeries(1)
    a.add(np.arange(1, 101), np.full((100, 1), 5.0), np.full(100, 9.0))
    b.add(np.arange(1, 301), np.full((300, 1), 7.0), np.full(300, 9.0))
    ss = series_set([0, 1], [a, b], [{"x": 0}, {"x": 0}], ["x", "y"])
    assert ss.width == b.width == 4
    assert ss.used == 75  # 300 steps / 4
    x = ss.of("x")
    assert x is not None and x.shape == (2, 75)
    assert np.allclose(x[0, :25], 5.0) and np.isnan(x[0, 25:]).all()
    assert np.allclose(x[1], 7.0)
    lo, md, hi = ss.bands("x")  # type: ignore[misc]
    assert np.allclose(lo[:25], 5.0) and np.allclose(hi[:25], 7.0) and np.allclose(md[:25], 6.0)
    assert np.isnan(ss.of("y")).all()  # type: ignore[arg-type]
    assert ss.of("not a region") is None


def test_the_series_survives_the_run_index(tmp_path: Path) -> None:
    from tui.model.state import agg_from_state, state_of

    run = write_run(tmp_path, steps=300, ranks=2, straggler=1)
    agg = RunSource(run).load().agg
    again = agg_from_state(state_of(agg), agg.run_id, agg.path, agg.window)
    for r, a in agg.ranks.items():
        b = again.ranks[r]
        assert b.series.width == a.series.width
        assert np.array_equal(b.series.sum, a.series.sum)
        assert np.array_equal(b.series.cnt, a.series.cnt)
    s1, s2 = agg.snapshot().series, again.snapshot().series
    assert np.allclose(s1.means, s2.means, equal_nan=True)


def test_snapshot_series_follows_the_run(tmp_path: Path) -> None:
    agg = RunAgg("r")
    rows = list(step_records(40, rank=0))
    agg.add_steps(0, [(x.step, x.time, x.wall_ms, x.samples, None, tuple(x.regions), x.regions,
                       x.memory, x.scalars) for x in rows])  # fmt: skip
    snap = agg.snapshot()
    assert snap.series.used == 40 and snap.series.width == 1
    stage8 = snap.series.of("forward/vrt/stage8")[0]
    want = [x.regions["forward/vrt/stage8"][0] for x in rows]
    assert np.allclose(stage8, want, rtol=1e-6)
    assert agg.snapshot(light=True).series is None


# ----------------------------------------------------------------------------- chart


def _series(ranks: int = 3, steps: int = 200) -> object:
    rs = []
    for r in range(ranks):
        s = RegionSeries(1)
        st = np.arange(1, steps + 1)
        s.add(st, (100.0 + 10 * r + st % 7)[:, None].astype(float), np.full(steps, 500.0))
        rs.append(s)
    return series_set(list(range(ranks)), rs, [{"x": 0}] * ranks, ["x"])


def test_chart_draws_bands_and_per_rank_lines_in_its_cells() -> None:
    ss = _series()
    for mode in (BANDS, PER_RANK):
        text, legend = chart_text(ss, "x", mode, 60, 8)  # type: ignore[arg-type]
        lines = text.plain.split("\n")
        assert len(lines) == 8 and all(len(x) <= 60 for x in lines)
        assert any(0x2800 < ord(ch) <= 0x28FF for ch in text.plain)  # braille dots drawn
        top = fmt_ms(float(np.nanmax(ss.of("x"))))  # type: ignore[attr-defined]
        assert lines[0].strip().startswith(top)  # the top: the highest bucket mean
        assert lines[-1].strip().startswith("step 1") and lines[-1].endswith("200")
        assert "2 steps/point" in legend
    _, legend = chart_text(ss, "x", BANDS, 60, 8)  # type: ignore[arg-type]
    assert "median" in legend and "max" in legend
    _, legend = chart_text(ss, "x", PER_RANK, 60, 8, straggler=2)  # type: ignore[arg-type]
    assert "r2" in legend and "red" in legend.split("r2")[0].rsplit("[", 1)[-1]
    text, _ = chart_text(None, "x", BANDS, 60, 8)
    assert "no steps" in text.plain
    text, _ = chart_text(ss, "nothing", BANDS, 60, 8)  # type: ignore[arg-type]
    assert "no figures" in text.plain


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("body", [19, 35, 40, 55])
def test_panels_take_their_need_and_the_tree_the_rest(body: int) -> None:
    tall = body >= 30
    # a small tree: the panels get every row they need
    h = share_heights(body, 12, 5, 10, chart=tall, spark=tall)
    need = max(5 + (CHART_ROWS if tall else 0), (SPARK_ROWS if tall else 0) + 10)
    assert h.lower == min(need, body - 12) or h.lower == need
    # a tall tree: the tree gets its rows, the panels a floor
    h = share_heights(body, 28, 5, 10, chart=tall, spark=tall)
    assert h.lower >= 6 and body - h.lower >= min(28, body - h.lower)
    assert h.lower <= max(body - 28, int(body * 0.35), 14 if tall else 6)
    if body - 28 >= need:
        assert h.lower == need  # no row of the tree hidden when all fits


def test_160x45_one_rank_tree_fits_and_panels_are_not_padded() -> None:
    # the case: 25 tree rows, 1 rank, a few advice lines
    h = share_heights(40, 25 + 3, 5, 8, chart=True, spark=True)
    assert 40 - h.lower >= 25 + 3 - 2  # at most 2 tree rows scroll
    assert not h.chart  # the chart gave its rows to the tree
    assert h.lower <= max(5, SPARK_ROWS + 8)  # no panel padded beyond its need
    h = share_heights(40, 10 + 3, 5, 8, chart=True, spark=True)
    assert h.lower == max(5 + CHART_ROWS, SPARK_ROWS + 8)  # no empty rows below the panels
    assert h.chart and h.ranks == 5  # the ranks panel is as tall as its one rank


def test_120x40_the_chart_gives_way_before_a_tree_row_scrolls() -> None:
    # the demo's tree at 120x40 (24 rows with borders), one rank, four advice lines: the
    # chart's 9 rows would hide data/h2d and (unaccounted); the tree shows whole instead
    h = share_heights(36, 24, 5, 7, chart=True, spark=True)
    assert 36 - h.lower >= 24 and not h.chart
    # room for both: the chart stays
    h = share_heights(56, 24, 5, 7, chart=True, spark=True)
    assert h.chart and 56 - h.lower >= 24


@sync
async def test_screen_heights_follow_the_content(tmp_path: Path) -> None:
    write_run(tmp_path, "20261126-100000-one-0001", steps=30, ranks=1)
    app = MonitorApp(LiveSource(tmp_path, poll=True, interval=0.05))
    async with app.run_test(size=(160, 45)) as pilot:
        await wait_for(pilot, lambda: app.world is not None and app.world.selected is not None)
        tree = app.query_one(StageTree)

        def box() -> int:
            return app.query_one("#tree-box").outer_size.height

        def ranks() -> int:
            return app.query_one("#ranks").outer_size.height

        # the heights are shared after a refresh: wait for them rather than for a fixed time
        await wait_for(pilot, lambda: box() >= tree.last_line + 1 + 3 and ranks() == 1 + 1 + 2)
        lower = app.query_one("#lower").outer_size.height  # every tree row shows, and the
        # ranks panel is its header, one rank and borders: no empty rows
        await pilot.press("e")  # expand all: the tree wants more, the panels give it
        await wait_for(pilot, lambda: box() >= tree.last_line + 1 + 3)
        assert app.query_one("#lower").outer_size.height <= lower


@sync
async def test_the_chart_comes_back_drawn_when_the_terminal_grows(tmp_path: Path) -> None:
    write_run(tmp_path, "20261126-100000-grow-0001", steps=30, ranks=2)
    app = MonitorApp(LiveSource(tmp_path, poll=True, interval=0.05))
    async with app.run_test(size=(160, 24)) as pilot:  # short: the chart gives its room
        await wait_for(pilot, lambda: app.world is not None and app.world.selected is not None)
        chart = app.query_one(RegionChart)
        await wait_for(pilot, lambda: chart.has_class("hidden"))
        for _ in range(2):  # and again: shown, hidden, shown
            await pilot.resize_terminal(160, 48)
            await wait_for(pilot, lambda: not chart.has_class("hidden"))
            await wait_for(pilot, lambda: chart.size.height > 3 and "│" in str(chart.content))
            await pilot.resize_terminal(160, 24)
            await wait_for(pilot, lambda: chart.has_class("hidden"))


# ----------------------------------------------------------------------------- keys


@sync
async def test_f10_quits_watch_replay_and_compare(tmp_path: Path) -> None:
    run = write_run(tmp_path, steps=5)
    for app in (
        MonitorApp(LiveSource(tmp_path, poll=True, interval=0.05)),
        MonitorApp(ReplaySource(run, playing=False)),
    ):
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("f10")
            await pilot.pause()
            assert not app.is_running or app.return_code == 0
        assert app.return_code == 0
    from tui.report.compare import compare_paths

    capp = CompareApp(compare_paths([run, run]))
    async with capp.run_test(size=(100, 30)) as pilot:
        await pilot.press("f10")
        await pilot.pause()
    assert not capp.is_running


@sync
async def test_g_toggles_the_chart(tmp_path: Path) -> None:
    write_run(tmp_path, "20261126-100000-three-0001", steps=30, ranks=3, straggler=1)
    app = MonitorApp(LiveSource(tmp_path, poll=True, interval=0.05))
    async with app.run_test(size=(160, 45)) as pilot:
        await wait_for(pilot, lambda: app.world is not None and app.world.selected is not None)
        chart = app.query_one(RegionChart)
        assert chart.mode == BANDS
        await pilot.press("g")
        assert chart.mode == PER_RANK
        assert "per rank" in str(chart.border_title)
        await pilot.press("g")
        assert chart.mode == BANDS


# ----------------------------------------------------------------------------- many ranks


@pytest.fixture(scope="module")
def big_run(tmp_path_factory: pytest.TempPathFactory) -> object:
    root = tmp_path_factory.mktemp("big")
    run = write_run(root, "20261126-100000-big-0001", steps=40, ranks=64, straggler=5)
    return RunSource(run).load().snapshot()


def _style_at(text: object, line: int, col: int) -> str:
    """The style of one cell of a Text (its spans)."""
    plain = text.plain  # type: ignore[attr-defined]
    off = sum(len(x) + 1 for x in plain.split("\n")[:line]) + col
    styles = [str(s.style) for s in text.spans if s.start <= off < s.end]  # type: ignore[attr-defined]
    return styles[-1] if styles else ""


def test_64_ranks_fit_slowest_first_with_heat_strips(big_run: object) -> None:
    from tui.view.widgets.ranks import rank_lines, rank_text

    snap = big_run
    title, text = rank_text(snap, None, False, 0.4, 0.1, width=60, height=12)  # type: ignore[arg-type]
    lines = text.plain.rstrip("\n").split("\n")
    assert len(lines) <= 12 and all(len(x) <= 60 for x in lines)
    assert "64 ranks, slowest first" in title
    # the verdict first: the cause, where the diagnosis has one, else who waits for whom
    assert lines[0].startswith(("rank 5:", "waiting for rank 5"))
    head = next(i for i, x in enumerate(lines) if x.startswith("rank ") and " avg" in x)
    first = lines[head + 1].split()
    assert first[0] == "5"  # the straggler heads the list
    strip_at = lines[head + 1].index(first[1][0])
    assert _style_at(text, head + 1, strip_at) in ("bold red", "dark_orange")  # it runs hot
    assert "green" in _style_at(text, head + 2, strip_at)  # the next rank's does not
    assert lines[-1].startswith("… ") and "more ranks" in lines[-1]
    shown = len(lines) - head - 2
    assert lines[-1].split()[1] == str(64 - shown)
    assert rank_lines(snap, None, False, 60) == head + 1 + 64  # type: ignore[arg-type]
    # a region: sorted by its mean, the straggler's stage first too
    _, text = rank_text(snap, "forward/vrt/stage8", False, 0.4, 0.1, width=60, height=10)  # type: ignore[arg-type]
    rows = [x for x in text.plain.split("\n") if x[:4].strip().isdigit()]
    assert rows[0].split()[0] == "5"


def test_the_verdicts_cause_comes_first(big_run: object) -> None:
    from dataclasses import replace
    from types import SimpleNamespace

    from tui.view.widgets.ranks import rank_text

    verdict = SimpleNamespace(
        cause="rank 5: compute +29%, mostly backward +1.3 s",
        who_waits=lambda: "waiting for rank 5 at the all-reduce",
        ranks=(),
    )
    snap = replace(big_run, stragglers=verdict)  # type: ignore[type-var]
    _, text = rank_text(snap, None, False, 0.4, 0.1, width=80, height=12)
    lines = text.plain.split("\n")
    assert lines[0] == "rank 5: compute +29%, mostly backward +1.3 s"
    assert lines[1] == "waiting for rank 5 at the all-reduce"
    assert _style_at(text, 0, 0) == "bold red"


def test_512_ranks_draw_only_what_fits(tmp_path: Path) -> None:
    from tui.view.widgets.ranks import rank_text

    run = write_run(tmp_path, "20261126-100000-huge-0001", steps=6, ranks=512, n_regions=4)
    snap = RunSource(run).load().snapshot()
    assert snap.series.recent.shape[0] == 512
    _, text = rank_text(snap, None, False, 0.4, 0.1, width=70, height=15)
    lines = text.plain.rstrip("\n").split("\n")
    assert len(lines) <= 15 and "more ranks" in lines[-1]


# ----------------------------------------------------------------------------- the fast paths


def test_window_percentiles_match_numpy_to_the_bit() -> None:
    from tui.model.readout import _percentiles

    rng = np.random.default_rng(1)
    for n in [*range(1, 60), 100, 1000]:
        v = rng.lognormal(3, 1, n)
        assert _percentiles(v, 0.5, 0.95) == list(np.percentile(v, [50, 95]))


def test_one_step_folds_give_the_batch_figures_to_the_bit() -> None:
    from tui.model.ranks import RankAgg

    def rows(k: int) -> list[tuple]:  # type: ignore[type-arg]
        out = []
        for x in step_records(k, n_regions=20, seed=3):
            regs = dict(x.regions)
            if x.step % 3 == 0:
                regs.pop("forward/loss")  # a region that does not run every step
            out.append((x.step, x.time, x.wall_ms, x.samples, None, tuple(regs), regs,
                        x.memory, x.scalars))  # fmt: skip
        return out

    batch, single = RankAgg(0, window=16), RankAgg(0, window=16)
    data = rows(70)
    batch.ingest(data)
    for r in data:
        single.ingest([r])
    for k, v in vars(batch).items():
        if isinstance(v, np.ndarray):
            assert np.array_equal(v, getattr(single, k), equal_nan=True), k
    assert np.array_equal(batch.series.sum, single.series.sum)
    assert np.array_equal(batch.series.cnt, single.series.cnt)
    assert batch.all_stats() == single.all_stats()


def test_column_percentiles_in_one_pass_match_one_at_a_time() -> None:
    from tui.model.histogram import col_percentile, col_percentiles

    rng = np.random.default_rng(2)
    for rows in (0, 1, 2, 7, 100):
        m = rng.lognormal(2, 1, (rows, 9))
        m[rng.random((rows, 9)) < 0.3] = np.nan
        n = (~np.isnan(m)).sum(axis=0)
        srt = np.sort(m, axis=0)
        got = col_percentiles(srt, n, (0.5, 0.95))
        for q, g in zip((0.5, 0.95), got, strict=True):
            assert np.array_equal(g, col_percentile(srt, n, q), equal_nan=True)
