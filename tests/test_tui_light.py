"""`tui watch` at a small CPU cost: light snapshots (no per-region figures) between the panel
redraws carry the header's figures exactly; the panels are only drawn from full ones (one
per panel gap, at the end of a busy spell, on a view change or a key); file events wake the
reader, the reader's own reads do not, and where file events cannot be had the scan alone
reads on."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path

import pytest
from _fed_source import Fed

from stagewatch.records import encode
from tui.model.snapshot import UNACCOUNTED, WorldSnapshot
from tui.source.live import LiveSource
from tui.testing import start_line, step_records, write_run
from tui.view.app import MonitorApp, SnapshotReady
from tui.view.widgets.header import header_text
from tui.view.widgets.tree import StageTree

RUN = "20261126-150000-live-0001"
T0 = 2_000_000_000.0


@contextlib.contextmanager
def posting(src: LiveSource) -> Iterator[list[WorldSnapshot]]:
    """The snapshots ``src`` posts while the block runs (started here, stopped after)."""
    got: list[WorldSnapshot] = []
    src.start(got.append)
    try:
        yield got
    finally:
        src.stop()


def _until(done: Callable[[], object], t_end: float) -> None:
    """Wait (polling) until ``done()`` is true or the deadline passes."""
    while not done() and time.monotonic() < t_end:
        time.sleep(0.01)


def _live_run(root: Path, ranks: int = 2, steps: int = 5) -> list[Path]:
    run = root / RUN
    run.mkdir(parents=True)
    paths = []
    for r in range(ranks):
        p = run / f"rank{r}.jsonl"
        with open(p, "w") as f:
            f.write(start_line(RUN, rank=r, world_size=ranks, total_steps=100, t0=T0))
            for rec in step_records(steps, rank=r, t0=T0, n_regions=13):
                f.write(encode(rec))
        paths.append(p)
    return paths


def _append(paths: list[Path], start: int, n: int = 1) -> None:
    for r, p in enumerate(paths):
        with open(p, "a") as f:
            for rec in step_records(n, rank=r, start_step=start, t0=T0, n_regions=13):
                f.write(encode(rec))


def test_a_light_snapshot_holds_every_figure_of_the_full_one_but_the_regions(
    tmp_path: Path,
) -> None:
    paths = _live_run(tmp_path, ranks=3)
    src = LiveSource(tmp_path, poll=True, stale_after=1e9, clock=lambda: 1000.0)
    assert src.step() is not None
    _append(paths, 6, 4)
    src.reader.tick()
    run = src.reader.selected_run()
    assert run is not None
    full, light = run.snapshot(), run.snapshot(light=True)
    assert light.light and not full.light
    assert full.regions and light.regions == ()
    assert light.unaccounted.name == UNACCOUNTED and light.unaccounted.whole.steps == 0
    for f in fields(full):  # every other field: the same values (repr: nan reads as nan)
        if f.name not in ("regions", "unaccounted", "light", "advice", "advice_window", "series"):
            assert repr(getattr(light, f.name)) == repr(getattr(full, f.name)), f.name
    assert light.step == 9 and light.rank_info and light.stragglers is not None
    # so the header reads the same, in either view
    for window in (False, True):
        a = header_text(full, window=window, paused=False, behind_step=None, root="", width=160)
        b = header_text(light, window=window, paused=False, behind_step=None, root="", width=160)
        assert a.plain == b.plain and a.spans == b.spans


def test_the_reader_posts_light_snapshots_between_full_ones_and_a_full_one_at_the_end(
    tmp_path: Path,
) -> None:
    """A busy spell: a full snapshot per gap, light ones between, and once the writes stop a
    full one with the last step (the panels catch up) although nothing changed since."""
    paths = _live_run(tmp_path)
    src = LiveSource(
        tmp_path, poll=True, interval=0.02, min_gap=0.02, full_gap=0.3, stale_after=1e9
    )
    with posting(src) as got:
        t_end = time.monotonic() + 5
        _until(lambda: got, t_end)
        assert got and not got[0].light  # the first: full
        for i in range(15):  # ~0.6 s of appends
            _append(paths, 6 + i)
            time.sleep(0.04)
        last = 6 + 14
        _until(lambda: got[-1].selected.step == last and not got[-1].light, t_end)
    snaps = [s for s in got if s.selected is not None]
    assert snaps[-1].selected.step == last and not snaps[-1].light and snaps[-1].selected.regions
    lights = [s for s in snaps if s.light]
    fulls = [s for s in snaps if not s.light]
    assert lights and len(fulls) >= 2
    assert all(s.selected.regions == () for s in lights)
    # full ones at most once a gap (the first and the view changes aside)
    times = [s.made_at for s in fulls[1:]]
    assert all(b - a >= 0.25 for a, b in itertools.pairwise(times))
    assert src.full_posts == len(fulls)


def test_a_line_that_moves_nothing_in_the_header_posts_no_light_snapshot(tmp_path: Path) -> None:
    """At 64 ranks most lines are another rank's copy of a step already shown: a light
    snapshot (and a header redraw) only when the oldest or newest rank's step moves."""
    paths = _live_run(tmp_path, ranks=3)
    src = LiveSource(
        tmp_path, poll=True, interval=0.02, min_gap=0.02, full_gap=1e9, stale_after=1e9
    )
    got: list[WorldSnapshot] = []
    src.start(got.append)

    def one(rank: int, step: int) -> None:
        with open(paths[rank], "a") as f:
            f.write(encode(next(iter(step_records(1, rank=rank, start_step=step, t0=T0)))))
        time.sleep(0.25)  # every line read and judged on its own

    try:
        _until(lambda: got, time.monotonic() + 5)
        first = len(got)
        one(0, 6)  # the newest step moves: posted
        one(1, 6)  # rank 2 still at 5: the header's steps are the same, nothing posted
        one(2, 6)  # every rank at 6: posted
    finally:
        src.stop()
    steps = [(min(r.step for r in s.selected.rank_info), s.selected.step) for s in got[first:]]
    assert steps == [(5, 6), (6, 6)], steps
    assert all(s.light for s in got[first:])


def test_a_step_straddling_a_tick_is_posted_once(tmp_path: Path) -> None:
    """A step's lines split over two ticks (the newest step moves first, then the oldest):
    the first is held for up to one ``min_gap`` and one light snapshot shows both. A rank
    left behind does not hold the newest step back for longer than that."""
    paths = _live_run(tmp_path, ranks=3)
    src = LiveSource(tmp_path, poll=True, interval=0.02, min_gap=0.3, full_gap=1e9, stale_after=1e9)
    got: list[WorldSnapshot] = []
    src.start(got.append)

    def lines(ranks: range, step: int) -> None:
        for rank in ranks:
            with open(paths[rank], "a") as f:
                f.write(encode(next(iter(step_records(1, rank=rank, start_step=step, t0=T0)))))

    try:
        t_end = time.monotonic() + 5
        _until(lambda: got, t_end)
        time.sleep(0.35)  # past the first post's gap
        first = len(got)
        lines(range(1), 6)  # rank 0 alone: the newest step moves, held
        time.sleep(0.05)
        lines(range(1, 3), 6)  # the rest of the step, within the hold: one post for both
        _until(lambda: len(got) > first and got[-1].selected.step == 6, t_end)
        time.sleep(0.35)
        lines(range(2), 7)  # rank 2 stays at 6: shown after the hold
        _until(lambda: got[-1].selected.step == 7, t_end)
    finally:
        src.stop()
    steps = [(min(r.step for r in s.selected.rank_info), s.selected.step) for s in got[first:]]
    assert steps == [(6, 6), (6, 7)], steps
    assert all(s.light for s in got[first:])


def test_a_due_full_snapshot_rides_on_the_next_step_while_steps_come(tmp_path: Path) -> None:
    """While steps keep coming, the panels' full snapshot due at the gap's end is the next
    step's post, not a post of its own (a header frame and a snapshot per gap saved); once
    the writes stop, it comes on its own with the last step."""
    paths = _live_run(tmp_path)
    src = LiveSource(
        tmp_path, poll=True, interval=0.02, min_gap=0.02, full_gap=0.3, stale_after=1e9
    )
    with posting(src) as got:
        t_end = time.monotonic() + 8
        _until(lambda: got, t_end)
        first = len(got)
        for i in range(12):  # a step every 0.15 s: never a second without one
            _append(paths, 6 + i)
            time.sleep(0.15)
        last = 6 + 11
        _until(lambda: got[-1].selected.step == last and not got[-1].light, t_end)
    snaps = got[first:]
    keys = [(min(r.step for r in s.selected.rank_info), s.selected.step) for s in snaps]
    fulls = [s for s in snaps[:-1] if not s.light]
    assert fulls, "full snapshots during the writes"
    # every post during the writes moved a step: no full one posted for the gap alone
    assert all(a != b for a, b in itertools.pairwise(keys[:-1])), keys
    assert not snaps[-1].light and keys[-1] == (last, last)


def test_want_full_gets_a_full_snapshot_at_once(tmp_path: Path) -> None:
    paths = _live_run(tmp_path)
    src = LiveSource(tmp_path, poll=True, interval=0.02, min_gap=0.0, full_gap=1e6, stale_after=1e9)
    with posting(src) as got:
        t_end = time.monotonic() + 5
        _until(lambda: got, t_end)
        _append(paths, 6)
        _until(lambda: got[-1].selected.step == 6, t_end)
        assert got[-1].light  # the gap is longer than the test: light
        n = len(got)
        src.want_full()
        _until(lambda: len(got) > n, t_end)
    assert (
        len(got) > n and not got[n].light and got[n].selected.step == 6 and got[n].selected.regions
    )


def _pairs(root: Path, n: int) -> list[tuple[WorldSnapshot, WorldSnapshot]]:
    """(light, full) snapshots of the same moment, one per appended step."""
    paths = _live_run(root)
    src = LiveSource(root, poll=True, min_gap=0.0, stale_after=1e9)
    assert src.step() is not None
    out = []
    for i in range(n):
        _append(paths, 6 + i)
        src.reader.tick()
        out.append((src.build(full=False), src.build()))
    return out


def test_the_panels_draw_only_full_snapshots_and_a_key_asks_for_one(tmp_path: Path) -> None:
    pairs = _pairs(tmp_path, 4)

    async def go() -> None:
        src = Fed(tmp_path)
        app = MonitorApp(src, panel_gap=1e6)
        async with app.run_test(size=(160, 48)) as pilot:
            assert src.full_gap == 1e6  # the source builds full snapshots as often as panels draw
            tree = app.query_one(StageTree)
            header = app.query_one("#header")
            full0 = pairs[0][1]
            app.post_message(SnapshotReady(full0))
            await pilot.pause()
            assert app.world is full0 and app.latest_full is full0
            label0 = str(tree.label_of("backward"))
            renders = app.panel_renders
            light1 = pairs[1][0]
            assert light1.light
            app.post_message(SnapshotReady(light1))  # light: the header only
            await pilot.pause()
            assert app.latest is light1 and app.world is full0 and app.panel_renders == renders
            assert "step 7/100" in header.content.plain
            app._flush_panels()  # the gap ends: there is no newer full one to draw
            await pilot.pause()
            assert app.world is full0 and str(tree.label_of("backward")) == label0
            full1 = pairs[1][1]
            app.post_message(SnapshotReady(full1))  # a full one within the gap: at its end
            await pilot.pause()
            assert app.world is full0 and app.latest_full is full1
            app._flush_panels()
            await pilot.pause()
            assert app.world is full1 and app.panel_renders == renders + 1
            assert str(tree.label_of("backward")) != label0
            # a key that redraws the panels while the header is ahead asks for a full one,
            # and the full one answering it is drawn at once
            app.post_message(SnapshotReady(pairs[2][0]))
            await pilot.pause()
            await pilot.press("w")
            assert src.full_asked == 1 and app.pacer.urgent
            full2 = pairs[2][1]
            app.post_message(SnapshotReady(full2))
            await pilot.pause()
            assert app.world is full2 and not app.pacer.urgent
            await pilot.press("w")  # nothing newer than the panels: nothing to ask
            assert src.full_asked == 1
            full3 = pairs[3][1]
            app.post_message(SnapshotReady(full3))  # within the gap: waiting for its end
            await pilot.pause()
            assert app.world is full2
            await pilot.press("w")  # a key draws the newest full one at once, asks nothing
            assert app.world is full3 and src.full_asked == 1

    asyncio.run(go())


def test_a_light_snapshot_never_hides_a_full_one_waiting_for_the_screen(tmp_path: Path) -> None:
    """The reader hands over the newest snapshot; a full one not yet taken is kept for the
    panels when a light one follows it."""
    pairs = _pairs(tmp_path, 2)

    async def go() -> None:
        app = MonitorApp(Fed(tmp_path), panel_gap=0.0)
        async with app.run_test(size=(160, 48)) as pilot:
            app.slot.pending = True  # the screen is busy: both wait in the slot
            app._post(pairs[0][1])
            app._post(pairs[1][0])
            app.slot.pending = False
            app.post_message(SnapshotReady(pairs[1][0]))
            await pilot.pause()
            assert app.latest is pairs[1][0] and app.world is pairs[0][1]

    asyncio.run(go())


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the kernel's event filter is inotify's"
)
def test_the_watcher_wakes_on_writes_new_files_and_new_runs_not_on_reads(tmp_path: Path) -> None:
    from tui.source import watcher

    run = write_run(tmp_path, "20261126-100000-a-0001", steps=3, status=None)
    wake = threading.Event()
    w = watcher.start(str(tmp_path), wake.set)
    assert w is not None and w.alive
    try:

        def woke() -> bool:
            ok = wake.wait(2.0)
            time.sleep(0.1)  # the rest of the write's events
            wake.clear()
            return ok

        with open(run / "rank0.jsonl", "a") as f:
            f.write("x\n")
        assert woke()
        (run / "rank0.jsonl").read_bytes()  # a read (open, read, close): no wake-up
        assert not wake.wait(0.3)
        (run / "rank1.jsonl").write_text("z\n")  # a new rank file
        assert woke()
        new = tmp_path / "20261126-110000-b-0002"
        new.mkdir()
        assert woke()
        time.sleep(0.1)  # the watch on the new folder is added by the observer's thread
        (new / "rank0.jsonl").write_text("y\n")
        assert woke()
        with open(new / "rank0.jsonl", "a") as f:
            f.write("y\n")
        assert woke()
    finally:
        w.stop()
    assert not w.alive
    w.stop()  # twice: nothing more


def test_a_live_source_is_woken_by_an_append_without_waiting_for_its_scan(tmp_path: Path) -> None:
    paths = _live_run(tmp_path)
    src = LiveSource(tmp_path, interval=30.0, min_gap=0.0, stale_after=1e9)  # the scan: 30 s
    with posting(src) as got:
        assert src.watching
        t_end = time.monotonic() + 5
        _until(lambda: got, t_end)
        time.sleep(0.2)
        polls = src.reader.stats.polls
        time.sleep(0.5)  # nothing written: the reader sleeps (its reads wake nothing)
        assert src.reader.stats.polls <= polls + 1
        _append(paths, 6)
        _until(lambda: got[-1].selected.step == 6, t_end)
        assert got[-1].selected.step == 6


def test_tree_labels_are_made_when_their_lines_are_drawn(tmp_path: Path) -> None:
    """Rows out of sight keep their old label until drawn (or asked for); rows on screen show
    the new figures."""
    pairs = _pairs(tmp_path, 2)

    async def go() -> None:
        app = MonitorApp(Fed(tmp_path), panel_gap=0.0)
        async with app.run_test(size=(160, 18)) as pilot:  # a short screen: rows out of sight
            app.post_message(SnapshotReady(pairs[0][1]))
            await pilot.pause()
            tree = app.query_one(StageTree)
            old = {n: node.label.plain for n, node in tree.nodes_by_name.items()}
            app.post_message(SnapshotReady(pairs[1][1]))
            await pilot.pause()
            await pilot.pause()
            top, height = tree.scroll_offset.y, tree.size.height
            shown = [n for n, node in tree.nodes_by_name.items() if top <= node.line < top + height]
            hidden = [n for n, node in tree.nodes_by_name.items() if node.line >= top + height]
            assert shown and hidden
            for n in shown:  # drawn: the new figures
                assert n not in tree._stale
                assert tree.nodes_by_name[n].label.plain == tree._label(tree.rows[n]).plain
            assert any(tree.nodes_by_name[n].label.plain != old[n] for n in shown)
            late = [n for n in hidden if n in tree._stale]
            assert late  # not drawn: not made yet
            n = late[-1]
            assert tree.nodes_by_name[n].label.plain == old[n]
            assert tree.label_of(n).plain == tree._label(tree.rows[n]).plain != old[n]
            assert n not in tree._stale

    asyncio.run(go())


def test_where_the_watcher_cannot_start_the_scan_reads_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import watchdog.observers

    from tui.source import watcher

    class NoWatches(watchdog.observers.Observer):  # type: ignore[misc,valid-type]
        def start(self) -> None:
            raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(watchdog.observers, "Observer", NoWatches)
    assert watcher.start(str(tmp_path), lambda: None) is None
    paths = _live_run(tmp_path)
    src = LiveSource(tmp_path, interval=0.1, min_gap=0.0, stale_after=1e9)
    with posting(src) as got:
        assert not src.watching and src._watcher is None
        t_end = time.monotonic() + 5
        _until(lambda: got, t_end)
        _append(paths, 6)
        _until(lambda: got[-1].selected.step == 6, t_end)
        assert got[-1].selected.step == 6


def test_watching_one_run_folder_or_one_file(tmp_path: Path) -> None:
    paths = _live_run(tmp_path)
    for root in (paths[0].parent, paths[0]):  # `tui watch RUN` and `tui watch RUN/rank0.jsonl`
        src = LiveSource(root, interval=30.0, min_gap=0.0, stale_after=1e9)
        with posting(src) as got:
            assert src.watching and src._watcher is not None
            t_end = time.monotonic() + 5
            _until(lambda g=got: g, t_end)
            step = got[-1].selected.step + 1
            _append(paths, step)
            _until(lambda g=got, s=step: g[-1].selected.step == s, t_end)
            assert got[-1].selected.step == step


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the kernel's event filter is inotify's"
)
def test_in_a_hot_spell_the_watcher_ticks_instead_then_watches_again(tmp_path: Path) -> None:
    from tui.source import watcher

    run = write_run(tmp_path, "20261126-100000-a-0001", steps=3, status=None)
    wakes: list[float] = []
    w = watcher.start(str(tmp_path), lambda: wakes.append(time.monotonic()), tick_s=0.05)
    assert w is not None
    try:
        with open(run / "rank0.jsonl", "a") as f:  # a hot spell: many writes at once
            for _ in range(3 * watcher.HOT_EVENTS):
                f.write("x\n")
                f.flush()
                time.sleep(0.002)
        t_end = time.monotonic() + 5
        while not w.holds and time.monotonic() < t_end:
            time.sleep(0.01)
        assert w.holds == 1
        held_at = time.monotonic()
        time.sleep(watcher.HOLD_S / 2)  # events are off: the reader is woken on its tick alone
        ticks = [t for t in wakes if held_at < t]
        assert len(ticks) >= 4  # ~10 a second at tick_s=0.05, with no write at all
        time.sleep(watcher.HOLD_S)  # the hold is over: events are on again, and wake at once
        n = len(wakes)
        time.sleep(0.3)
        assert len(wakes) == n  # quiet: no tick any more
        with open(run / "rank0.jsonl", "a") as f:
            f.write("y\n")
        t_end = time.monotonic() + 2
        while len(wakes) == n and time.monotonic() < t_end:
            time.sleep(0.01)
        assert len(wakes) > n and w.holds == 1
    finally:
        w.stop()
    assert not w.alive
