"""The monitor app driven with Pilot: watch, replay, help, palette, pause, filter."""

from __future__ import annotations

import asyncio
import functools
import io
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from textual.command import CommandPalette

from trainer.timing.records import Step, encode
from tui.app import MonitorApp
from tui.live import LiveSource
from tui.replay import ReplaySource
from tui.testing import start_line, step_records, write_run
from tui.widgets.help import HelpScreen
from tui.widgets.tree import StageTree


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
        assert [r.run_id for r in app.world.runs] == ["20261126-150000-live-0001", "20261126-100000-old-0001"]
        tree = app.query_one(StageTree)
        rebuilds = tree.rebuilds
        node_ids = {n: id(node) for n, node in tree.nodes_by_name.items()}
        label_before = str(tree.nodes_by_name["backward"].label)
        _append(run, 6, 5)
        await wait_for(pilot, lambda: _step_of(app) == 10)
        assert tree.rebuilds == rebuilds  # values changed, shape did not: labels updated in place
        assert {n: id(node) for n, node in tree.nodes_by_name.items()} == node_ids
        assert str(tree.nodes_by_name["backward"].label) != label_before

        await pilot.press("p")  # pause: the screen holds, reading goes on
        assert app.paused
        _append(run, 11, 3)
        await wait_for(pilot, lambda: app.latest is not None and app.latest.selected.step == 13)
        assert _step_of(app) == 10
        await pilot.press("p")
        assert _step_of(app) == 13

        await pilot.press("slash")
        await pilot.press(*"stage8")
        await pilot.press("enter")
        await pilot.pause()
        assert set(tree.nodes_by_name) == {"forward", "forward/vrt", "forward/vrt/stage8", "(unaccounted)"}
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
        assert "window of 100 steps" in str(app.query_one("#tree-box").border_title)

        await pilot.press("n")  # next run
        await wait_for(pilot, lambda: app.world.selected.run_id == "20261126-100000-old-0001")
        assert app.world.selected.state == "finished"
        await pilot.press("N")
        await wait_for(pilot, lambda: app.world.selected.run_id == "20261126-150000-live-0001")

        # a new run folder appears without restart
        write_run(root, "20261126-160000-new-0003", steps=2, status=None, t0=2_100_000_000.0)
        await wait_for(pilot, lambda: len(app.world.runs) == 3)
        assert app.world.runs[0].run_id == "20261126-160000-new-0003"

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
        for d in ["Quit", "Pause/resume", "Filter regions", "Expand all", "Next run", "Recent window"]:
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
        await wait_for(pilot, lambda: _step_of(app) == 30 and app.world.selected.state == "finished")
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
    (run / "rank0.jsonl").write_text(start_line("[b]run") + encode(Step(step=1, time=1.0, wall_ms=100.0, regions=regions)))
    app = MonitorApp(ReplaySource(run, playing=False))
    async with app.run_test(size=(160, 40)) as pilot:
        app.source.command(app.source.jump_end)
        await wait_for(pilot, lambda: _step_of(app) == 1)
        tree = app.query_one(StageTree)
        labels = [tree.nodes_by_name[n].label.plain for n in ("[bold]x", "[link=http:", "[red]oops[", "[red]oops[/red]")]
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
        assert app.query_one("#header").content.plain.startswith("stagewatch  waiting for runs under ")
        write_run(root, "20261126-100000-late-0001", steps=3)
        await wait_for(pilot, lambda: _step_of(app) == 3)
        assert app.world.selected.state == "finished"


def test_replay_of_a_text_log_ends_finished(tmp_path: Path) -> None:
    from tui.testing import text_log_block

    log = tmp_path / "timing_old.log"
    log.write_text("".join(text_log_block(i, [("VRT", 150.0, [("Stage1", 25.0)])], 200.0) for i in range(1, 6)))
    src = ReplaySource(log, playing=False)
    src.forward(2)
    assert src.build().selected.state == "running"
    src.jump_end()
    snap = src.build().selected
    assert snap.step == 5 and snap.state == "finished"
    assert snap.region("VRT/Stage1").whole.calls == 5
