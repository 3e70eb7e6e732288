"""Screen snapshots (pytest-textual-snapshot) of watch and replay at 80x24, 120x40, 160x45 and
200x60, of a 64-rank run and of the chart.

Data are fixed (seeded generator, fixed times), the reader's clock is frozen and times are
shown in UTC, so the pictures are deterministic. Update with ``pytest --snapshot-update``
after a deliberate change (only for the tests that changed), and look at the SVGs.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stagewatch.records import encode
from tui.source.live import LiveSource
from tui.source.replay import ReplaySource
from tui.testing import start_line, step_records, write_run
from tui.view.app import MonitorApp

SIZES = [(80, 24), (120, 40), (160, 45), (200, 60)]


@pytest.fixture(autouse=True)
def _utc() -> Iterator[None]:
    """Start times in the runs list are local: pin the zone."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


async def _settle(pilot) -> None:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while pilot.app.world is None or pilot.app.world.selected is None:
        if time.monotonic() - t0 > 10:
            raise AssertionError("no snapshot arrived")
        await pilot.pause(0.02)
    await pilot.pause()
    await _steady(pilot)


def still() -> float:
    """The screen's clock for "last write … ago" between snapshots: the sources' clocks are
    frozen, and this keeps a slow render from adding a second (0s / 1s ago, now and then)."""
    return 0.0


async def _steady(pilot) -> None:  # type: ignore[no-untyped-def]
    """Until the panels' heights stop changing: the screen shares its height after a
    refresh (call_after_refresh), so a loaded machine could catch it half-way."""

    def shape() -> tuple[object, ...]:
        try:
            app = pilot.app
            heights = [str(app.query_one(q).styles.height) for q in ("#lower", "#ranks")]
            return (*heights, app.query_one("#tree-box").outer_size)
        except Exception:
            return ()

    last, same, t0 = shape(), 0, time.monotonic()
    while same < 3 and time.monotonic() - t0 < 3:
        await pilot.pause(0.05)
        now = shape()
        same = same + 1 if now == last else 0
        last = now


def _runs(root: Path) -> None:
    write_run(
        root,
        "20261126-100000-baseline-0001",
        steps=60,
        ranks=3,
        straggler=1,
        eval_every=20,
        t0=1_764_150_000.0,
    )
    failed = write_run(
        root, "20261126-090000-crashed-0002", steps=10, ranks=1, status=None, t0=1_764_140_000.0
    )
    with open(failed / "rank0.jsonl", "a") as f:
        f.write("{not json\n")
        f.write(encode_end_failed())


def encode_end_failed() -> str:
    from stagewatch.records import RunEnd, RunError

    return encode(
        RunEnd(
            time=1_764_140_100.0,
            status="failed",
            steps=10,
            error=RunError("RuntimeError", "CUDA out of memory [bold]"),
        )
    )


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_watch_screen(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    _runs(tmp_path)
    src = LiveSource(tmp_path, poll=True, interval=0.05, clock=lambda: 1000.0)
    assert snap_compare(MonitorApp(src, clock=still), terminal_size=size, run_before=_settle)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_replay_screen(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    _runs(tmp_path)
    src = ReplaySource(tmp_path / "20261126-100000-baseline-0001", playing=False, window=20)
    src.seek(45)
    assert snap_compare(
        MonitorApp(src, red=0.5, yellow=0.2, clock=still), terminal_size=size, run_before=_settle
    )


def test_failed_run_and_help_screen(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _runs(tmp_path)
    src = ReplaySource(tmp_path / "20261126-090000-crashed-0002", playing=False)
    src.seek(math.inf)

    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await _settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(MonitorApp(src, clock=still), terminal_size=(120, 40), run_before=before)


def test_new_run_notice_on_a_narrow_screen(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    live = tmp_path / "20261126-100000-live-0001"
    live.mkdir()
    (live / "rank0.jsonl").write_text(
        start_line(live.name, t0=1_764_150_000.0)
        + "".join(encode(r) for r in step_records(5, t0=1_764_150_000.0))
    )
    src = LiveSource(tmp_path, poll=True, interval=0.05, clock=lambda: 1000.0, stale_after=1e9)

    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await _settle(pilot)
        write_run(tmp_path, "20261126-110000-next-0002", steps=2, status=None, t0=1_764_160_000.0)
        t0 = time.monotonic()
        while pilot.app.new_run is None:
            if time.monotonic() - t0 > 10:
                raise AssertionError("no notice")
            await pilot.pause(0.02)
        await pilot.pause()
        await _steady(pilot)

    assert snap_compare(MonitorApp(src, clock=still), terminal_size=(80, 24), run_before=before)


def test_64_ranks_on_one_screen(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The ranks panel at 64 ranks: the verdict first, slowest first, heat strips."""
    write_run(
        tmp_path, "20261126-100000-wide-0001", steps=40, ranks=64, straggler=5, t0=1_764_150_000.0
    )
    src = LiveSource(tmp_path, poll=True, interval=0.05, clock=lambda: 1000.0)
    assert snap_compare(MonitorApp(src, clock=still), terminal_size=(160, 45), run_before=_settle)


def test_the_chart_per_rank_of_a_selected_stage(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The chart of a region selected in the tree (forward), per rank (g)."""
    _runs(tmp_path)
    src = ReplaySource(tmp_path / "20261126-100000-baseline-0001", playing=False)
    src.seek(math.inf)

    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await _settle(pilot)
        for key in ("down", "down", "g"):  # the cursor to forward; per rank
            await pilot.press(key)
        await pilot.pause()

    assert snap_compare(MonitorApp(src, clock=still), terminal_size=(160, 45), run_before=before)
