"""The original TimingLogger's files as it really named and wrote them (a re-implementation
of the logger the brief describes, driven like the VRT trainer): every variant read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _orig_log import original_log

from stagewatch.runs import is_text_log
from tui.cli import main


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
