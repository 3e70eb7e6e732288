"""Aggregation against hand-computed statistics; text-log parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stagewatch.records import RunStart, Step
from tui.model.aggregate import RunAgg
from tui.model.histogram import hist_index, hist_quantile
from tui.model.ranks import RankAgg
from tui.model.snapshot import UNACCOUNTED
from tui.source.decode import row_from_step
from tui.source.reader import RunSource
from tui.source.textlog import TextLogParser, parse_text
from tui.testing import text_log_block


def _row(step: int, wall: float, regions: dict[str, tuple[float, int]], samples: int = 2):
    return row_from_step(
        Step(step=step, time=float(step), wall_ms=wall, regions=regions, samples=samples)
    )


def test_whole_run_and_window_stats_by_hand() -> None:
    agg = RunAgg("r", window=3)
    agg.add_record(0, RunStart(run_id="r", rank=0, world_size=1, time=0.0, total_steps=10))
    fwd = [10.0, 20.0, 30.0, 40.0, 50.0]
    walls = [100.0, 100.0, 100.0, 200.0, 100.0]
    rows = [
        _row(
            i + 1,
            walls[i],
            {
                "fwd": (fwd[i], 1),
                "fwd/a": (fwd[i] / 2, 2),
                **({"opt": (5.0, 1)} if i % 2 == 0 else {}),
            },
        )
        for i in range(5)
    ]
    agg.add_steps(0, rows[:2])  # batches of any size give the same result
    agg.add_steps(0, rows[2:3])
    agg.add_steps(0, rows[3:])
    snap = agg.snapshot()
    f = snap.region("fwd")
    assert f is not None
    w = f.whole
    assert (w.last, w.avg, w.min, w.max) == (50.0, 30.0, 10.0, 50.0)
    assert w.steps == 5 and w.calls == 5
    assert w.share == pytest.approx(150.0 / 600.0)
    assert w.last_share == pytest.approx(50.0 / 100.0)
    # histogram quantiles: within a bucket (3.7%) of the exact ones, clamped to min/max
    assert w.p50 == pytest.approx(30.0, rel=0.04)
    assert w.p95 == pytest.approx(50.0, rel=0.04)
    win = f.window  # steps 3, 4, 5
    assert (win.avg, win.min, win.max, win.steps) == (40.0, 30.0, 50.0, 3)
    assert win.p50 == 40.0
    assert win.share == pytest.approx(120.0 / 400.0)
    a = snap.region("fwd/a")
    assert a is not None and a.whole.calls == 10 and a.depth == 1 and a.parent == "fwd"
    opt = snap.region("opt")
    assert opt is not None
    assert opt.whole.steps == 3 and opt.whole.avg == 5.0
    assert opt.whole.last == 5.0  # present in the last step (5)
    assert opt.whole.share == pytest.approx(15.0 / 600.0)
    # unaccounted: wall - top-level (fwd + opt) per step: 85, 80, 65, 160, 45
    u = snap.unaccounted
    assert u.name == UNACCOUNTED
    assert u.whole.avg == pytest.approx((600 - 150 - 15) / 5)
    assert u.whole.last == pytest.approx(45.0)
    assert u.window.avg == pytest.approx((65 + 160 + 45) / 3)
    # step wall time, samples/s, ETA
    assert snap.wall.avg == 120.0 and snap.wall.max == 200.0 and snap.wall.min == 100.0
    assert snap.samples_per_s == pytest.approx(10 / 0.6)
    assert snap.samples_per_s_window == pytest.approx(6 / 0.4)
    assert snap.step == 5 and snap.total_steps == 10
    assert snap.eta_s == pytest.approx(5 * (400 / 3) / 1000)


def test_region_missing_from_last_step_shows_zero_last() -> None:
    agg = RankAgg(0, window=4)
    agg.ingest([_row(1, 10.0, {"x": (4.0, 1)}), _row(2, 10.0, {"y": (1.0, 1)})])
    whole, window = agg.region_stats(agg.cols["x"])
    assert whole.last == 0.0 and whole.avg == 4.0 and whole.steps == 1
    assert window.steps == 1


def test_histogram_quantiles_match_numpy_within_bucket_error() -> None:
    rng = np.random.default_rng(1)
    vals = rng.lognormal(3.0, 1.0, 5000)
    hist = np.bincount(hist_index(vals), minlength=400)
    for q in (0.5, 0.95):
        exact = float(np.quantile(vals, q, method="inverted_cdf"))
        assert hist_quantile(hist, q, vals.min(), vals.max()) == pytest.approx(exact, rel=0.04)
    assert math.isnan(hist_quantile(np.zeros(10, dtype=np.int64), 0.5, 0, 1))


def test_ranks_compared_per_step_find_the_straggler() -> None:
    agg = RunAgg("r", window=10)
    for r in range(3):
        agg.add_record(r, RunStart(run_id="r", rank=r, world_size=3, time=0.0))
    for s in range(1, 21):
        for r in range(3):
            wall = 100.0 + (30.0 if r == 2 else r)  # rank 2 is 30 ms slower every step
            agg.add_steps(r, [_row(s, wall, {"fwd": (wall / 2, 1)})])
    snap = agg.snapshot()
    assert snap.straggler == 2
    # judged by compute (no wait region here: compute = wall), over the other ranks' median
    # (100.5 ms)
    assert snap.straggler_excess == pytest.approx(29.5)
    assert snap.stragglers is not None and snap.stragglers.straggler == 2
    assert snap.spread_window == pytest.approx(30.0)
    info = {ri.rank: ri for ri in snap.rank_info}
    assert info[2].slowest_steps == 10 and info[0].slowest_steps == 0
    fwd = snap.region("fwd")
    assert fwd is not None and [r for r, _, _ in fwd.ranks] == [0, 1, 2]
    assert fwd.ranks[2][1].avg == pytest.approx(65.0)
    assert len(snap.step_times) == 10 and snap.step_times[-1] == 130.0


def test_no_straggler_when_slowest_rank_varies() -> None:
    agg = RunAgg("r", window=12)
    for s in range(1, 13):
        for r in range(3):
            agg.add_steps(r, [_row(s, 100.0 + ((s + r) % 3), {})])
    assert agg.snapshot().straggler is None


TEXT = text_log_block(
    1, [("Forward total", 280.0, []), ("VRT", 150.0, [("Stage1", 25.0), ("Stage8", 80.0)])], 620.0
) + text_log_block(
    2, [("Forward total", 300.0, []), ("VRT", 170.0, [("Stage1", 35.0), ("Stage1", 5.0)])], 640.0
)


def test_text_log_parsed_into_steps_with_children_nested() -> None:
    steps, bad = parse_text(TEXT)
    assert bad == 0
    assert [s.step for s in steps] == [1, 2]
    assert steps[0].wall_ms == 620.0
    assert steps[0].regions == {
        "Forward total": (280.0, 1),
        "VRT": (150.0, 1),
        "VRT/Stage1": (25.0, 1),
        "VRT/Stage8": (80.0, 1),
    }
    assert steps[1].regions["VRT/Stage1"] == (40.0, 2)  # repeated names add up


def test_text_log_block_without_total_and_junk_lines() -> None:
    p = TextLogParser()
    out = [
        p.feed(x)
        for x in ["Step 3", "A : 10.00ms (10.0%) [avg: 10.00ms]", "garbage here", "  - orphan"]
    ]
    assert out == [None, None, None, None]
    assert p.malformed == 2
    s = p.feed("Step 4")  # ends block 3 without a Total line: wall = sum of top level
    assert s is not None and s.step == 3 and s.wall_ms == 10.0
    assert p.flush() is None and p.blank == 1  # step 4, empty: not a 0 ms step


def test_text_log_run_replays_into_statistics(tmp_path) -> None:
    f = tmp_path / "timing_rank0.log"
    f.write_text("Timing log of an old run\n" + TEXT)
    snap = RunSource(f).load().snapshot()
    assert snap.step == 2 and snap.state == "finished"
    vrt = snap.region("VRT")
    assert vrt is not None and vrt.whole.avg == 160.0
    st1 = snap.region("VRT/Stage1")
    assert st1 is not None and st1.whole.max == 40.0 and st1.whole.calls == 3
    assert snap.files[0].malformed == 1  # the title line


def test_text_log_of_stagewatch_writer_round_trips() -> None:
    from stagewatch.timing.text_log import format_step, format_summary

    regions = {
        "forward": (280.0, 1),
        "forward/vrt": (150.0, 1),
        "forward/vrt/stage8": (80.0, 1),
        "backward/block": (30.0, 3),  # parent never timed itself
        "optimizer": (20.0, 1),
    }
    text = format_step(7, 400.0, regions, avg_of=lambda n: 1.0) + format_step(
        8, 380.0, {"forward": (200.0, 1)}
    )
    text += format_summary(
        {"forward": {"avg": 1, "min": 1, "max": 1, "total": 2, "count": 2}}, 2, 780.0, 10.0
    )
    steps, bad = parse_text(text)
    assert bad == 0
    assert [s.step for s in steps] == [7, 8]
    assert steps[0].regions == regions  # "(not timed itself)", "xN", Unaccounted skipped
    assert steps[0].wall_ms == 400.0
    assert steps[1].regions == {"forward": (200.0, 1)}


def test_region_names_are_bounded(monkeypatch) -> None:
    import tui.model.ranks as ranks

    monkeypatch.setattr(ranks, "MAX_REGIONS", 5)
    agg = RankAgg(0, window=4)
    for s in range(1, 4):  # a buggy writer inventing names every step
        agg.ingest([_row(s, 10.0, {f"r{s}_{i}": (1.0, 1) for i in range(4)} | {"keep": (2.0, 1)})])
    assert len(agg.names) == 5 and agg.dropped_names > 0
    assert agg.dropped_names == 8
    assert agg.all_stats()[agg.cols["keep"]][0].steps == 3  # known names still counted


_RANK_ARRAYS = [
    "last",
    "last_calls",
    "last_seen",
    "sum",
    "min",
    "max",
    "n",
    "calls",
    "hist",
    "ring",
    "ring_calls",
    "ring_wall",
    "ring_samples",
    "ring_step",
    "ring_loss",
    "wall_hist",
]


def _same_bits(a: RankAgg, b: RankAgg, trend: bool = True) -> None:
    for k in _RANK_ARRAYS:
        x, y = getattr(a, k), getattr(b, k)
        assert x.shape == y.shape and x.tobytes() == y.tobytes(), k
    for k in ("sum", "cnt", "wall_sum", "wall_cnt"):
        assert getattr(a.series, k).tobytes() == getattr(b.series, k).tobytes(), k
    assert a.series.width == b.series.width
    for k in ("wall_sum", "wall_min", "wall_max", "wall_last", "steps", "pos", "filled"):
        assert getattr(a, k) == getattr(b, k), k
    if trend:  # a batch's moments are merged in: the same to rounding only
        assert a.mem_trend.facts() == b.mem_trend.facts()
    assert a.all_stats() == b.all_stats() and a.unaccounted() == b.unaccounted()


def test_deferred_region_folds_are_the_same_figures_to_the_bit() -> None:
    """A live rank folds its region values when they are first read (a full snapshot), in
    one batch: the same bits as folding each step at once, whatever the reads between, new
    region names (the arrays grow) and the pending cap included."""
    rng = np.random.default_rng(7)
    rows = []
    for i in range(1, 400):
        regs = {f"r{j}": (float(rng.lognormal(2, 1)), 1) for j in range(int(rng.integers(3, 9)))}
        if i > 200:
            regs.update({f"late{j}/x": (float(rng.random()), 2) for j in range(24)})
        mem = {"allocated": int(rng.integers(1, 10**9)), "peak": int(rng.integers(1, 10**9))}
        wall = float(rng.lognormal(4, 0.3))
        step = Step(step=i, time=float(i), wall_ms=wall, regions=regs, memory=mem)
        rows.append(row_from_step(step))
    eager, lazy, whole = RankAgg(0, window=50), RankAgg(0, window=50), RankAgg(0, window=50)
    for i, r in enumerate(rows):
        eager.ingest([r])
        eager._flush()  # every step folded at once (as before deferral)
        lazy.ingest([r])
        if rng.random() < 0.05:
            lazy.all_stats()  # a full snapshot reads the regions now and then
        if rng.random() < 0.3:
            lazy.wall_stats()  # the header, without folding the regions
        if i == 150:
            _same_bits(eager, lazy)
    whole.ingest(rows)
    _same_bits(eager, lazy)
    _same_bits(eager, whole, trend=False)  # one batch of all the steps: the same bits too


def test_ranks_read_together_give_each_rank_its_own_figures() -> None:
    """A full snapshot reads the ranks' region figures side by side in one pass: the same
    Stats, to the bit, as each rank read alone (ranks of other regions, orders and windows
    filled to other depths included)."""
    from tui.model.readout import read_all_stats

    rng = np.random.default_rng(3)

    def rank(r: int, steps: int) -> RankAgg:
        a = RankAgg(r, window=20)
        names = [f"s{j}" for j in rng.permutation(12)[: int(rng.integers(4, 12))]]
        rows = []
        for i in range(1, steps + 1):
            regs = {n: (float(rng.lognormal(1, 1)), 1) for n in names if rng.random() < 0.8}
            step = Step(step=i, time=float(i), wall_ms=float(rng.lognormal(4, 0.2)), regions=regs)
            rows.append(row_from_step(step))
        a.ingest(rows)
        return a

    together = [rank(r, s) for r, s in enumerate([30, 30, 7, 30, 7, 1, 50])]
    rng = np.random.default_rng(3)  # the same ranks again
    alone = [rank(r, s) for r, s in enumerate([30, 30, 7, 30, 7, 1, 50])]
    assert repr(read_all_stats(together)) == repr([a.all_stats() for a in alone])
