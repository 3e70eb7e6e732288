"""The screen's cheaper paths draw what the plain ones drew: a tree re-sorted by moving its
nodes, titles repainted on their own row, a hidden chart drawn when shown again."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

from test_tui_app import _region_steps, wait_for
from textual.geometry import Region

from tui.fmt import literal
from tui.source.live import LiveSource
from tui.testing import start_line, write_run
from tui.view.app import MonitorApp
from tui.view.widgets.base import set_title
from tui.view.widgets.chart import RegionChart
from tui.view.widgets.tree import StageTree


def sync(fn):  # type: ignore[no-untyped-def]
    @functools.wraps(fn)
    def run(*args, **kwargs):  # type: ignore[no-untyped-def]
        return asyncio.run(fn(*args, **kwargs))

    return run


_steps = _region_steps  # appends steps of these regions to the run's rank 0


def _step(app: MonitorApp) -> int:
    w = app.world
    return w.selected.step if w is not None and w.selected is not None else -1


def _lines(tree: StageTree) -> list[str]:
    strips = tree.render_lines(Region(0, 0, tree.size.width, tree.size.height))
    return ["".join(seg.text for seg in strip) for strip in strips]


@sync
async def test_a_resort_moves_nodes_and_draws_what_a_rebuild_draws(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    run = root / "20261126-150000-sort-0001"
    run.mkdir(parents=True)
    (run / "rank0.jsonl").write_text(start_line(run.name, total_steps=100, t0=2_000_000_000.0))
    first = {"data": 10.0, "forward": 50.0, "forward/a": 30.0, "forward/b": 15.0, "backward": 30.0}
    _steps(run, 1, 5, first)
    app = MonitorApp(LiveSource(root, poll=True, interval=0.05, min_gap=0.0, stale_after=1e9))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: _step(app) == 5)
        tree = app.query_one(StageTree)
        tree.move_cursor(tree.nodes_by_name["backward"])
        await pilot.pause()
        rebuilds = tree.rebuilds
        # the data loader stalls and forward/b overtakes forward/a: both levels re-sort
        later = {**first, "data": 400.0, "forward/b": 45.0, "forward/a": 4.0}
        _steps(run, 6, 30, later)
        await wait_for(pilot, lambda: _step(app) == 35)
        await pilot.pause()
        top = [n.data for n in tree.root.children if n.data not in (None, "(unaccounted)")]
        assert top == ["data", "forward", "backward"]
        kids = [n.data for n in tree.nodes_by_name["forward"].children]
        assert kids == ["forward/b", "forward/a"]
        assert tree.rebuilds == rebuilds  # moved, not rebuilt
        assert tree.cursor_node is not None and tree.cursor_node.data == "backward"
        moved = _lines(tree)
        tree.show(app.world.selected, force=True)  # the plain path: a rebuild
        await pilot.pause()
        assert tree.rebuilds == rebuilds + 1
        assert _lines(tree) == moved
        assert tree.cursor_node is not None and tree.cursor_node.data == "backward"


@sync
async def test_a_changed_title_repaints_its_row_and_shows(tmp_path: Path) -> None:
    write_run(tmp_path, "20261126-100000-three-0001", steps=30, ranks=3, straggler=1)
    app = MonitorApp(LiveSource(tmp_path, poll=True, interval=0.05))
    async with app.run_test(size=(160, 45)) as pilot:
        await wait_for(pilot, lambda: _step(app) == 30)
        await pilot.pause()
        box = app.query_one("#tree-box")
        box._repaint_regions.clear()
        set_title(box, "stage tree · a [bold]title[/] \x1b[31m")
        assert [(r.y, r.height, r.width) for r in box._repaint_regions] == [
            (0, 1, box.outer_size.width)
        ]
        await pilot.pause()
        ours = _top_row(box)
        assert "a [bold]title[/]" in ours  # as text, never markup
        box.border_title = literal("stage tree · a [bold]title[/] \x1b[31m")  # the public path
        await pilot.pause()
        assert _top_row(box) == ours


def _top_row(widget) -> str:  # type: ignore[no-untyped-def]
    strip = widget.render_lines(Region(0, 0, widget.outer_size.width, 1))[0]
    return "".join(seg.text for seg in strip)


@sync
async def test_a_hidden_chart_is_drawn_when_shown_again(tmp_path: Path) -> None:
    write_run(tmp_path, "20261126-100000-three-0001", steps=30, ranks=3, straggler=1)
    app = MonitorApp(LiveSource(tmp_path, poll=True, interval=0.05))
    async with app.run_test(size=(160, 45)) as pilot:
        await wait_for(pilot, lambda: _step(app) == 30)
        await pilot.pause()
        chart = app.query_one(RegionChart)
        assert not chart.has_class("hidden")
        drawn = chart._sw_shown
        chart.set_class(True, "hidden")  # as the screen's height sharing hides it
        await pilot.pause()
        chart._sw_shown = None
        chart.show(app.world.selected, None)
        assert chart._sw_shown is None  # hidden: not drawn
        chart.set_class(False, "hidden")  # shown again: a Resize draws it
        await wait_for(pilot, lambda: chart._sw_shown is not None)
        assert chart._sw_shown == drawn


def test_heat_strip_medians_are_numpys_to_the_bit() -> None:
    import warnings

    import numpy as np

    from tui.view.widgets.ranks import nanmedian_cols

    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        for _ in range(500):
            r, c = int(rng.integers(0, 70)), int(rng.integers(0, 45))
            a = rng.normal(10, 3, (r, c)) * rng.choice([1.0, 1e-3, 1e6])
            a[rng.random((r, c)) < rng.random()] = np.nan
            if c and rng.random() < 0.2:
                a[:, 0] = np.nan
            want = np.nanmedian(a, axis=0) if c else np.zeros(0)
            assert np.array_equal(nanmedian_cols(a), want, equal_nan=True)


def test_costly_panel_redraws_come_less_often_within_bounds() -> None:
    from tui.view.pacing import MAX_GAP, PANEL_BUDGET, Pacer

    fixed = Pacer(1.0)
    fixed.note_cost(1.0)
    assert fixed.gap == 1.0  # a gap the caller chose stays
    p = Pacer(1.0, adaptive=True)
    p.note_cost(0.02)  # a small run: ~25 ms of drawing
    assert p.gap == 1.0
    for _ in range(3):
        p.note_cost(0.09)  # 64 ranks: drawing and a costly full snapshot
    assert p.gap == 0.09 / PANEL_BUDGET
    p.note_cost(5.0)  # one redraw with a layout or a collection in it: the median holds
    assert p.gap == 0.09 / PANEL_BUDGET
    for _ in range(5):
        p.note_cost(5.0)
    assert p.gap == MAX_GAP
    for _ in range(5):
        p.note_cost(0.001)
    assert p.gap == 1.0


@sync
async def test_the_reader_builds_full_snapshots_as_often_as_the_panels_come(
    tmp_path: Path,
) -> None:
    write_run(tmp_path, "20261126-100000-three-0001", steps=30, ranks=3, straggler=1)
    src = LiveSource(tmp_path, poll=True, interval=0.05)
    app = MonitorApp(src)
    async with app.run_test(size=(160, 45)) as pilot:
        await wait_for(pilot, lambda: _step(app) == 30 and len(app.pacer.costs) > 0)
        assert src.full_cost_s > 0.0  # measured by the reader
        app.pacer.costs = [0.2] * 5  # as if redraws cost 200 ms
        app._render_world()
        await wait_for(pilot, lambda: src.full_gap > 1.0)
        assert src.full_gap == app.pacer.gap > 1.0
