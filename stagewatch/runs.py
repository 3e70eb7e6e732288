"""Run folders and the files in them: which files hold a run's records, and where runs are.

The names themselves (``rank<R>.jsonl``, ``timing_rank<R>.log``, run ids) are part of the
record format (:mod:`stagewatch.records`); this module finds them on disk. Torch-free.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

from stagewatch.records import RANK_FILE_RE, TEXT_LOG_RE, RecordError, Step, decode

_TEXT_RANK_RE = re.compile(r"rank(\d+)")
# a date and time in a text log's name: 20260101_120000, 2026-01-01T12:00:00, 20260101-1200 00
_STAMP_RE = re.compile(r"(20\d\d)-?(\d\d)-?(\d\d)[_T-]?(\d\d)[:-]?(\d\d)[:-]?(\d\d)")
LAUNCH_GAP_S = 60.0  # text logs started this close together: one launch's processes


def is_rank_file(name: str) -> bool:
    """``rank<R>.jsonl``: one rank's records."""
    return RANK_FILE_RE.match(name) is not None


def is_text_log(name: str) -> bool:
    """``timing*.log`` or ``timing*.txt``: a classic text log (ours or the original logger's)."""
    return TEXT_LOG_RE.match(name) is not None


def is_run_file(name: str) -> bool:
    """A file a run's figures are read from: a rank file or a text log."""
    return RANK_FILE_RE.match(name) is not None or TEXT_LOG_RE.match(name) is not None


def text_log_rank(name: str) -> int:
    """The rank a text log's name gives (``timing_rank2.log``: 2), else 0."""
    m = _TEXT_RANK_RE.search(name)
    return int(m.group(1)) if m else 0


def rank_files(folder: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(rank, path)`` of the rank files in ``folder``, by rank. Raises OSError."""
    p = Path(folder)
    return sorted((int(m.group(1)), p / n) for n in os.listdir(p) if (m := RANK_FILE_RE.match(n)))


def _stamp(name: str) -> float | None:
    """The start time a text log's name gives (``timing_log_20260101_120000.txt``), else
    None. Naive: only differences between names matter."""
    m = _STAMP_RE.search(name)
    if m is None:
        return None
    try:
        return datetime(*(int(g) for g in m.groups())).timestamp()  # type: ignore[arg-type]
    except ValueError:  # not a date after all (month 13)
        return None


def text_logs(folder: str | os.PathLike[str]) -> dict[int, Path]:
    """The text log of each rank in ``folder`` (the first by name). Raises OSError.

    The original logger wrote one file per process with no rank in its name: files whose
    names' timestamps lie within :data:`LAUNCH_GAP_S` of the first such file, while that file
    was still written to (its mtime), are the processes of one launch, ranks 0, 1, ... by
    name; a later one (the next launch) is not a rank."""
    p = Path(folder)
    out: dict[int, Path] = {}
    plain: list[str] = []
    for n in sorted(os.listdir(p)):
        if TEXT_LOG_RE.match(n):
            if _TEXT_RANK_RE.search(n):
                out.setdefault(text_log_rank(n), p / n)
            else:
                plain.append(n)
    if not plain:
        return out
    first = _stamp(plain[0])
    launch = [plain[0]]
    if first is not None:
        try:  # the first process still wrote after the others started (not a relaunch)
            last_write = os.stat(p / plain[0]).st_mtime
        except OSError:
            last_write = first
        launch += [
            n
            for n in plain[1:]
            if (t := _stamp(n)) is not None
            and 0 <= t - first <= LAUNCH_GAP_S
            and last_write >= t - 1.0
        ]
    rank = 0
    for n in launch:
        while rank in out:
            rank += 1
        out[rank] = p / n
    return dict(sorted(out.items()))


def run_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Every rank file and text log in ``folder``, by name. Raises OSError."""
    p = Path(folder)
    return [p / n for n in sorted(os.listdir(p)) if is_run_file(n)]


def run_folders(root: str | os.PathLike[str]) -> list[Path]:
    """The folders directly under a log root, by name: each is a run, or may become one (its
    files appear after the folder). Hidden folders are not runs. [] when ``root`` cannot be
    read."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    return sorted(Path(e.path) for e in entries if not e.name.startswith(".") and _is_dir(e))


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # a symlink to a folder counts; a symlink loop does not
    except OSError:
        return False


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder holding a rank file or a text log."""
    try:
        return any(is_run_file(n) for n in os.listdir(path))
    except OSError:
        return False


def last_step_in(path: str | os.PathLike[str], window: int = 1 << 20) -> int | None:
    """The step number of the last valid ``step`` record in the last ``window`` bytes of
    ``path`` (None: no file, or none found). Never raises."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - window))
            lines = f.read(window).split(b"\n")
    except OSError:
        return None
    for line in reversed(lines):
        if b'"step"' not in line:
            continue
        try:
            rec = decode(line)
        except RecordError:
            continue
        if type(rec) is Step:
            return rec.step
    return None
