"""The monitor app driven with Pilot: watch, replay, help, palette, pause, filter."""

from __future__ import annotations

import asyncio
import functools
import io
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from textual.command import CommandPalette

from stagewatch.records import RunEnd, RunError, Step, encode
from tui.source.live import LiveSource
from tui.source.replay import ReplaySource
from tui.testing import start_line, step_records, write_run
from tui.view.app import MonitorApp
from tui.view.widgets.help import HelpScreen
from tui.view.widgets.tree import StageTree


def sync(fn):  # type: ignore[no-untyped-def]
    """Run an async test with asyncio (no async pytest plugin needed)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):  # type: ignore[no-untyped-def]
        return asyncio.run(fn(*args, **kwargs))

    return run


async def wait_for(pilot, cond: Callable[[], bool], timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.02)


def _step_of(app: MonitorApp) -> int:
    return app.world.selected.step if app.world and app.world.selected else -1


def _live_run(root: Path, name: str = "20261126-150000-live-0001", steps: int = 5) -> Path:
    run = root / name
    run.mkdir(parents=True)
    with open(run / "rank0.jsonl", "w") as f:
        f.write(start_line(name, total_steps=50, t0=2_000_000_000.0))
        for rec in step_records(steps, t0=2_000_000_000.0):
            f.write(encode(rec))
    return run


def _append(run: Path, first: int, n: int) -> None:
    with open(run / "rank0.jsonl", "a") as f:
        for rec in step_records(n, start_step=first):
            f.write(encode(rec))


@sync
async def test_watch_updates_in_place_pause_filter_and_runs(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    write_run(root, "20261126-100000-old-0001", steps=4, status="completed")
    run = _live_run(root)
    app = MonitorApp(LiveSource(root, poll=True, interval=0.05, min_gap=0.0))
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: _step_of(app) == 5)
        assert app.world is not None
        assert [r.run_id for r in app.world.runs] == [
            "20261126-150000-live-0001",
            "20261126-100000-old-0001",
        ]
        tree = app.query_one(StageTree)
        rebuilds = tree.rebuilds
        node_ids = {n: id(node) for n, node in tree.nodes_by_name.items()}
        label_before = str(tree.label_of("backward"))  # labels are made when drawn
        _append(run, 6, 5)
        await wait_for(pilot, lambda: _step_of(app) == 10)
        assert tree.rebuilds == rebuilds  # values changed, shape did not: labels updated in place
        assert {n: id(node) for n, node in tree.nodes_by_name.items()} == node_ids
        assert str(tree.label_of("backward")) != label_before

        await pilot.press("p")  # pause: the screen holds, reading goes on
        assert app.paused
        _append(run, 11, 3)
        await wait_for(pilot, lambda: app.latest is not None and app.latest.selected.step == 13)
        assert _step_of(app) == 10
        await pilot.press("p")
        # the panels show the newest full snapshot at once, and ask for a full one when the
        # header is ahead of it (light snapshots came while paused): step 13 within the gap
        await wait_for(pilot, lambda: _step_of(app) == 13, timeout=3.0)

        await pilot.press("slash")
        await pilot.press(*"stage8")
        await pilot.press("enter")
        await pilot.pause()
        assert set(tree.nodes_by_name) == {
            "forward",
            "forward/vrt",
            "forward/vrt/stage8",
            "(unaccounted)",
        }
        await pilot.press("escape")
        await pilot.pause()
        assert "backward" in tree.nodes_by_name

        await pilot.press("c")
        assert not tree.nodes_by_name["forward"].is_expanded
        await pilot.press("e")
        assert tree.nodes_by_name["forward/vrt"].is_expanded

        top = [n.data for n in tree.root.children]
        assert top[0] == "backward"  # sorted by time
        await pilot.press("s")
        await pilot.pause()
        assert [n.data for n in tree.root.children][:3] == ["allreduce", "backward", "data"]

        await pilot.press("w")
        assert app.window
        await pilot.pause()
        assert "last 13 steps" in str(app.query_one("#tree-box").border_title)

        await pilot.press("n")  # next run
        await wait_for(pilot, lambda: app.world.selected.run_id == "20261126-100000-old-0001")
        assert app.world.selected.state == "finished"
        await pilot.press("N")
        await wait_for(pilot, lambda: app.world.selected.run_id == "20261126-150000-live-0001")

        # a new run folder appears without restart
        write_run(root, "20261126-160000-new-0003", steps=2, status=None, t0=2_100_000_000.0)
        # listed first (newest) once its run_start is read: the folder may be seen before it
        new_first = "20261126-160000-new-0003"
        await wait_for(
            pilot, lambda: len(app.world.runs) == 3 and app.world.runs[0].run_id == new_first
        )

        # the rank view follows the tree cursor
        tree.move_cursor(tree.nodes_by_name["backward"])
        await pilot.pause()
        assert app.selected_region == "backward"
        assert "backward" in str(app.query_one("#ranks").border_title)


@sync
async def test_help_screen_lists_every_key(tmp_path: Path) -> None:
    write_run(tmp_path, steps=3)
    app = MonitorApp(LiveSource(tmp_path, poll=True, interval=0.05))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        console = Console(width=120, file=io.StringIO(), record=True)
        console.print(app.screen.table)
        text = console.export_text()
        for d in [
            "Quit",
            "Pause/resume",
            "Filter regions",
            "Expand all",
            "Next run",
            "Recent window",
        ]:
            assert d in text
        assert "Play/pause the replay" not in text  # watch mode lists watch keys
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


@sync
async def test_command_palette_runs_monitor_actions(tmp_path: Path) -> None:
    write_run(tmp_path, steps=3)
    app = MonitorApp(LiveSource(tmp_path, poll=True, interval=0.05))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: _step_of(app) == 3)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Sort by time / by name" in titles and "Help: every key" in titles
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"Sort by time")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: not app.query_one(StageTree).sort_by_time)


@sync
async def test_replay_keys_step_seek_and_speed(tmp_path: Path) -> None:
    run = write_run(tmp_path, steps=30, ranks=2)
    src = ReplaySource(run, playing=False)
    app = MonitorApp(src)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: app.world is not None)
        assert _step_of(app) == 0
        await pilot.press("right")
        await wait_for(pilot, lambda: _step_of(app) == 1)
        await pilot.press("right", "right")
        await wait_for(pilot, lambda: _step_of(app) == 3)
        await pilot.press("left")
        await wait_for(pilot, lambda: _step_of(app) == 2)
        sel = app.world.selected
        assert sel.region("backward").whole.steps == 4  # 2 steps x 2 ranks, exactly as live
        await pilot.press("end")
        await wait_for(
            pilot, lambda: _step_of(app) == 30 and app.world.selected.state == "finished"
        )
        await pilot.press("home")
        await wait_for(pilot, lambda: _step_of(app) == 1)
        assert app.world.selected.state == "running"
        await pilot.press("plus")
        await wait_for(pilot, lambda: src.speed == 20.0)
        await pilot.press("minus", "minus")
        await wait_for(pilot, lambda: src.speed == 5.0)
        src.speed = 200.0
        await pilot.press("space")  # play to the end
        await wait_for(pilot, lambda: _step_of(app) == 30)
        assert "replay" in app.world.selected.replay


def test_replay_back_matches_forward_statistics(tmp_path: Path) -> None:
    run = write_run(tmp_path, steps=400, ranks=2)
    a = ReplaySource(run, playing=False)
    a.seek(300)
    a.seek(123)  # back, through a checkpoint
    b = ReplaySource(run, playing=False)
    b.seek(123)
    sa, sb = a.build().selected, b.build().selected
    assert sa.step == sb.step == 123
    assert sa.regions == sb.regions and sa.wall == sb.wall


@sync
async def test_markup_names_render_literally_in_tree(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    regions = {"[bold]x": (10.0, 1), "[link=http:": (5.0, 1), "[red]oops[/red]": (1.0, 1)}
    (run / "rank0.jsonl").write_text(
        start_line("[b]run") + encode(Step(step=1, time=1.0, wall_ms=100.0, regions=regions))
    )
    app = MonitorApp(ReplaySource(run, playing=False))
    async with app.run_test(size=(160, 40)) as pilot:
        app.source.command(app.source.jump_end)
        await wait_for(pilot, lambda: _step_of(app) == 1)
        tree = app.query_one(StageTree)
        labels = [
            tree.nodes_by_name[n].label.plain
            for n in ("[bold]x", "[link=http:", "[red]oops[", "[red]oops[/red]")
        ]
        assert labels[0].startswith("[bold]x ") and labels[1].startswith("[link=http: ")
        assert labels[2].startswith("[red]oops[ ") and labels[3].startswith("red] ")  # "/" nests
        tree.move_cursor(tree.nodes_by_name["[bold]x"])
        await pilot.pause()
        title = app.query_one("#ranks")._border_title  # the stored content, as drawn
        assert title is not None and title.plain == "ranks · [bold]x"
        await pilot.press("slash", *"[/]", "enter")  # a filter that is not valid markup
        await pilot.pause()
        assert "filter: [/]" in app.query_one("#tree-box")._border_title.plain


@sync
async def test_watch_waits_for_a_log_folder_that_appears_later(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    app = MonitorApp(LiveSource(root, poll=True, interval=0.05))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.world is not None)
        assert app.world.selected is None
        assert app.world.runs == ()
        assert app.query_one("#header").content.plain.startswith(
            "stagewatch  waiting for runs under "
        )
        write_run(root, "20261126-100000-late-0001", steps=3)
        await wait_for(pilot, lambda: _step_of(app) == 3)
        assert app.world.selected.state == "finished"


def test_replay_of_a_text_log_ends_finished(tmp_path: Path) -> None:
    from tui.testing import text_log_block

    log = tmp_path / "timing_old.log"
    log.write_text(
        "".join(text_log_block(i, [("VRT", 150.0, [("Stage1", 25.0)])], 200.0) for i in range(1, 6))
    )
    src = ReplaySource(log, playing=False)
    src.forward(2)
    assert src.build().selected.state == "running"
    src.jump_end()
    snap = src.build().selected
    assert snap.step == 5 and snap.state == "finished"
    assert snap.region("VRT/Stage1").whole.calls == 5


# --------------------------------------------------------------------------- issue 11 / 12


def _logger(root: Path, run_id: str):  # type: ignore[no-untyped-def]
    from stagewatch.timing import TimingLogger

    return TimingLogger(
        root,
        run_id=run_id,
        enable_console=False,
        enable_file=False,
        collect_memory=False,
        handle_sigterm=False,
        file_flush_interval=1,
        total_steps=10,
    )


def _steps(lg, n: int) -> None:  # type: ignore[no-untyped-def]
    from stagewatch.timing import timed

    for _ in range(n):
        with lg.region("forward"):
            pass
        with lg.region("backward"):
            pass
        lg.step(samples=1, scalars={"loss": 0.5})
    lg.flush()
    _ = timed


def _snapshots(app: MonitorApp) -> int:
    return app.latest.seq if app.latest is not None else 0


@sync
async def test_a_new_run_is_followed_when_the_one_on_screen_has_ended(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    old = _logger(root, "20261126-100000-first-0001")
    _steps(old, 3)
    old.close()
    app = MonitorApp(LiveSource(root, poll=True, interval=0.05, min_gap=0.0))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: _step_of(app) == 3 and app.world.selected.state == "finished")
        new = _logger(root, "20261126-110000-second-0002")
        _steps(new, 2)
        try:
            # the first snapshot listing the new run makes the app select it; the one after
            # shows it (the reader polls every 0.05 s: well within the 2 s asked)
            await wait_for(pilot, lambda: any(r.run_id == new.run_id for r in app.latest.runs))
            seen = _snapshots(app)
            await wait_for(pilot, lambda: app.world.selected.run_id == new.run_id)
            assert _snapshots(app) <= seen + 3
            assert app.new_run is None and not app.query_one("#notice").has_class("shown")
        finally:
            new.close()


@sync
async def test_a_new_run_beside_a_live_one_is_announced_and_n_switches(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    live = _live_run(root, "20261126-150000-live-0001")
    app = MonitorApp(LiveSource(root, poll=True, interval=0.05, min_gap=0.0, stale_after=1e9))
    async with app.run_test(size=(80, 24)) as pilot:  # narrow: the runs list is hidden
        await wait_for(pilot, lambda: _step_of(app) == 5)
        assert app.query_one("#runs").has_class("hidden")
        write_run(root, "20261126-160000-other-0002", steps=2, status=None, t0=2_100_000_000.0)
        notice = app.query_one("#notice")
        await wait_for(pilot, lambda: notice.has_class("shown"))
        assert app.world.selected.run_id == live.name  # a live run is not taken away
        assert notice.content.plain == "● new run 20261126-160000-other-0002 — n to switch"
        await pilot.pause()
        assert notice.region.height == 1  # on screen
        await pilot.press("n")
        await wait_for(pilot, lambda: app.world.selected.run_id == "20261126-160000-other-0002")
        assert not notice.has_class("shown")
        # back to the live run; a third run is announced, then followed once the live run ends
        await pilot.press("N")
        await wait_for(pilot, lambda: app.world.selected.run_id == live.name)
        write_run(root, "20261126-170000-third-0003", steps=2, status=None, t0=2_200_000_000.0)
        await wait_for(pilot, lambda: app.new_run == "20261126-170000-third-0003")
        with open(live / "rank0.jsonl", "a") as f:
            f.write(encode(RunEnd(time=2_000_000_100.0, status="completed", steps=5)))
        await wait_for(pilot, lambda: app.world.selected.run_id == "20261126-170000-third-0003")
        assert app.new_run is None


def test_order_with_hysteresis_keeps_close_rows_and_follows_real_changes() -> None:
    from tui.model.order import hysteresis_order

    def order_with_hysteresis(prev: list[str], share: dict[str, float]) -> list[str]:
        return hysteresis_order(list(share), share.__getitem__, prev)  # as the tree calls it

    share = {"a": 0.40, "b": 0.30, "c": 0.20}
    order = order_with_hysteresis([], share)
    assert order == ["a", "b", "c"]
    wobble = {"a": 0.300, "b": 0.302, "c": 0.20}  # b ahead by 0.2 points: no swap, no flicker
    assert order_with_hysteresis(order, wobble) == ["a", "b", "c"]
    moved = {"a": 0.10, "b": 0.30, "c": 0.50}  # a real change: exact share order
    assert order_with_hysteresis(order, moved) == ["c", "b", "a"]
    assert order_with_hysteresis(order, {**share, "d": 0.9})[0] == "d"  # a new region sorts in


def _region_steps(run: Path, first: int, n: int, regions: dict[str, float]) -> None:
    with open(run / "rank0.jsonl", "a") as f:
        for s in range(first, first + n):
            wall = sum(v for k, v in regions.items() if "/" not in k) * 1.01
            f.write(
                encode(
                    Step(
                        step=s,
                        time=2_000_000_000.0 + s,
                        wall_ms=wall,
                        regions={k: (v, 1) for k, v in regions.items()},
                    )
                )
            )


def _top_order(tree: StageTree) -> list[str]:
    return [n.data for n in tree.root.children if n.data not in (None, "(unaccounted)")]


@sync
async def test_tree_resorts_as_shares_change_live_and_on_reopening(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    run = root / "20261126-150000-sort-0001"
    run.mkdir(parents=True)
    (run / "rank0.jsonl").write_text(start_line(run.name, total_steps=100, t0=2_000_000_000.0))
    _region_steps(run, 1, 5, {"data": 10.0, "forward": 50.0, "backward": 30.0, "optimizer": 5.0})
    app = MonitorApp(LiveSource(root, poll=True, interval=0.05, min_gap=0.0, stale_after=1e9))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: _step_of(app) == 5)
        tree = app.query_one(StageTree)
        assert _top_order(tree) == ["forward", "backward", "data", "optimizer"]
        # the data loader stalls: its whole-run share overtakes the forward pass
        _region_steps(
            run, 6, 30, {"data": 400.0, "forward": 50.0, "backward": 30.0, "optimizer": 5.0}
        )
        await wait_for(pilot, lambda: _step_of(app) == 35)
        await pilot.pause()
        sel = app.world.selected
        by_share = sorted((r for r in sel.regions if r.depth == 0), key=lambda r: -r.whole.share)
        assert (
            _top_order(tree)
            == [r.name for r in by_share]
            == ["data", "forward", "backward", "optimizer"]
        )
    # reopening the run (now finished) shows it sorted too
    with open(run / "rank0.jsonl", "a") as f:
        f.write(encode(RunEnd(time=2_000_000_100.0, status="completed", steps=35)))
    app = MonitorApp(ReplaySource(run, playing=False))
    async with app.run_test(size=(120, 40)) as pilot:
        app.source.command(app.source.jump_end)
        await wait_for(pilot, lambda: _step_of(app) == 35)
        await pilot.pause()
        assert _top_order(app.query_one(StageTree)) == ["data", "forward", "backward", "optimizer"]


@sync
async def test_ctrl_c_quits_even_from_the_filter_and_f1_opens_help(tmp_path: Path) -> None:
    write_run(tmp_path, steps=3)
    app = MonitorApp(LiveSource(tmp_path, poll=True, interval=0.05))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: _step_of(app) == 3)
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        console = Console(width=120, file=io.StringIO(), record=True)
        console.print(app.screen.table)
        text = console.export_text()
        for key in ["Ctrl+C", "F1", "Enter", "Space", "Tab", "↑ ↓", "Shift+←", "Esc", "Ctrl+P"]:
            assert key in text, key
        assert "ctrl+c" not in text and "space" not in text.replace("Space", "")
        await pilot.press("f1")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("slash", "x")  # typing a filter: q types, Ctrl+C still quits
        await pilot.pause()
        await pilot.press("q")
        await pilot.pause()
        assert app.query_one("#filter").value == "xq"
        await pilot.press("ctrl+c")
        await pilot.pause()
    assert app.return_code == 0


@sync
async def test_quitting_ends_the_read_loop_and_its_threads(tmp_path: Path) -> None:
    """The source reads in a Textual worker thread: q and Ctrl+C end its loop and its file
    watching before the app returns, so no reader thread is left behind."""
    import threading

    run = write_run(tmp_path, steps=3, status=None)
    for key in ("q", "ctrl+c"):
        for src in (LiveSource(tmp_path, stale_after=1e9), ReplaySource(run, speed=1000.0)):
            app = MonitorApp(src)
            async with app.run_test(size=(120, 40)) as pilot:
                await wait_for(pilot, lambda s=src, a=app: s.running and a.world is not None)
                await pilot.press(key)
            assert app.return_code == 0 and not src.running
            left = [t.name for t in threading.enumerate() if t.name.startswith("stagewatch")]
            assert not left


@sync
async def test_a_read_loop_that_dies_is_shown_and_makes_watch_exit_1(tmp_path: Path) -> None:
    class Dying(LiveSource):
        def run(self, post):  # type: ignore[no-untyped-def]
            post(self.step())  # one snapshot, then the loop breaks
            raise RuntimeError("the loop broke")

    write_run(tmp_path, steps=3)
    app = MonitorApp(Dying(tmp_path, poll=True))
    async with app.run_test(size=(120, 40)) as pilot:
        notice = app.query_one("#notice")
        await wait_for(pilot, lambda: notice.has_class("shown"))
        assert notice.content.plain.startswith("⚠ reader failed: RuntimeError: the loop broke")
        assert _step_of(app) == 3  # the figures as last read stay
        await pilot.press("q")
    assert app.return_code == 1


def test_key_names_read_as_typed() -> None:
    from tui.view.keys import KEYS, key_name

    assert [
        key_name(k) for k in ("ctrl+c", "f1", "space", "question_mark", "N", "shift+up", "escape")
    ] == ["Ctrl+C", "F1", "Space", "?", "N", "Shift+↑", "Esc"]
    assert all(k.display and "_" not in k.display for k in KEYS)


@sync
async def test_replay_says_it_is_a_replay_and_where_it_is(tmp_path: Path) -> None:
    run = write_run(tmp_path, steps=30, status=None)  # no run_end: would look "running"
    app = MonitorApp(ReplaySource(run, playing=False))
    async with app.run_test(size=(120, 40)) as pilot:
        app.source.command(lambda: app.source.seek(12))
        await wait_for(pilot, lambda: _step_of(app) == 12)
        await pilot.pause()
        head = app.query_one("#header").content.plain
        first = head.splitlines()[0]
        assert "⏸ replay" in first and "step 12 of 30" in first, first
        assert "running" not in head and "ETA" not in head and "last write" not in head


@sync
async def test_paused_screen_ages_last_write_from_the_newest_data(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    run = _live_run(root)
    now = [1000.0]
    app = MonitorApp(
        LiveSource(root, poll=True, interval=0.05, min_gap=0.0, stale_after=1e9),
        clock=lambda: now[0],
    )
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: _step_of(app) == 5)
        await pilot.press("p")
        now[0] += 600.0  # ten minutes on a paused screen ...
        _append(run, 6, 2)  # ... while the run keeps writing
        await wait_for(pilot, lambda: app.latest.selected.step == 7)
        app.pacer.latest = replace(app.latest, made_at=now[0])  # that data just arrived
        app._render_header()
        head = app.query_one("#header").content.plain
        assert "last write 10m00s ago" not in head
        assert "PAUSED (read to step 7)" in head


@sync
async def test_header_keeps_the_key_figures_at_80_columns(tmp_path: Path) -> None:
    write_run(
        tmp_path,
        "20261126-100000-a_rather_long_run_name_for_a_header-0001",
        steps=30,
        ranks=3,
        straggler=1,
        status=None,
        total_steps=26550,
    )
    app = MonitorApp(LiveSource(tmp_path, poll=True, interval=0.05, stale_after=1e9))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: _step_of(app) == 30)
        await pilot.pause()
        head = app.query_one("#header").content.plain
        lines = head.splitlines()
        assert len(lines) == 3 and all(len(x) <= 78 for x in lines)
        for part in (
            "step 30/26550",
            "samples/s global",
            "ETA ",
            "peak mem",
            "straggler rank 1",
            "whole run",
        ):
            assert part in head, part


def _hostile_run(root: Path) -> Path:
    esc = "\x1b]0;pwned\x07"
    run = root / "20261126-100000-ev\x1b[2Jil-0001"
    run.mkdir(parents=True)
    from stagewatch.records import Eval, RunStart

    start = RunStart(
        run_id=run.name,
        rank=0,
        world_size=1,
        time=2_000_000_000.0,
        host=f"h{esc}",
        pid=1,
        device="cuda:0\x1b[31m",
        gpu_name="GPU\x07",
        torch_version="2",
        config={},
        total_steps=10,
        samples_per_step=1,
        device_memory_total=2**30,
    )
    regions = {f"fwd{esc}": (50.0, 1), f"fwd{esc}/in\x1b[2Jner": (20.0, 1), "bwd\r\x08": (30.0, 1)}
    lines = [encode(start)]
    for s in (1, 2):
        lines.append(
            encode(
                Step(
                    step=s,
                    time=2_000_000_000.0 + s,
                    wall_ms=100.0,
                    regions=regions,
                    scalars={"loss": 0.5, "l\x1b[2Jr": 1.0},
                )
            )
        )
    lines.append(encode(Eval(step=2, time=2_000_000_003.0, metrics={"ps\x1b]0;x\x07nr": 28.0})))
    lines.append(
        encode(
            RunEnd(
                time=2_000_000_004.0,
                status="failed",
                steps=2,
                error=RunError("E\x1b[2J", f"boom{esc}"),
            )
        )
    )
    (run / "rank0.jsonl").write_text("".join(lines) + "{bad \x1b[2J line\n")
    return run


def _screen_controls(app: MonitorApp) -> set[str]:
    """Control characters in what the screen would send as text (styles aside)."""
    found = set()
    for strip in app.screen._compositor.render_strips():
        for seg in strip:
            found |= {c for c in seg.text if not c.isprintable()}
    return found


@sync
async def test_no_control_character_reaches_the_screen(tmp_path: Path) -> None:
    root = tmp_path / "lo\x1b]0;gs\x07"
    run = _hostile_run(root)
    app = MonitorApp(LiveSource(root, poll=True, interval=0.05, stale_after=1e9))
    async with app.run_test(size=(200, 60)) as pilot:
        await wait_for(pilot, lambda: _step_of(app) == 2)
        await pilot.pause()
        tree = app.query_one(StageTree)
        for name in list(tree.nodes_by_name):  # every region in the rank panel's title
            tree.move_cursor(tree.nodes_by_name[name])
            await pilot.pause()
            assert _screen_controls(app) == set(), name
        tree.move_cursor(tree.nodes_by_name["fwd\x1b]0;pwned\x07"])
        await pilot.pause()
        title = app.query_one("#ranks")._border_title
        assert title is not None and title.plain == "ranks · fwd\\x1b]0;pwned\\x07"
        await pilot.press("slash", *"in", "enter")
        await pilot.pause()
        assert _screen_controls(app) == set()
        write_run(
            root, "20261126-110000-n\x1b[2Jext-0002", steps=1, status=None, t0=2_100_000_000.0
        )
        await wait_for(pilot, lambda: len(app.world.runs) == 2)
        await pilot.pause(0.3)
        assert _screen_controls(app) == set()
        assert "\\x1b" in app.query_one("#header").content.plain
    _ = run


@sync
async def test_tree_of_deep_and_wide_names_is_bounded(tmp_path: Path) -> None:
    from tui.view.widgets.tree import MAX_DEPTH, MAX_ROWS

    run = tmp_path / "r"
    run.mkdir()
    deep = "/".join(["d"] * 1001)
    wide = {"/".join([f"w{i}"] + ["x"] * 20): (1.0, 1) for i in range(150)}
    regions = {deep: (5.0, 1), **wide}
    (run / "rank0.jsonl").write_text(
        start_line("deep") + encode(Step(step=1, time=1.0, wall_ms=200.0, regions=regions))
    )
    app = MonitorApp(ReplaySource(run, playing=False))
    async with app.run_test(size=(120, 40)) as pilot:
        app.source.command(app.source.jump_end)
        await wait_for(pilot, lambda: _step_of(app) == 1, timeout=30)
        await pilot.pause()
        tree = app.query_one(StageTree)
        assert len(tree.nodes_by_name) <= MAX_ROWS + 1
        assert max(tree.rows[n].depth for n in tree.nodes_by_name) < MAX_DEPTH
        notes = [str(n.label) for n in tree.root.children if n.data is None]
        assert any("nested deeper than" in x for x in notes)
        assert any("more regions not shown" in x for x in notes)
        app.action_expand_all()
        await pilot.pause()


@sync
async def test_filter_as_you_type_and_no_match_line(tmp_path: Path) -> None:
    write_run(tmp_path, steps=3)
    app = MonitorApp(LiveSource(tmp_path, poll=True, interval=0.05))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: _step_of(app) == 3)
        tree = app.query_one(StageTree)
        await pilot.press("slash", *"stage8")  # no enter: it filters while typing
        await pilot.pause()
        assert "forward/vrt/stage8" in tree.nodes_by_name and "backward" not in tree.nodes_by_name
        await pilot.press("z")
        await pilot.pause()
        assert [str(n.label) for n in tree.root.children if n.data is None] == [
            "no region matches “stage8z”"
        ]


@sync
async def test_advice_box_says_how_many_items_are_hidden(tmp_path: Path) -> None:
    from tui.view.widgets.advice import AdviceBox

    write_run(tmp_path, steps=3)
    app = MonitorApp(LiveSource(tmp_path, poll=True, interval=0.05))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: _step_of(app) == 3)
        box = app.query_one(AdviceBox)
        box.show([f"advice number {i} " + "words " * 12 for i in range(12)])
        await pilot.pause()
        assert box.hidden > 0
        shown = box.content.plain.splitlines()
        assert shown[-1] == f"… {box.hidden} more (see tui summary)"
        assert "advice · " in str(box.border_title)


@sync
async def test_a_reader_failure_is_shown_and_makes_watch_exit_1(tmp_path: Path) -> None:
    write_run(tmp_path, steps=3)
    src = LiveSource(tmp_path, poll=True, interval=0.05, min_gap=0.0)
    app = MonitorApp(src)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: _step_of(app) == 3)
        real = src.reader.tick

        def broken(*a, **k):  # type: ignore[no-untyped-def]
            raise PermissionError(13, "Permission denied", str(tmp_path / "x" / "rank0.jsonl"))

        src.reader.tick = broken  # type: ignore[method-assign]
        notice = app.query_one("#notice")
        await wait_for(pilot, lambda: notice.has_class("shown"), timeout=5)
        text = notice.content.plain
        assert text.startswith("⚠ reader failed: PermissionError") and "rank0.jsonl" in text
        src.reader.tick = real  # type: ignore[method-assign]
        await pilot.press("q")
    assert app.return_code == 1


def test_run_list_shows_start_time_and_name() -> None:
    import os

    from tui.model.snapshot import RunItem
    from tui.view.widgets.runlist import RunList

    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        item = RunItem(
            "20261126-120000-vrt_spike_baseline-3f2a", "/x", "running", 180, 26550, 1_764_158_400.0
        )
        text = RunList.prompt(item, 20).plain.splitlines()
        assert text == ["● vrt_spike_baseline", "  11-26 12:00  180"]
        assert RunList.prompt(item, 22).plain.splitlines()[1] == "11-26 12:00  180/26550"
        wide = RunList.prompt(item, 30).plain.splitlines()
        assert wide[1] == "  11-26 12:00  180/26550"
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@sync
async def test_a_deleted_log_root_takes_its_runs_off_the_screen(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "logs"
    write_run(root, "20261126-100000-gone-0001", steps=3)
    app = MonitorApp(LiveSource(root, poll=True, interval=0.05, min_gap=0.0))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: _step_of(app) == 3)
        shutil.rmtree(root)
        await wait_for(pilot, lambda: app.world.runs == () and app.world.selected is None)
        await pilot.pause()
        assert app.query_one("#header").content.plain.startswith(
            "stagewatch  waiting for runs under "
        )
        assert app.query_one(StageTree).nodes_by_name == {}


def test_a_region_that_did_not_run_in_the_last_step_shows_a_dash(tmp_path: Path) -> None:
    from tui.view.widgets.tree import Columns, region_label

    run = tmp_path / "r"
    run.mkdir()
    (run / "rank0.jsonl").write_text(
        start_line("r")
        + encode(
            Step(step=1, time=1.0, wall_ms=100.0, regions={"eval": (40.0, 1), "fwd": (50.0, 1)})
        )
        + encode(Step(step=2, time=2.0, wall_ms=60.0, regions={"fwd": (50.0, 1)}))
    )
    src = LiveSource(run, poll=True)
    snap = src.step().selected
    cols = Columns(20, compact=True)
    last = dict(cols.fields()).keys()
    assert list(last)[1] == "last"
    ev = region_label(snap.region("eval"), 0, False, 0.4, 0.1, cols).plain.split()
    fwd = region_label(snap.region("fwd"), 0, False, 0.4, 0.1, cols).plain.split()
    assert ev[3] == "—" and ev[4] == "40.0ms"  # last, avg
    assert fwd[3] == "50.0ms"
    from tui.view.widgets.ranks import rank_text

    _, table = rank_text(snap, "eval", False, 0.4, 0.1)
    cells = table.plain.splitlines()[1].split()
    assert cells[0] == "0" and cells[cells.index("—") + 1] == "40.0ms"  # rank, (strip,) last, avg


def test_removed_or_unreadable_rank_files_are_marked(tmp_path: Path) -> None:

    from tui.view.widgets.files import file_problems
    from tui.view.widgets.ranks import rank_text

    run = write_run(tmp_path, steps=3, ranks=2)
    snap = LiveSource(run, poll=True).step().selected
    f0, f1 = snap.files
    # the reader's flags (FileInfo.state / .problem)
    gone = replace(f1, state="missing", problem="removed")
    bad = replace(
        f0, state="unreadable", problem="PermissionError: [Errno 13] Permission denied\x1b[2J"
    )
    snap = replace(snap, files=(bad, gone))
    assert [why for _, why in file_problems(snap)] == [
        "✖ unreadable: PermissionError: [Errno 13] Permission denied\\x1b[2J",
        "✖ removed",
    ]
    _, table = rank_text(snap, None, False, 0.4, 0.1)
    rows = {r.split()[0]: r for r in table.plain.splitlines()[1:]}  # slowest first
    assert rows["0"].endswith("✖ unreadable: PermissionError: [Errno 13] Permission denied\\x1b[2J")
    assert rows["1"].endswith("✖ removed")


def test_header_and_ranks_show_the_straggler_verdict(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from tui.view.widgets.header import header_text
    from tui.view.widgets.ranks import rank_text

    snap = LiveSource(write_run(tmp_path, steps=3, ranks=2, status=None), poll=True).step().selected
    # the diagnosis' verdict (brief / who_waits), as the snapshot will carry it
    verdict = SimpleNamespace(
        brief=lambda: "straggler rank 1 +98.7ms compute",
        who_waits=lambda: "rank 0 waits 250 ms per step for rank 1 at the all-reduce",
    )
    snap = replace(snap, straggler=1, straggler_excess=98.7, stragglers=verdict)
    head = header_text(snap, window=False, paused=False, behind_step=None, root="", width=80).plain
    assert "straggler rank 1 +98.7ms compute" in head
    _, table = rank_text(snap, None, False, 0.4, 0.1)
    assert (  # first, above the ranks
        table.plain.splitlines()[0] == "rank 0 waits 250 ms per step for rank 1 at the all-reduce"
    )


@sync
async def test_an_unchanged_snapshot_repaints_nothing(tmp_path: Path) -> None:
    from textual.widgets import Static

    write_run(tmp_path, steps=5, ranks=2)
    app = MonitorApp(LiveSource(tmp_path, poll=True, interval=0.05, stale_after=1e9))
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: _step_of(app) == 5)
        await pilot.pause()
        tree = app.query_one(StageTree)
        updates: list[str] = []
        real = Static.update

        def counting(self, *a, **k):  # type: ignore[no-untyped-def]
            updates.append(self.id or type(self).__name__)
            return real(self, *a, **k)

        Static.update = counting  # type: ignore[method-assign]
        refreshes = []
        tree_refresh = tree.refresh
        tree.refresh = lambda *a, **k: refreshes.append(1) or tree_refresh(*a, **k)  # type: ignore[method-assign]
        try:
            rebuilds = tree.rebuilds
            app._render_world()  # the same snapshot again
            app._render_world()
        finally:
            Static.update = real  # type: ignore[method-assign]
            del tree.refresh
        assert updates == [] and refreshes == [] and tree.rebuilds == rebuilds


def test_header_survives_out_of_range_values(tmp_path: Path) -> None:
    import math

    from tui.view.widgets.header import header_text

    snap = LiveSource(write_run(tmp_path, steps=3, status=None), poll=True).step().selected
    for field, value in [
        ("eta_s", math.inf),
        ("mem_peak", 10**400),
        ("mem_total", 10**400),
        ("total_steps", 10**400),
        ("samples_per_s", math.inf),
        ("evals", (("psnr", math.inf),)),
        ("scalars", (("loss", math.inf),)),
    ]:
        text = header_text(
            replace(snap, **{field: value}),
            window=False,
            paused=False,
            behind_step=None,
            root="",
            width=80,
        )
        assert len(text.plain.splitlines()) == 3, field


@sync
async def test_the_readers_cut_rows_show_as_a_dim_row(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from tui.model.snapshot import EMPTY

    write_run(tmp_path, steps=3)
    app = MonitorApp(LiveSource(tmp_path, poll=True, interval=0.05, stale_after=1e9))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: _step_of(app) == 3)
        snap = app.world.selected
        cut = SimpleNamespace(
            name="forward/…",
            leaf="…",
            depth=1,
            parent="forward",
            whole=EMPTY,
            window=EMPTY,
            ranks=(),
            cut=True,
        )
        tree = app.query_one(StageTree)
        tree.show(replace(snap, regions=(*snap.regions, cut)))
        await pilot.pause()
        kids = tree.nodes_by_name["forward"].children
        assert str(kids[-1].label) == "… more regions not shown" and kids[-1].data is None


def test_watch_exits_non_zero_when_the_screen_crashes(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    from tui.cli import main

    write_run(tmp_path, steps=3)

    def crash(self, *a, **k):  # type: ignore[no-untyped-def]
        self._return_code = 1  # what Textual sets after an unhandled exception in the app
        return None

    monkeypatch.setattr(MonitorApp, "run", crash)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    assert main(["watch", str(tmp_path)]) == 1


@sync
async def test_one_run_failing_to_be_read_is_shown_while_the_other_stays_live(
    tmp_path: Path,
) -> None:
    root = tmp_path / "logs"
    bad = write_run(root, "20261126-100000-bad-0001", steps=3, status=None, t0=1_000_000_000.0)
    live = _live_run(root, "20261126-150000-live-0002")
    src = LiveSource(root, poll=True, interval=0.05, min_gap=0.0, stale_after=1e9)
    app = MonitorApp(src)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: _step_of(app) == 5)
        broken = next(r for r in src.reader.runs.values() if r.run_id == bad.name)

        def fail(*a, **k):  # type: ignore[no-untyped-def]
            raise PermissionError(13, "Permission denied", str(bad / "rank0.jsonl"))

        broken.poll = fail  # type: ignore[method-assign]
        broken.closed = False
        _append(live, 6, 2)  # the live run keeps updating
        await wait_for(pilot, lambda: _step_of(app) == 7)
        src.select(bad.name)
        notice = app.query_one("#notice")
        await wait_for(pilot, lambda: notice.has_class("shown"))
        assert "PermissionError" in notice.content.plain and "rank0.jsonl" in notice.content.plain
        await pilot.press("q")
    assert app.return_code == 1
