"""A quick check that a path holds a run that can be shown, before any screen opens."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from stagewatch.errors import UsageError
from stagewatch.records import RecordError, RunStart, parse
from stagewatch.runs import is_rank_file, is_run_dir, is_text_log, run_files, run_folders
from tui.source.decode import MAX_LINE
from tui.source.feed import Feed
from tui.source.tail import FILE_LOOP, FILE_OK, FILE_UNREADABLE, TailFile

CHECK_BYTES = 64 * 1024  # bytes of each rank file check_run reads (more for a long first line)


def check_run(path: str | os.PathLike[str]) -> None:
    """Raise UsageError (one line, exit 2) for a run that cannot be shown: missing, a
    symlink loop, unreadable, no rank file, or no valid record in the first
    :data:`CHECK_BYTES` of any file. Reads only those first bytes (``tui replay`` shows its
    first screen without reading the run)."""
    p = Path(path)
    files = _files_of(p)
    errors: list[str] = []
    for f in files:
        tail = TailFile(f, chunk=CHECK_BYTES)
        lines, _, more = tail.read()
        while not lines and more and tail.offset <= MAX_LINE:  # a long first line (a big config)
            lines, _, more = tail.read()
        if not more and tail.partial:
            lines.append(tail.partial)  # a file without its last newline: judge what is there
        if tail.status != FILE_OK:
            if tail.status in (FILE_LOOP, FILE_UNREADABLE) and len(files) == 1:
                raise UsageError(f"cannot read {f}: {tail.problem}")
            errors.append(f"{f.name}: {tail.problem}")
            continue
        if is_text_log(f.name) or (not is_rank_file(f.name) and f.suffix != ".jsonl"):
            if lines or tail.partial:
                return  # a classic text log: its blocks are checked as they are shown
            continue
        feed = Feed(str(f), 0, "jsonl")
        if feed.parse(lines):
            return
        if feed.last_error:
            more = "" if tail.offset >= tail.size else " in its first bytes"
            errors.append(
                f"{f.name}: {feed.malformed} malformed lines{more}; last: {feed.last_error}"
            )
    detail = f" ({'; '.join(errors[:2])})" if errors else ""
    raise UsageError(f"no stagewatch records in {p}{detail}")


def _files_of(p: Path) -> list[Path]:
    """The run files of a folder, or the file itself. Raises UsageError."""
    try:
        st = os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UsageError(f"symlink loop: {p}") from None
        if e.errno == errno.ENOENT:
            raise UsageError(f"no such run: {p}") from None
        raise UsageError(f"cannot read {p}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        return [p]
    try:
        files = run_files(p)
    except OSError as e:
        raise UsageError(f"cannot read run folder {p}: {e.strerror}") from None
    if not files:
        raise UsageError(f"not a run folder (no rank<R>.jsonl or timing*.log/.txt in it): {p}")
    return files


def newest_run(path: str | os.PathLike[str]) -> Path | None:
    """The newest run of a log folder, as ``tui watch`` orders them (run_start time, then
    run id; run ids sort by start time); None when ``path`` is not a log folder holding
    runs (a run folder, a file, or nothing there)."""
    p = Path(path)
    if not p.is_dir() or is_run_dir(p):
        return None
    runs = [r for r in run_folders(p) if is_run_dir(r)]
    if not runs:
        return None
    return max(runs, key=lambda r: (_started(r), r.name))


def _started(run: Path) -> float:
    """The time of the run's first run_start (its first rank file's first line), else 0."""
    try:
        first = run_files(run)[0]
        if not is_rank_file(first.name):
            return 0.0
        with open(first, "rb") as f:
            line = f.readline(MAX_LINE)
        rec = parse(line)
    except (OSError, IndexError, RecordError, ValueError):
        return 0.0
    return rec.time if isinstance(rec, RunStart) else 0.0
