"""Shared by the framework-callback tests: read a run folder's step records."""

from __future__ import annotations

import glob
import os

from stagewatch import records as R


def run_records(log_root: str | os.PathLike[str]) -> dict[int, list[R.Record]]:
    """{rank: records} of the one run folder under ``log_root``."""
    runs = [d for d in glob.glob(os.path.join(os.fspath(log_root), "*")) if os.path.isdir(d)]
    assert len(runs) == 1, f"expected one run folder, found {runs}"
    out: dict[int, list[R.Record]] = {}
    for path in sorted(glob.glob(os.path.join(runs[0], "rank*.jsonl"))):
        rank = R.rank_of_file(os.path.basename(path))
        assert rank is not None
        with open(path, encoding="utf-8") as f:
            out[rank] = [r for r in (R.decode(line) for line in f) if r is not None]
    return out


def steps(records: list[R.Record]) -> list[R.Step]:
    return [r for r in records if isinstance(r, R.Step)]


def run_end(records: list[R.Record]) -> R.RunEnd:
    ends = [r for r in records if isinstance(r, R.RunEnd)]
    assert len(ends) == 1, ends
    return ends[0]
