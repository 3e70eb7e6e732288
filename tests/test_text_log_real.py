"""The original TimingLogger's files as it really named and wrote them (a re-implementation
of the logger the brief describes, driven like the VRT trainer): every variant read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _orig_log import original_log

from stagewatch.runs import is_text_log
from tui.cli import main
from tui.source.textlog import parse_text


def _summary(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    capsys.readouterr()
    assert main(["summary", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "name", ["timing_log_20260101_120000.txt", "timing_log.txt", "timing.log", "TIMING_log.TXT"]
)
def test_the_original_loggers_file_names_are_text_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert is_text_log(name)
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_text(original_log(40))
    assert _summary(capsys, str(run))["steps"] == 40  # the folder, not only the file
    out = tmp_path / "steps.csv"
    assert main(["export", "--format", "csv", "-o", str(out), str(run / name)]) == 0
    assert len(out.read_text().splitlines()) > 40


def test_other_files_are_not_text_logs() -> None:
    for name in ("timings.txt", "notes.txt", "timing_log.txt.bak", "train.log", "timing.csv"):
        assert not is_text_log(name)


def _block(step: int, lines: list[tuple[str, float]]) -> str:
    """One block as the original wrote it: ``{name:<40s} : {ms:8.2f}ms ({pct:5.1f}%) ...``."""
    total = sum(ms for _, ms in lines)
    out = ["=" * 80, f"Step {step}", "=" * 80]
    for name, ms in lines:
        pct = ms / total * 100 if total else 0.0
        out.append(f"{name:<40s} : {ms:8.2f}ms ({pct:5.1f}%) [avg: {ms:8.2f}ms]")
    out.append(f"{'Total':-<40s}: {total:8.2f}ms")
    return "\n".join(out) + "\n\n"


def test_a_name_holding_a_time_keeps_its_own_value(tmp_path: Path) -> None:
    text = _block(1, [("ms: 3.00ms", 2.34), ("Loss", 50.0)])
    steps, bad = parse_text(text)
    assert bad == 0 and steps[0].regions == {"ms: 3.00ms": (2.34, 1), "Loss": (50.0, 1)}


def test_an_unreadable_text_log_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "timing_log_x.txt"
    log.write_text("\nhello\n\nworld\n")  # blank lines count in the line number
    assert main(["summary", str(log)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "line 4: unrecognised line: 'world'" in err
    # and a stray line between good blocks: its line number in the file's report
    log.write_text(_block(1, [("VRT", 5.0)]) + "oops\n" + _block(2, [("VRT", 6.0)]))
    d = json.loads((main(["summary", "--json", str(log)]), capsys.readouterr().out)[1])
    assert d["steps"] == 2 and d["files"][0]["last_error"].startswith("line 7: ")


def test_one_launchs_processes_each_with_its_own_file_are_its_ranks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The original wrote one file per process, named by its start time, no rank: files
    started together are one launch's ranks; one started hours later is the next launch."""
    run = tmp_path / "run"
    run.mkdir()
    for i, stamp in enumerate(("20260101_120000", "20260101_120001", "20260101_120003")):
        (run / f"timing_log_{stamp}.txt").write_text(original_log(30, seed=i + 1))
    (run / "timing_log_20260101_160000.txt").write_text(original_log(50, seed=9))
    d = _summary(capsys, str(run))
    assert d["ranks"] == [0, 1, 2] and sorted(f["rank"] for f in d["files"]) == [0, 1, 2]
    assert d["steps"] == 30 and d["step_ms"]["steps"] == 90  # 30 steps of each rank
    assert d["files_not_read"] == ["timing_log_20260101_160000.txt"]


def test_stdout_in_the_same_file_tqdm_bars_and_a_panel_redrawn_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tqdm writes "\\r" + bar and no newline, so the file's next line follows the bar; the
    panel redrawn in place carries cursor moves. Neither may cost a block or add a region."""
    bar = "\rEpoch 1:  {0}%|█▏        | {0}/40 [00:24<02:56,  2.00s/it, loss=0.31]"
    panel = "\x1b[3A\x1b[2K┌─ Timing Profile (Step {0}) ───\n\x1b[2K└─ Total:  620.0ms ───\n"
    text = ""
    for s in range(1, 41):
        block = _block(s, [("VRT", 100.0 + s), ("Loss", 5.0)])
        head, _, rest = block.partition(f"Step {s}\n")
        text += bar.format(s) + head + bar.format(s) + f"Step {s}\n"
        text += rest.replace("Loss", panel.format(s) + bar.format(s) + "Loss")
    steps, bad = parse_text(text)
    assert len(steps) == 40 and bad == 80  # the two panel lines of each block, counted
    assert all(set(x.regions) == {"VRT", "Loss"} for x in steps)
    assert steps[-1].regions["VRT"] == (140.0, 1)


def test_export_reads_a_text_log_given_by_any_name_as_summary_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "train_timings.txt"
    log.write_text(original_log(20))
    assert _summary(capsys, str(log))["steps"] == 20
    out = tmp_path / "steps.csv"
    assert main(["export", "--format", "csv", "-o", str(out), str(log)]) == 0
    assert len(out.read_text().splitlines()) == 21
    trace = tmp_path / "trace.json"
    assert main(["export", "-o", str(trace), str(log)]) == 0
    assert json.loads(trace.read_text())
    (tmp_path / "notes.jsonl").write_text("not a record\n")  # a .jsonl still must be records
    assert main(["export", "-o", str(tmp_path / "x.csv"), str(tmp_path / "notes.jsonl")]) == 2


def test_a_region_the_user_named_total_does_not_end_the_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "".join(
        _block(s, [("Total", 600.0 + s), ("Forward total", 200.0), ("Backward", 390.0)])
        for s in range(1, 41)
    )
    steps, bad = parse_text(text)
    assert bad == 0 and len(steps) == 40
    assert set(steps[0].regions) == {"Total", "Forward total", "Backward"}
    d = _summary(capsys, str(_write_log(tmp_path, text)))
    # the user's "Total" holds the other two: the timed total is it, not the sum of all
    assert d["step_ms"]["avg_ms"] == pytest.approx(620.5)


def _write_log(tmp_path: Path, text: str) -> Path:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "timing_log_20260101_120000.txt").write_text(text)
    return run


def test_debug_mode_lines_inside_a_block_are_not_regions() -> None:
    """The debug mode printed each module's time and output shape for one forward pass, and
    log messages; with stdout in the file they may land inside a block."""
    debug = [
        "[DEBUG] Spike encoder scale0: 1.23ms",
        "VRT Stage1: 25.00ms, output shape torch.Size([1, 6, 96, 64, 64])",
        "TSA scale0: 12.00ms (6 blocks, 2.00ms/block)",
        "Fusion: 3.10ms -> (1, 6, 3, 256, 256)",
        "INFO: data: 0.10ms",
    ]
    text = ""
    for s in range(1, 11):
        block = _block(s, [("VRT", 100.0), ("Loss", 5.0)])
        text += block.replace("Loss", "\n".join(debug) + "\nLoss")
    steps, bad = parse_text(text)
    assert len(steps) == 10 and bad == 10 * len(debug)
    assert all(set(x.regions) == {"VRT", "Loss"} for x in steps)


def test_nul_bytes_a_crash_left_before_the_next_block_lose_no_step() -> None:
    """A machine crash can leave a file's unwritten tail as NULs; the restarted process
    appends after them, so a Step header may follow NULs on its line."""
    text = _block(1, [("VRT", 5.0)]) + _block(2, [("VRT", 6.0)])
    text += "\0" * 100 + _block(1, [("VRT", 7.0)]).lstrip("=\n")  # "\0...\0Step 1"
    steps, bad = parse_text(text)
    assert [s.step for s in steps] == [1, 2, 3] and steps[-1].regions == {"VRT": (7.0, 1)}
    assert bad == 0


def test_a_coloured_console_panel_inside_a_block_is_not_a_region() -> None:
    footer = "\x1b[1m\x1b[33m└─ Total:  620.0ms ──────\x1b[0m\n"
    text = _block(1, [("VRT", 5.0), ("Loss", 1.0)]).replace("Loss", footer + "Loss")
    steps, bad = parse_text(text)
    assert steps[0].regions == {"VRT": (5.0, 1), "Loss": (1.0, 1)} and bad == 1


def test_processes_appending_to_one_file_lose_no_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three processes started in the same second share the file name; each appends its 50
    blocks at a flush: Step 1-50 three times, then 51-100 three times. The later chunks go
    on with an earlier count, not a stray repeat: no process's blocks supersede another's."""
    chunks = []
    for lo in (1, 51):
        for rank in range(3):
            chunks += [
                _block(s, [("VRT", 100.0 + rank), ("Loss", 5.0)]) for s in range(lo, lo + 50)
            ]
    d = _summary(capsys, str(_write_log(tmp_path, "".join(chunks))))
    f = d["files"][0]
    assert d["step_ms"]["steps"] == 300 and f["superseded"] == 0
    assert f["restarts"] == 2 and f["interleaved"] >= 1
    vrt = next(r for r in d["regions"] if r["name"] == "VRT")
    assert vrt["avg_ms"] == pytest.approx(101.0) and vrt["steps"] == 300
    assert main(["summary", str(_write_log(tmp_path, "".join(chunks)))]) == 0
    assert "several processes wrote into" in capsys.readouterr().out


def test_a_quick_relaunch_is_not_a_second_rank(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A launch that crashed at 12:00:20 and its relaunch at 12:00:40: close in time, but the
    first file was no longer written when the second began, so it is not a rank."""
    import os
    from datetime import datetime

    run = tmp_path / "run"
    run.mkdir()
    a = run / "timing_log_20260101_120000.txt"
    a.write_text(original_log(10))
    crash = datetime(2026, 1, 1, 12, 0, 20).timestamp()
    os.utime(a, (crash, crash))
    (run / "timing_log_20260101_120040.txt").write_text(original_log(30, seed=2))
    d = _summary(capsys, str(run))
    assert d["ranks"] == [0] and d["files_not_read"] == ["timing_log_20260101_120040.txt"]


def test_a_blank_step_block_is_not_a_0_ms_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Step header with no region (a crash between the header and its lines, or a flush
    cut there) was a 0 ms step dragging the step statistics down."""
    blank = "=" * 80 + "\nStep 3\n" + "=" * 80 + "\n\n"
    text = _block(1, [("VRT", 100.0)]) + _block(2, [("VRT", 100.0)]) + blank
    text += _block(4, [("VRT", 100.0)])
    steps, bad = parse_text(text)
    assert [s.step for s in steps] == [1, 2, 4] and bad == 0
    d = _summary(capsys, str(_write_log(tmp_path, text + blank)))  # and one at the end
    assert d["step_ms"]["steps"] == 3 and d["step_ms"]["min_ms"] == pytest.approx(100.0)
    assert d["files"][0]["blank_blocks"] == 2
    assert main(["summary", str(_write_log(tmp_path, text))]) == 0
    assert "empty Step blocks in " in capsys.readouterr().out


def test_a_line_over_the_limit_names_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line over 4 MiB (a tensor printed into the log) is dropped unread; its error said
    'line longer than ... bytes' with no line number, and later lines' numbers were one off."""
    from stagewatch.records import MAX_LINE_BYTES

    head = _block(1, [("VRT", 5.0)])  # 5 lines, the 6th blank
    huge = "x" * (MAX_LINE_BYTES + 10) + "\n"  # line 7
    run = _write_log(tmp_path, head + huge + _block(2, [("VRT", 6.0)]))
    d = _summary(capsys, str(run))
    f = d["files"][0]
    assert d["steps"] == 2 and f["malformed"] == 1
    assert f["last_error"].startswith("line 7: longer than "), f["last_error"]
    # a bad line after it keeps its true number
    (run / "timing_log_20260101_120000.txt").write_text(head + huge + "oops\n" + head)
    f = _summary(capsys, str(run))["files"][0]
    assert f["last_error"].startswith("line 8: unrecognised line"), f["last_error"]


def test_a_file_of_several_processes_says_why_it_is_one_rank(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chunks = [
        _block(s, [("VRT", 100.0 + r)]) for lo in (1, 3) for r in (0, 1) for s in (lo, lo + 1)
    ]
    f = _summary(capsys, str(_write_log(tmp_path, "".join(chunks))))["files"][0]
    assert f["interleaved"] >= 1 and "carry no rank, process id or time" in f["interleaved_why"]


@pytest.mark.parametrize("kind", ["text", "jsonl"])
def test_a_line_the_tail_drops_in_parts_names_its_line(tmp_path: Path, kind: str) -> None:
    """Read live in chunks, a line over 4 MiB is dropped by the tail as it comes: its error
    had no line number, and the lines after it were numbered one short."""
    from stagewatch.records import MAX_LINE_BYTES
    from tui.source.feed import Feed

    if kind == "text":
        head, bad = _block(1, [("VRT", 5.0)]), "oops\n"  # 5 lines and a blank one
    else:
        head, bad = '{"kind": "nope"}\n' * 6, "{oops\n"
    path = tmp_path / ("timing.log" if kind == "text" else "rank0.jsonl")
    path.write_text(head + "x" * (MAX_LINE_BYTES + 300_000) + "\n")  # line 7, read in parts
    feed = Feed(str(path), 0, kind)

    def read_all() -> str:
        while True:
            lines, _, more = feed.tail.read()
            if lines:
                feed.parse(lines)
            if not more:
                return feed.info().last_error

    assert read_all().startswith("line 7: longer than ")
    with open(path, "a") as f:
        f.write(bad)  # line 8
    assert read_all().startswith("line 8: "), feed.info().last_error
