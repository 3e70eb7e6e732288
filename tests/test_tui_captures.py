"""Captured steps in the monitor: listed from traces/, a header marker, a notice, the key."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from rich.text import Text
from test_tui_app import _live_run, sync, wait_for

from stagewatch import traces
from tui.source.live import LiveSource
from tui.source.reader import RunSource
from tui.testing import write_run
from tui.view.app import MonitorApp
from tui.view.notices import Captures
from tui.view.widgets.header import header_text


def _trace(run: Path, step: int, rank: int) -> None:
    p = Path(traces.trace_path(run, step, rank))
    p.parent.mkdir(exist_ok=True)
    with gzip.open(p, "wt") as f:
        json.dump({"traceEvents": []}, f)


def test_the_source_lists_the_runs_traces(tmp_path: Path) -> None:
    run = write_run(tmp_path, "r1", steps=10, ranks=2)
    (run / "traces").mkdir()
    (run / "traces" / "notes.txt").write_text("not a trace")
    _trace(run, 5, 1)
    _trace(run, 5, 0)
    snap = RunSource(run).load().snapshot()
    assert snap.captures == ((5, 0), (5, 1))
    line = header_text(snap, window=False, paused=False, behind_step=None, root="", width=200)
    assert "⏺ 2 traces (last step 5 r1)" in line.plain
    narrow = header_text(snap, window=False, paused=False, behind_step=None, root="", width=60)
    assert isinstance(narrow, Text)  # the marker is dropped before the kept fields


def test_a_run_without_traces_has_none(tmp_path: Path) -> None:
    snap = RunSource(write_run(tmp_path, "r2", steps=3)).load().snapshot()
    assert snap.captures == ()
    assert (
        "trace"
        not in header_text(
            snap, window=False, paused=False, behind_step=None, root="", width=200
        ).plain
    )


def test_a_notice_for_each_new_trace_not_for_old_ones(tmp_path: Path) -> None:
    run = write_run(tmp_path, "r3", steps=3)
    _trace(run, 2, 0)
    src = RunSource(run).load()
    c = Captures()
    assert c.see(src.snapshot()) is None  # there when the run was first shown
    _trace(run, 3, 0)
    src._traces_at = -1e9  # (listed at most once a second)
    src.poll()
    msg = c.see(src.snapshot())
    assert msg is not None and "step 3, rank 0" in msg and "step3.rank0.json.gz" in msg
    assert c.see(src.snapshot()) is None  # once


@sync
async def test_the_t_key_asks_the_running_run_for_a_trace(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    run = _live_run(root)
    app = MonitorApp(LiveSource(root, poll=True, interval=0.05, min_gap=0.0))
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: app.world is not None and app.world.selected is not None)
        await pilot.press("t")
        await wait_for(pilot, lambda: (run / traces.REQUEST_FILE).exists())
        d = json.loads((run / traces.REQUEST_FILE).read_text())
        assert d["steps"] == 1
        _trace(run, 6, 0)  # the logger's answer
        await wait_for(pilot, lambda: bool(app.world and app.world.selected.captures))
        await pilot.pause(0.1)
        notes = [str(n.message) for n in app._notifications]
        assert any("profiler trace of step 6" in n for n in notes), notes


def test_a_parallel_read_lists_the_traces_too(tmp_path: Path) -> None:
    run = write_run(tmp_path, "r4", steps=20, ranks=2)
    _trace(run, 7, 1)
    assert RunSource(run).load(parallel=True).snapshot().captures == ((7, 1),)
