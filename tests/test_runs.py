"""The run-folder conventions of the library (stagewatch.runs): one place that finds them."""

from __future__ import annotations

import os
from pathlib import Path

from stagewatch import runs
from stagewatch.records import RunEnd, Step, encode
from tui.testing import start_line


def _run(folder: Path, ranks: int = 2, steps: int = 3) -> Path:
    folder.mkdir(parents=True)
    for r in range(ranks):
        lines = [start_line(folder.name, rank=r, world_size=ranks)]
        lines += [encode(Step(step=s, time=float(s), wall_ms=1.0)) for s in range(1, steps + 1)]
        lines.append(encode(RunEnd(time=9.0, status="completed", steps=steps)))
        (folder / f"rank{r}.jsonl").write_text("".join(lines))
    return folder


def test_rank_files_text_logs_and_run_files(tmp_path: Path) -> None:
    run = _run(tmp_path / "r", ranks=3)
    (run / "rank10.jsonl").write_text("")
    (run / "timing_rank2.log").write_text("")
    (run / "timing_rank2_old.log").write_text("")
    (run / "notes.txt").write_text("")
    (run / "rank1.jsonl.bak").write_text("")
    assert [r for r, _ in runs.rank_files(run)] == [0, 1, 2, 10]  # by rank, not by name
    assert runs.text_logs(run) == {2: run / "timing_rank2.log"}  # the first by name
    assert [p.name for p in runs.run_files(run)] == [
        "rank0.jsonl",
        "rank1.jsonl",
        "rank10.jsonl",
        "rank2.jsonl",
        "timing_rank2.log",
        "timing_rank2_old.log",
    ]
    assert runs.is_run_dir(run) and not runs.is_run_dir(tmp_path)
    assert not runs.is_run_dir(tmp_path / "missing")
    assert runs.text_log_rank("timing_rank7.log") == 7 and runs.text_log_rank("timing_x.log") == 0


def test_run_folders_of_a_log_root(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    _run(root / "b")
    _run(root / "a")
    (root / "c-empty").mkdir()  # a run whose files are not written yet
    (root / ".hidden").mkdir()
    (root / "file.txt").write_text("")
    os.symlink(root / "a", root / "d-link")
    os.symlink(root / "loop", root / "loop")  # a symlink loop is not a folder
    assert [p.name for p in runs.run_folders(root)] == ["a", "b", "c-empty", "d-link"]
    assert runs.run_folders(tmp_path / "missing") == []


def test_last_step_in_skips_a_partial_or_bad_last_line(tmp_path: Path) -> None:
    run = _run(tmp_path / "r", ranks=1, steps=7)
    path = run / "rank0.jsonl"
    assert runs.last_step_in(path) == 7
    with open(path, "a") as f:
        f.write('{"v":"1.0","kind":"step","step":8,"wall_ms":-1}\n')  # out of range
        f.write('{"v":"1.0","kind":"step","step":9,"wall')  # cut by a kill
    assert runs.last_step_in(path) == 7
    assert runs.last_step_in(tmp_path / "none.jsonl") is None
