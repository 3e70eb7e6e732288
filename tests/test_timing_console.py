"""The console panel: in place on a terminal (never over other output), lines elsewhere."""

from __future__ import annotations

import io
import sys

import pytest

import stagewatch.timing.regions as regions
from stagewatch.timing import TimingLogger, log_timing, set_global_timing_logger
from stagewatch.timing.console import Console, panel_lines, summary_line

UP = "\x1b["  # start of a cursor movement


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def fake_steps(lg: TimingLogger, clock: list[float], n: int) -> None:
    for _ in range(n):
        log_timing("forward", 280.0)
        log_timing("forward/vrt", 150.0)
        log_timing("backward", 300.0)
        log_timing("optimizer", 20.0)
        clock[0] += 0.620
        lg.step(samples=2)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    c = [100.0]
    monkeypatch.setattr(regions, "_perf", lambda: c[0])
    return c


def test_panel_on_a_terminal_redraws_in_place(tmp_path, clock, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    tty = FakeTTY()
    lg = TimingLogger(
        tmp_path,
        console_update_interval=5,
        console_stream=tty,
        enable_file=False,
        handle_sigterm=False,
        collect_memory=False,
    )
    set_global_timing_logger(lg)
    fake_steps(lg, clock, 4)
    assert tty.getvalue() == ""  # not yet: every 5 steps
    fake_steps(lg, clock, 1)
    first = tty.getvalue()
    lines = first.splitlines()
    assert UP not in first
    assert lines[0].startswith("┌─ Timing Profile (Step 5) ")
    assert lines[1].startswith("│ backward ") and lines[1].endswith("300.0ms  48.4%")
    assert "█" * 15 + "░" * 15 in lines[1]  # 48.4% of a 30-cell bar
    assert lines[2].startswith("│ forward ") and lines[2].endswith("280.0ms  45.2%")
    assert lines[3].startswith("│ forward/vrt ") and lines[3].endswith("150.0ms  24.2%")
    assert lines[5].startswith("│ (unaccounted) ") and lines[5].endswith(" 20.0ms   3.2%")
    assert lines[-1].startswith("└─ Total:    620.0ms 1.61 steps/s, 3.23 samples/s ")
    assert len(lines) == 7  # header, 4 regions (fewer than 5 exist), unaccounted, footer
    fake_steps(lg, clock, 5)
    second = tty.getvalue()[len(first) :]
    assert second.startswith("\x1b[7A\r\x1b[J┌─ Timing Profile (Step 10) ")
    lg.close()


def test_panel_never_overwrites_other_output(capsys):
    # the terminal is sys.stdout (here pytest's capture) and is watched through a proxy
    con = Console(tty=True)
    top = [("forward", 50.0)]
    try:
        con.update(1, 100.0, top, 50.0)
        con.update(2, 100.0, top, 50.0)  # nothing in between: in place
        print("epoch 1 done")  # somebody else prints
        con.update(3, 100.0, top, 50.0)  # must not move over that line
        sys.stderr.write("a warning\n")
        con.update(4, 100.0, top, 50.0)
        con.update(5, 100.0, top, 50.0)
    finally:
        con.close()
    assert type(sys.stdout).__name__ != "_WriteWatch"  # the proxy is gone after close
    out = capsys.readouterr().out
    blocks = out.split("┌─ Timing Profile")
    assert [b.endswith("\x1b[4A\r\x1b[J") for b in blocks[:-1]] == [False, True, False, False, True]
    assert "epoch 1 done\n\x1b" not in out
    assert "epoch 1 done\n┌─ Timing Profile (Step 3)" in out


def test_line_fallback_when_not_a_terminal(tmp_path, clock):
    out = io.StringIO()
    lg = TimingLogger(
        tmp_path,
        console_update_interval=2,
        console_stream=out,
        enable_file=False,
        handle_sigterm=False,
        collect_memory=False,
    )
    set_global_timing_logger(lg)
    fake_steps(lg, clock, 4)
    lg.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\x1b" not in out.getvalue()
    assert lines[1] == (
        "[timing] step 4 | wall 620.0ms 1.61 steps/s, 3.23 samples/s | backward 300.0ms 48.4% | "
        "forward 280.0ms 45.2% | forward/vrt 150.0ms 24.2% | optimizer 20.0ms 3.2% | "
        "unaccounted 20.0ms 3.2%"
    )


def test_only_rank_0_draws(tmp_path, clock):
    out = FakeTTY()
    lg = TimingLogger(
        tmp_path,
        console_update_interval=1,
        console_stream=out,
        rank=1,
        world_size=2,
        run_id="r",
        handle_sigterm=False,
        collect_memory=False,
    )
    set_global_timing_logger(lg)
    fake_steps(lg, clock, 3)
    lg.close()
    assert out.getvalue() == ""


def test_panel_fits_narrow_terminals_and_sanitizes_names():
    lines = panel_lines(3, 10.0, [("a/very/long/region/name/for/the/panel\x1b[2J", 5.0)], 1.0, 30)
    assert all(len(ln) <= 29 for ln in lines)
    assert "\x1b" not in "".join(lines)
    line = summary_line(3, 0.0, [("x\n", 1.0)], 0.0)
    assert "\n" not in line and "x? 1.0ms -" in line


def test_throughput_under_ddp_is_labelled_global_and_per_rank(tmp_path, clock):
    out = io.StringIO()
    lg = TimingLogger(
        tmp_path,
        console_update_interval=2,
        console_stream=out,
        enable_file=False,
        handle_sigterm=False,
        collect_memory=False,
        rank=0,
        world_size=4,
        run_id="ddp",
    )
    set_global_timing_logger(lg)
    fake_steps(lg, clock, 2)
    lg.close()
    set_global_timing_logger(None)
    assert "1.61 steps/s, 12.90 samples/s global (3.23/rank × 4) |" in out.getvalue()
