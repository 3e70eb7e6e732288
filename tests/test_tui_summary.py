"""``tui summary``: text and JSON, errors, literal log strings; the tui never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stagewatch.records import Step, encode
from tui.cli import main
from tui.report.summary import open_run, summary_dict, summary_text
from tui.testing import start_line, text_log_block, write_run

ROOT = Path(__file__).resolve().parent.parent
NASTY = ["[bold]x", "[/]", "[link=http://x]y", "a/[red]b[/red]"]


def _hand_run(tmp_path: Path) -> Path:
    run = tmp_path / "20261126-120000-hand-0001"
    run.mkdir()
    lines = [start_line(run.name, total_steps=4)]
    for i, (f, b) in enumerate([(30.0, 60.0), (50.0, 40.0)], start=1):
        lines.append(
            encode(
                Step(
                    step=i,
                    time=float(i),
                    wall_ms=100.0,
                    samples=2,
                    regions={"forward": (f, 1), "backward": (b, 1), "backward/x": (b / 4, 3)},
                )
            )
        )
    (run / "rank0.jsonl").write_text("".join(lines))
    return run


def test_summary_json_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _hand_run(tmp_path)
    assert main(["summary", str(run), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["state"] == "running" or d["state"] == "stale"
    assert d["steps"] == 2 and d["total_steps"] == 4
    assert d["samples_per_s"] == pytest.approx(4 / 0.2)
    by = {r["name"]: r for r in d["regions"]}
    assert list(by) == [
        "backward",
        "backward/x",
        "forward",
    ]  # by share of time (default --sort time)
    assert d["span"] == {"kind": "whole", "label": "whole run (2 steps)"} and d["sort"] == "time"
    fwd, bwd = by["forward"], by["backward"]
    assert (fwd["last_ms"], fwd["avg_ms"], fwd["min_ms"], fwd["max_ms"], fwd["count"]) == (
        50.0,
        40.0,
        30.0,
        50.0,
        2,
    )
    assert fwd["share"] == pytest.approx(0.4) and fwd["class"] == "red"
    assert bwd["share"] == pytest.approx(0.5) and bwd["class"] == "red"
    assert by["backward/x"]["class"] == "yellow" and by["backward/x"]["count"] == 6
    assert d["unaccounted"]["avg_ms"] == pytest.approx(10.0)
    assert d["files"][0]["malformed"] == 0


def test_summary_thresholds_change_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _hand_run(tmp_path)
    assert main(["summary", str(run), "--json", "--red", "45%", "--yellow", "20"]) == 0
    by = {r["name"]: r["class"] for r in json.loads(capsys.readouterr().out)["regions"]}
    assert by == {"forward": "yellow", "backward": "red", "backward/x": "green"}


def test_summary_text_has_tree_and_no_ansi_when_piped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = write_run(tmp_path, steps=5, ranks=2)
    assert main(["summary", str(run)]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out
    lines = out.splitlines()
    assert "finished" in lines[0] and "step 5/100" in lines[0]
    assert any(line.startswith("backward ") and " red " in line for line in lines)
    assert any(line.startswith("    stage8 ") for line in lines)  # nested under forward/vrt
    assert any(line.startswith("(unaccounted)") for line in lines)


def test_summary_text_colours_on_a_tty(tmp_path: Path) -> None:
    run = write_run(tmp_path, steps=3)
    code = (
        "import sys; sys.stdout.isatty = lambda: True; from tui.cli import main; "
        f"sys.exit(main(['summary', {str(run)!r}]))"
    )
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"}
    env.pop("NO_COLOR", None)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "\x1b[" in out.stdout


@pytest.mark.parametrize("make", ["missing", "empty_dir", "garbage", "loop"])
def test_summary_bad_run_exits_2_with_one_line(
    tmp_path: Path, make: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "x"
    if make == "empty_dir":
        target.mkdir()
    elif make == "garbage":
        target.mkdir()
        (target / "rank0.jsonl").write_text("not json\n{also not\n")
    elif make == "loop":
        target.mkdir()
        (target / "rank0.jsonl").symlink_to(target / "other")
        (target / "other").symlink_to(target / "rank0.jsonl")
    assert main(["summary", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tui summary: error: ") and "\n" not in err
    assert str(target) in err
    if make == "garbage":
        assert "2 malformed lines" in err
    if make == "loop":
        assert "symlink loop" in err and "permission" not in err


def test_summary_of_rank_file_and_text_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = write_run(tmp_path, steps=4, ranks=2)
    assert main(["summary", str(run / "rank1.jsonl"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["ranks"] == [1] and d["steps"] == 4 and d["run_id"] == run.name
    log = tmp_path / "timing_20250101.log"
    log.write_text(
        text_log_block(1, [("Forward total", 280.0, []), ("VRT", 150.0, [("Stage1", 25.0)])], 620.0)
    )
    assert main(["summary", str(log), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["state"] == "finished" and [r["name"] for r in d["regions"]] == [
        "Forward total",
        "VRT",
        "VRT/Stage1",
    ]
    assert d["regions"][0]["share"] == pytest.approx(280 / 620, abs=1e-4)


def test_markup_in_region_names_is_literal(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    regions = {n: (10.0, 1) for n in NASTY}
    (run / "rank0.jsonl").write_text(
        start_line("r") + encode(Step(step=1, time=1.0, wall_ms=100.0, regions=regions))
    )
    snap = open_run(run)
    text = summary_text(snap).plain
    # "/" makes the tree, so "[/]" is "[" with a child "]": every piece is shown as written
    for piece in ["[bold]x", "[link=http:", "x]y", "[red]b[", "red]"]:
        assert piece in text
    assert any(line.startswith("[ ") for line in text.splitlines())
    assert {r["name"] for r in summary_dict(snap)["regions"]} >= set(NASTY)


def test_tui_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "import tui, tui.cli, tui.source.reader, tui.model.aggregate, tui.source.decode\n"
        "import tui.source.textlog, tui.model.snapshot, tui.source.live\n"
        "import tui.source.replay, tui.report.summary, tui.view.app, tui.view.keys\n"
        "import tui.diagnosis.advice, tui.fmt, tui.testing\n"
        "import tui.commands.watch, tui.commands.replay, tui.commands.summary\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr


def test_watch_refuses_a_root_whose_parent_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["watch", str(tmp_path / "nope" / "logs")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["watch", str(tmp_path), "--red", "5", "--yellow", "50"]) == 2
    assert "--yellow" in capsys.readouterr().err
