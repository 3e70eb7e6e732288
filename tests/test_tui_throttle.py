"""`tui watch` redraws what a person can follow: the header follows every snapshot, the
panels (tree, ranks, ...) at most once a gap, the last snapshot of a busy spell shown at the
gap's end (counted, never timed: the gap is made longer than the test)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

from _fed_source import Fed

from stagewatch.records import encode
from tui.model.snapshot import WorldSnapshot
from tui.source.live import LiveSource
from tui.testing import start_line, step_records, write_run
from tui.view.app import MonitorApp, SnapshotReady
from tui.view.widgets.tree import StageTree

RUN = "20261126-150000-live-0001"


def _snapshots(root: Path, n: int) -> list[WorldSnapshot]:
    """One snapshot per appended step (steps 6 .. 5 + n) of a live run, read synchronously."""
    run = root / RUN
    run.mkdir(parents=True)
    path = run / "rank0.jsonl"
    with open(path, "w") as f:
        f.write(start_line(RUN, total_steps=100, t0=2_000_000_000.0))
        for rec in step_records(5, t0=2_000_000_000.0):
            f.write(encode(rec))
    write_run(root, "20261126-100000-old-0001", steps=4, status="completed")
    src = LiveSource(root, poll=True, min_gap=0.0, stale_after=1e9)
    first = src.step()
    assert first is not None
    out = [first]
    for i in range(n):
        with open(path, "a") as f:
            for rec in step_records(1, start_step=6 + i, t0=2_000_000_000.0):
                f.write(encode(rec))
        snap = src.step()
        assert snap is not None and snap.selected is not None and snap.selected.step == 6 + i
        out.append(snap)
    return out


def test_rapid_snapshots_repaint_the_tree_once_a_gap_while_the_header_follows(
    tmp_path: Path,
) -> None:
    snaps = _snapshots(tmp_path, 12)

    async def go() -> None:
        app = MonitorApp(Fed(tmp_path), panel_gap=1e6)  # a gap longer than the test
        async with app.run_test(size=(160, 48)) as pilot:
            tree = app.query_one(StageTree)
            shows = [0]
            real_show = tree.show

            def counting(*a: Any, **k: Any) -> None:
                shows[0] += 1
                real_show(*a, **k)

            tree.show = counting  # type: ignore[method-assign]
            header = app.query_one("#header")
            app.post_message(SnapshotReady(snaps[0]))  # the first: shown whole at once
            await pilot.pause()
            assert app.world is snaps[0] and shows[0] == 1
            label0 = str(tree.nodes_by_name["backward"].label)
            renders = app.panel_renders
            for s in snaps[1:]:  # a busy spell: every snapshot reaches the screen
                app.post_message(SnapshotReady(s))
                await pilot.pause()
                assert app.latest is s
                assert f"step {s.selected.step}/100" in header.content.plain  # type: ignore[union-attr]
            # ... the tree and the other panels were not redrawn, the header was
            assert shows[0] == 1 and app.panel_renders == renders and app.world is snaps[0]
            assert str(tree.nodes_by_name["backward"].label) == label0
            assert app._panels_timer is not None  # the last snapshot is due at the gap's end
            app._flush_panels()  # the gap ends
            await pilot.pause()
            assert app.world is snaps[-1] and shows[0] == 2 and app.panel_renders == renders + 1
            assert str(tree.nodes_by_name["backward"].label) != label0
            assert f"step {snaps[-1].selected.step}/100" in header.content.plain  # type: ignore[union-attr]
            app._flush_panels()  # nothing newer: nothing redrawn
            assert shows[0] == 2

    asyncio.run(go())


def test_a_key_or_another_run_is_shown_whole_at_once(tmp_path: Path) -> None:
    snaps = _snapshots(tmp_path, 3)

    async def go() -> None:
        src = Fed(tmp_path)
        app = MonitorApp(src, panel_gap=1e6)
        async with app.run_test(size=(160, 48)) as pilot:
            app.post_message(SnapshotReady(snaps[0]))
            await pilot.pause()
            app.post_message(SnapshotReady(snaps[1]))
            await pilot.pause()
            assert app.world is snaps[0]  # throttled
            await pilot.press("N")  # another run asked for: its snapshot is the answer
            assert src.selected
            app.post_message(SnapshotReady(snaps[2]))
            await pilot.pause()
            assert app.world is snaps[2]
            # no run on screen any more (its folder removed): shown at once too, without a key
            gone = replace(snaps[2], selected=None, seq=snaps[2].seq + 1)
            app.post_message(SnapshotReady(gone))
            await pilot.pause()
            assert app.world is gone

    asyncio.run(go())


def test_a_replay_playing_is_throttled_but_pausing_it_is_shown_at_once() -> None:
    from tui.view.pacing import replay_mode

    playing = "▶ replay 10 steps/s · step 5 of 100"
    assert replay_mode(playing) == replay_mode("▶ replay 10 steps/s · step 6 of 100")
    assert replay_mode(playing) != replay_mode("⏸ replay 10 steps/s · step 6 of 100")
    assert replay_mode(playing) != replay_mode("▶ replay 20 steps/s · step 6 of 100")
    assert replay_mode(None) is None


def test_the_panels_timer_never_gets_a_delay_below_zero(tmp_path: Path) -> None:
    """The gap can end between the decision and the timer (a slow redraw of the header): the
    delay stays positive (a Textual timer with a negative delay spins, holding the screen)."""
    import time

    from tui.view.pacing import Pacer, Redraw

    snaps = _snapshots(tmp_path, 1)
    pacer = Pacer(gap=0.05)
    pacer.receive(snaps[0], snaps[0])
    assert pacer.decide(snaps[0], snaps[0]) is Redraw.PANELS
    pacer.drawn()
    pacer.receive(snaps[1], snaps[1])
    assert pacer.decide(snaps[1], snaps[1]) is Redraw.LATER
    time.sleep(0.06)  # the header took longer than what was left of the gap
    assert 0 < pacer.due_in() <= 0.001
