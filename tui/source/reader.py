"""Reading run folders: files followed by offset and inode, folded into :class:`RunAgg`.

No widget code here. :class:`TailFile` returns complete lines only and keeps a partial last
line; a file that shrinks, is replaced (new inode) or whose first bytes change is read
again from the start, and the run's statistics are rebuilt from all its files.
:class:`RunSource` is one run folder; :class:`RootReader` discovers runs under a log root.
"""

from __future__ import annotations

import errno
import gc
import math
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stagewatch.records import RecordError, rank_of_file
from stagewatch.runs import (
    is_rank_file,
    is_run_dir,
    is_text_log,
    rank_files,
    run_files,
    text_log_rank,
    text_logs,
)
from tui.diagnosis.advice import with_advice
from tui.model.aggregate import DEFAULT_WINDOW, RunAgg
from tui.model.snapshot import FAILED, FINISHED, INTERRUPTED, STALE, FileInfo, RunItem, RunSnapshot
from tui.source import index
from tui.source.decode import (
    LIMITS,
    MAX_LINE,
    OK_VERSIONS,
    StepBlock,
    StepMsg,
    StepRawMsg,
    StepRow,
    convert,
    decode,
    decode_raw,
    parse_line,
    row_from_step,
    scan_regions,
    schema_of,
)
from tui.source.textlog import TextLogParser

CHUNK = 256 * 1024  # bytes read from one file per round (ranks are read interleaved)
BULK_CHUNK = 1024 * 1024  # the same when reading a whole run at once
# lines parsed, then folded in, at a time. With the C fast path a line decodes to a few
# objects and the fold's numpy calls are the per-slice cost: 512 costs ~25% less than 128.
# Without it what a line decodes to must stay in the CPU cache: 32 to 256 were alike,
# 512 ~1.7x the CPU (measured on 40-region lines).
FOLD_LINES = 512
_FOLD_LINES_PURE = 128  # the same, the fast path off (tests switch it per reader)
PARALLEL_MIN_BYTES = 32 * 2**20  # a whole run at least this big is read by several processes
_HEAD = 512  # first bytes (the run_start line: time, pid) compared to notice a rewrite in place
ENDED = (FINISHED, FAILED, INTERRUPTED)
_new_tuple = tuple.__new__
_MAX_MS = float(LIMITS.MAX_MS)
_MAX_CALLS = int(LIMITS.MAX_CALLS)


MAX_CUTS = 4096  # resumed segments remembered per file


def _suffix_min(xs: list[int]) -> list[float]:
    out: list[float] = [math.inf] * len(xs)
    m = math.inf
    for i in range(len(xs) - 1, -1, -1):
        m = min(m, xs[i])
        out[i] = m
    return out


class TailFile:
    """One file followed by (inode, offset). Only complete lines are returned."""

    def __init__(self, path: str | os.PathLike[str], chunk: int = CHUNK) -> None:
        self.path = os.fspath(path)
        self.chunk = chunk
        self.ident: tuple[int, int] | None = None
        self.offset = 0
        self.partial = b""
        self.skipping = False
        self.head = b""
        self.size = 0
        self.overlong = 0  # lines dropped for being longer than MAX_LINE
        self.mtime = 0.0
        self.state = FILE_OK  # or missing / unreadable / not a regular file / symlink loop
        self.problem = ""  # one line saying what is wrong with the file, "" when fine

    def reset(self) -> None:
        self.ident = None
        self.offset = 0
        self.partial = b""
        self.skipping = False
        self.head = b""
        self.size = 0
        self.overlong = 0

    def _trouble(self, state: str, problem: str) -> tuple[list[bytes], bool, bool]:
        self.state, self.problem = state, problem
        return [], False, False  # keep what was read: the screen flags the file instead

    def read(self) -> tuple[list[bytes], bool, bool]:
        """(complete new lines, reset happened, more data waiting).

        Only regular files are opened (stat first, then a non-blocking open checked again):
        a FIFO or a folder under a rank file's name is reported in :attr:`state`, never read.
        """
        try:
            st = os.stat(self.path)
        except OSError as e:
            return self._trouble(*_os_trouble(e))
        if not stat.S_ISREG(st.st_mode):
            return self._trouble(FILE_NOT_REGULAR, f"not a regular file ({_file_type(st.st_mode)})")
        try:
            fd = os.open(self.path, os.O_RDONLY | _O_NONBLOCK)
        except OSError as e:
            return self._trouble(*_os_trouble(e))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # swapped between the stat and the open
                return self._trouble(
                    FILE_NOT_REGULAR, f"not a regular file ({_file_type(st.st_mode)})"
                )
            self.state, self.problem = FILE_OK, ""
            ident = (st.st_dev, st.st_ino)
            reset = False
            if self.ident is not None and (
                ident != self.ident
                or st.st_size < self.offset
                or (self.head and os.pread(fd, len(self.head), 0) != self.head)
            ):
                self.reset()
                reset = True
            self.ident = ident
            self.size = st.st_size
            self.mtime = st.st_mtime
            if st.st_size <= self.offset:
                return [], reset, False
            data = os.pread(fd, self.chunk, self.offset)
        except OSError as e:
            return self._trouble(*_os_trouble(e))
        finally:
            os.close(fd)
        if len(self.head) < _HEAD and self.offset < _HEAD:
            self.head = (self.head + data[: _HEAD - self.offset])[:_HEAD]
        self.offset += len(data)
        more = self.offset < st.st_size
        if self.skipping:  # inside an overlong line (counted once): drop up to its end
            i = data.find(b"\n")
            if i < 0:
                return [], reset, more
            data = data[i + 1 :]
            self.skipping = False
        lines = (self.partial + data).split(b"\n") if self.partial else data.split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > MAX_LINE:
            self.partial = b""
            self.overlong += 1
            self.skipping = True
        return lines, reset, more


FILE_OK = "ok"
FILE_MISSING = "missing"
FILE_UNREADABLE = "unreadable"
FILE_NOT_REGULAR = "not-regular"
FILE_LOOP = "symlink-loop"
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def _os_trouble(e: OSError) -> tuple[str, str]:
    """(file state, one-line reason) of an error opening or reading a file."""
    if e.errno == errno.ENOENT:
        return FILE_MISSING, "removed (figures are from what was read before)"
    if e.errno == errno.ELOOP:
        return FILE_LOOP, "symlink loop"
    if e.errno in (errno.EACCES, errno.EPERM):
        return FILE_UNREADABLE, "permission denied"
    return FILE_UNREADABLE, e.strerror or type(e).__name__


def _file_type(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a file"


class Feed:
    """A rank's file (JSONL or classic text log) and its counters.

    Steps are kept once each: when a step number repeats (a run resumed from a checkpoint
    older than its last written step, after kill -9), the line where it happens starts a
    new segment and the earlier segment's steps from that number on are dropped (the later
    segment wins). Such a repeat found for the first time sets :attr:`resegment`: the
    caller reads the file again from the start (the statistics cannot be un-added), now
    knowing the cut.
    """

    def __init__(self, path: str, rank: int, kind: str) -> None:
        self.tail = TailFile(path)
        self.rank = rank
        self.kind = kind
        self.lines = 0
        self.malformed = 0
        self.skipped = 0
        self.last_error = ""
        self.text = TextLogParser() if kind == "text" else None
        self.cuts: list[tuple[int, int]] = []  # (line number, first step) of later segments
        self.resegment = False
        self.duplicates = 0  # step records dropped for a later segment's
        # (names as raw bytes, names) of the last step decoded in full: the C fast path
        # checks the next lines against it
        self._schema: tuple[tuple[bytes, ...], tuple[str, ...]] | None = None
        self._rewind()

    def _rewind(self) -> None:
        self._prev_step: int | None = None
        self.restore_cuts()

    def restore_cuts(self) -> None:
        """Position in :attr:`cuts` for the line count reached (a run index restored)."""
        self._cut_i = sum(1 for c in self.cuts if c[0] <= self.lines)
        self._limits = _suffix_min([c[1] for c in self.cuts])

    def reset(self, keep_cuts: bool = False) -> None:
        """Forget what was read (``keep_cuts``: the file is the same, read it again)."""
        self.tail.reset()
        self.lines = self.malformed = self.skipped = self.duplicates = 0
        self.last_error = ""
        self.resegment = False
        if not keep_cuts:
            self.cuts = []
        self._rewind()
        if self.text is not None:
            self.text.reset()

    def info(self) -> FileInfo:
        malformed = self.malformed + self.tail.overlong
        if self.text is not None:
            malformed += self.text.malformed
        last = (
            self.text.last_error
            if self.text is not None and self.text.last_error
            else self.last_error
        )
        if self.tail.overlong and not last:
            last = f"line longer than {MAX_LINE} bytes"
        return FileInfo(
            self.tail.path,
            self.rank,
            self.lines,
            malformed,
            self.skipped,
            last,
            self.kind,
            state=self.tail.state,
            problem=self.tail.problem,
            duplicates=self.duplicates,
        )

    def _step_kept(self, step: int, n: int) -> bool:
        """Whether the step record on line ``n`` counts (not superseded by a later segment)."""
        cuts = self.cuts
        while self._cut_i < len(cuts) and cuts[self._cut_i][0] <= n:
            self._cut_i += 1
        prev = self._prev_step
        self._prev_step = step
        known = self._cut_i > 0 and cuts[self._cut_i - 1][0] == n
        if prev is not None and step <= prev and not known and len(cuts) < MAX_CUTS:
            cuts.append((n, step))
            self.resegment = True  # a repeat not known yet: read the file again
        limit = self._limits[self._cut_i] if self._cut_i < len(self._limits) else math.inf
        if step >= limit:
            self.duplicates += 1
            return False
        return True

    def parse(self, lines: list[bytes], blocks: bool = False) -> list[Any]:
        """Lines -> StepRows and other records, in file order; bad lines are counted.

        ``blocks``: steps whose regions the C fast path took come as StepBlocks
        (the bulk path of :meth:`process`); otherwise every step is a StepRow.
        """
        out: list[Any] = []
        append = out.append
        n = self.lines
        text = self.text
        # the usual case inline: no known cut and step numbers increasing (else _step_kept)
        prev = self._prev_step
        plain = not self.cuts
        fast = blocks and text is None and scan_regions is not None
        dec = decode_raw if fast else decode
        # the block steps are added to (out[-1] while open), its keys, arrays and messages
        block: StepBlock | None = None
        bkeys: Any = None
        bms = bcalls = None
        bmsgs: list[Any] = []
        cap = len(lines)
        sch = self._schema
        scan, raw_type, ok_versions = scan_regions, StepRawMsg, OK_VERSIONS
        try:
            for line in lines:
                if not line or line.isspace():
                    continue
                n += 1
                if text is not None:
                    self.lines = n
                    try:
                        s = text.feed(line.decode("utf-8").rstrip("\r"))
                    except UnicodeDecodeError:
                        text.malformed += 1
                        text.last_error = f"line {n}: not UTF-8"
                        continue
                    if s is not None:
                        self._prev_step = prev
                        if self._step_kept(s.step, n):
                            append(row_from_step(s))
                        prev = self._prev_step
                    continue
                # the usual line inline (a step of a known version); anything else, or any
                # error, goes through parse_line for its reason
                m = None
                if len(line) <= MAX_LINE:
                    try:
                        m = dec(line)
                    except Exception:
                        m = None
                raw = None
                if fast and type(m) is raw_type:
                    raw = m.regions
                    if sch is not None and m.version in ok_versions:
                        if block is not None and bkeys is sch[0]:
                            opened = None
                            ok = scan(raw, bkeys, bms, bcalls, len(bmsgs), _MAX_MS, _MAX_CALLS)
                        else:
                            opened = StepBlock(sch[1], sch[0], cap)
                            ok = scan(raw, sch[0], opened.ms, opened.calls, 0, _MAX_MS, _MAX_CALLS)
                        if ok:
                            st = m.step
                            if plain and (prev is None or st > prev):
                                prev = st
                            else:
                                self._prev_step = prev
                                kept = self._step_kept(st, n)
                                prev = self._prev_step
                                plain = not self.cuts
                                if not kept:
                                    continue
                            if opened is not None:
                                append(opened)
                                block, bkeys, bms, bcalls, bmsgs = (
                                    opened,
                                    opened.bkeys,
                                    opened.ms,
                                    opened.calls,
                                    opened.msgs,
                                )
                            bmsgs.append(m)
                            continue
                    m = None  # a new schema, or values the fast path left to the typed decoder
                elif type(m) is StepMsg and m.version in OK_VERSIONS:
                    r = m.regions
                    st = m.step
                    row = _new_tuple(
                        StepRow,
                        (
                            st,
                            m.time,
                            m.wall_ms,
                            m.samples,
                            m.epoch,
                            tuple(r),
                            r,
                            m.memory,
                            m.scalars,
                        ),
                    )
                    block = None
                    if plain and (prev is None or st > prev):
                        prev = st
                        append(row)
                        continue
                    self._prev_step = prev
                    if self._step_kept(st, n):
                        append(row)
                    prev = self._prev_step
                    plain = not self.cuts
                    continue
                try:
                    rec = parse_line(line) if m is None else convert(m)
                except RecordError as e:
                    self.malformed += 1
                    self.last_error = f"line {n}: {e}"[:200]
                    continue
                except Exception as e:  # never let one line stop the monitor
                    self.malformed += 1
                    self.last_error = f"line {n}: {type(e).__name__}: {e}"[:200]
                    continue
                block = None
                if rec is None:
                    self.skipped += 1
                elif type(rec) is StepRow:
                    if raw is not None:  # the next lines of this schema take the fast path
                        sch = self._schema = schema_of(raw, rec) or sch
                    st = rec.step
                    if plain and (prev is None or st > prev):
                        prev = st
                        append(rec)
                        continue
                    self._prev_step = prev
                    if self._step_kept(st, n):
                        append(rec)
                    prev = self._prev_step
                    plain = not self.cuts
                else:
                    append(rec)
        finally:
            self.lines = n
            self._prev_step = prev
        return out

    def fold(self, items: list[Any], agg: RunAgg) -> None:
        """Parsed items into ``agg``: steps in batches, other records in order between them."""
        rows: list[StepRow] = []
        rank = self.rank
        for it in items:
            t = type(it)
            if t is StepRow:
                rows.append(it)
                continue
            if rows:
                agg.add_steps(rank, rows)
                rows = []
            if t is StepBlock:
                agg.add_block(rank, it)
            else:
                agg.add_record(rank, it)
        if rows:
            agg.add_steps(rank, rows)

    def process(self, lines: list[bytes], agg: RunAgg) -> None:
        """Parse lines and fold them into ``agg`` in file order."""
        k = FOLD_LINES if scan_regions is not None else _FOLD_LINES_PURE
        if len(lines) <= k:
            self.fold(self.parse(lines, blocks=True), agg)
            return
        # a megabyte of short lines is thousands: fold them in slices (see FOLD_LINES)
        for i in range(0, len(lines), k):
            self.fold(self.parse(lines[i : i + k], blocks=True), agg)

    def finish_text(self, agg: RunAgg) -> None:
        """A finished text log: its last block, even without a Total line."""
        if self.text is not None:
            s = self.text.flush()
            if s is not None:
                agg.add_steps(self.rank, [row_from_step(s)])


def _size(f: Feed) -> int:
    try:
        return os.path.getsize(f.tail.path)
    except OSError:
        return 0


def _read_feeds(feeds: list[Feed], run_id: str, window: int) -> tuple[list[Feed], RunAgg]:
    """Read whole files into an aggregate of their own (in a worker process of
    :meth:`RunSource.load`); the feeds come back with their positions and counters."""
    agg = RunAgg(run_id, "", window)
    was_enabled = gc.isenabled()
    gc.disable()  # see RunSource.poll
    try:
        for f in feeds:
            f.tail.chunk = BULK_CHUNK
            while True:
                lines, reset, more = f.tail.read()
                if reset:  # rewritten while read: start this file again
                    f.reset()
                    agg.drop_rank(f.rank)
                    continue
                if lines:
                    f.process(lines, agg)
                if f.resegment:
                    f.reset(keep_cuts=True)
                    agg.drop_rank(f.rank)
                    continue
                if not more:
                    break
            f.tail.chunk = CHUNK
    finally:
        if was_enabled:
            gc.enable()
    return feeds, agg


CHECK_BYTES = 64 * 1024  # bytes of each rank file check_run reads (more for a long first line)


def check_run(path: str | os.PathLike[str]) -> None:
    """Raise UsageError (one line, exit 2) for a run that cannot be shown: missing, a
    symlink loop, unreadable, no rank file, or no valid record in the first
    :data:`CHECK_BYTES` of any file. Reads only those first bytes (``tui replay`` shows its
    first screen without reading the run)."""
    from stagewatch.errors import UsageError

    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UsageError(f"symlink loop: {p}") from None
        if e.errno == errno.ENOENT:
            raise UsageError(f"no such run: {p}") from None
        raise UsageError(f"cannot read {p}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        try:
            files = run_files(p)
        except OSError as e:
            raise UsageError(f"cannot read run folder {p}: {e.strerror}") from None
        if not files:
            raise UsageError(f"not a run folder (no rank<R>.jsonl or timing_*.log in it): {p}")
    else:
        files = [p]
    errors: list[str] = []
    for f in files:
        tail = TailFile(f, chunk=CHECK_BYTES)
        lines, _, more = tail.read()
        while not lines and more and tail.offset <= MAX_LINE:  # a long first line (a big config)
            lines, _, more = tail.read()
        if not more and tail.partial:
            lines.append(tail.partial)  # a file without its last newline: judge what is there
        if tail.state != FILE_OK:
            if tail.state in (FILE_LOOP, FILE_UNREADABLE) and len(files) == 1:
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


class RunSource:
    """One run: its folder (or a single rank/text file) read into a :class:`RunAgg`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        window: int = DEFAULT_WINDOW,
        stale_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        use_index: bool | None = None,
    ) -> None:
        p = Path(path)
        self.use_index = index.enabled() if use_index is None else use_index
        self._index_tried = not self.use_index
        self._index_key: tuple[int, ...] | None = None  # offsets the index on disk holds
        self.wall = wall
        self.single = p.is_file()
        self.path = p
        self.dir = p.parent if self.single else p
        generic = is_rank_file(p.name) or re.fullmatch(r"timing_rank\d+\.log", p.name)
        self.run_id = self.dir.name if not self.single or generic else p.stem
        self.window = window
        self.stale_after = stale_after
        self.clock = clock
        self.feeds: dict[str, Feed] = {}
        self.agg = RunAgg(self.run_id, str(self.dir), window)
        self.last_growth = clock()
        self.version = 0  # bumped whenever new data was folded in
        self.closed = False
        self._last_check = -1e9
        self.discover()

    def discover(self) -> bool:
        """Add rank files that appeared. Text logs are used for ranks without a JSONL file."""
        if self.single:
            if not self.feeds:
                rank = rank_of_file(self.path.name)
                if rank is not None:
                    self.feeds[str(self.path)] = Feed(str(self.path), rank, "jsonl")
                else:
                    kind = "jsonl" if self.path.suffix == ".jsonl" else "text"
                    self.feeds[str(self.path)] = Feed(
                        str(self.path), text_log_rank(self.path.name), kind
                    )
                return True
            return False
        try:
            jsonl = dict(rank_files(self.dir))
            texts = text_logs(self.dir)
        except OSError:
            return False
        added = False
        for rank, f in jsonl.items():
            path = str(f)
            if path not in self.feeds:
                # a JSONL file replaces the text log of its rank
                for k in [k for k, f in self.feeds.items() if f.rank == rank and f.kind == "text"]:
                    del self.feeds[k]
                    self._rebuild_needed = True
                self.feeds[path] = Feed(path, rank, "jsonl")
                added = True
        for rank, f in texts.items():
            path = str(f)
            if rank not in jsonl and path not in self.feeds:
                self.feeds[path] = Feed(path, rank, "text")
                added = True
        if added:
            self.closed = False
        return added

    _rebuild_needed = False
    behind = False  # data left unread after the last poll's time budget

    def _rebuild(self, fresh: Feed | None = None) -> None:
        """Start the whole run again; every file keeps its known resume cuts but ``fresh``
        (a file replaced or rewritten: its cuts are no longer known)."""
        self.agg = RunAgg(self.run_id, str(self.dir), self.window)
        for f in self.feeds.values():
            f.reset(keep_cuts=f is not fresh)
        self._rebuild_needed = False
        self.rebuilds += 1

    rebuilds = 0
    error: str | None = None  # the last failure reading this run (one line, with the file)

    def poll(self, budget_s: float | None = 0.05) -> bool:
        """Read what the files gained (ranks interleaved). True if anything changed."""
        # Parsed records stay alive until their batch is folded in, so the cyclic GC would
        # scan them over and over (they hold no cycles): pause it while reading.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._poll(budget_s)
        finally:
            if was_enabled:
                gc.enable()

    def _try_index(self) -> bool:
        """Start from the run's saved index, once, before anything is read."""
        if self._index_tried:
            return False
        self._index_tried = True
        self.discover()
        if (
            not self.feeds
            or self.agg.ranks
            or self.agg.starts
            or any(f.lines or f.tail.offset for f in self.feeds.values())
        ):
            return False
        if index.load(self):
            self.from_index = True
            self._index_key = self._offsets()
            newest = max((f.tail.mtime for f in self.feeds.values()), default=0.0)
            self.last_growth = self.clock() - (max(0.0, self.wall() - newest) if newest else 0.0)
            self.version += 1
            return True
        return False

    def _offsets(self) -> tuple[int, ...]:
        return tuple(f.tail.offset for f in sorted(self.feeds.values(), key=lambda f: f.tail.path))

    def save_index(self, force: bool = False) -> bool:
        """Save the run's index when it ended (or is long idle) and holds what the index on
        disk does not (``force``: whatever the state). Never raises; True when written."""
        if not self.use_index or self.behind:
            return False
        key = self._offsets()
        if key == self._index_key:
            return False
        if not force and self.state() not in ENDED and self.idle_s() < index.IDLE_S:
            return False
        ok = index.save(self)
        self._index_key = key  # tried: not again until more is read
        return ok

    def _poll(self, budget_s: float | None) -> bool:
        t0 = time.perf_counter()
        changed = self._try_index()
        changed |= self.discover()
        if self._rebuild_needed:
            self._rebuild()
            changed = True
        while True:
            more_any = False
            batches = []
            for f in list(self.feeds.values()):
                before = f.tail.state
                lines, reset, more = f.tail.read()
                if f.tail.state != before:
                    changed = True
                if reset:
                    self._rebuild(fresh=f)  # derived from this file: start the whole run again
                    changed = True
                    batches = []
                    more_any = True
                    break
                if lines:
                    batches.append((f, lines))
                if lines or more:
                    changed = True
                more_any |= more
            for f, lines in batches:
                try:
                    f.process(lines, self.agg)
                except Exception as e:  # a bug, not bad data: say so, keep the other files
                    self.error = f"{f.tail.path}: {type(e).__name__}: {e}"[:300]
            if any(f.resegment for f in self.feeds.values()):
                self._rebuild()  # a resumed segment repeats steps: read again, cutting them
                more_any = True
            self.behind = more_any
            if not more_any or (budget_s is not None and time.perf_counter() - t0 > budget_s):
                break
        if changed:
            # an old file read for the first time is as idle as its modification time says
            newest = max((f.tail.mtime for f in self.feeds.values()), default=0.0)
            age = max(0.0, self.wall() - newest) if newest else 0.0
            self.last_growth = self.clock() - age
            self.version += 1
        return changed

    def load(self, parallel: bool | None = None) -> RunSource:
        """Read everything there is now (replay, summary), ending text logs' last blocks.

        A big run of several JSONL ranks, not read before, is read by up to one process per
        core plus one (``parallel``: None decides by size, True/False forces it).
        """
        self._try_index()
        if parallel is None:
            parallel = self._parallel_worth()
        if not (parallel and self._load_parallel()):
            for f in self.feeds.values():
                f.tail.chunk = BULK_CHUNK
            self.poll(budget_s=None)
            for f in self.feeds.values():
                f.tail.chunk = CHUNK
        for f in self.feeds.values():
            f.finish_text(self.agg)
        self.read_to_end = True
        self.save_index()
        return self

    read_to_end = False  # load() ran: a text log's last block was taken as final

    def _parallel_worth(self) -> bool:
        self.discover()
        feeds = list(self.feeds.values())
        if len(feeds) < 2 or (os.cpu_count() or 1) < 2:
            return False
        size = 0
        for f in feeds:
            try:
                size += os.path.getsize(f.tail.path)
            except OSError:
                return False
        return size >= PARALLEL_MIN_BYTES

    def _load_parallel(self) -> bool:
        """Read every rank in worker processes and merge; False (nothing changed) if not
        possible: feeds already read, text logs, or no worker process could be used."""
        self.discover()
        feeds = list(self.feeds.values())
        if len(feeds) < 2 or self._rebuild_needed or self.agg.ranks or self.agg.starts:
            return False
        if any(f.kind != "jsonl" or f.tail.offset or f.lines for f in feeds):
            return False
        nproc = min(len(feeds), (os.cpu_count() or 1) + 1)
        groups: list[list[Feed]] = [[] for _ in range(nproc)]
        loads = [0] * nproc
        for f in sorted(feeds, key=_size, reverse=True):  # largest first, to the least loaded
            i = loads.index(min(loads))
            groups[i].append(f)
            loads[i] += _size(f)
        try:
            import multiprocessing
            import threading
            from concurrent.futures import ProcessPoolExecutor

            # fork is quick and safe while this process has a single thread
            ctx = multiprocessing.get_context("fork" if threading.active_count() == 1 else "spawn")
            with ProcessPoolExecutor(max_workers=nproc - 1, mp_context=ctx) as pool:
                futs = [pool.submit(_read_feeds, g, self.run_id, self.window) for g in groups[1:]]
                results = [_read_feeds(groups[0], self.run_id, self.window)]
                results += [fu.result() for fu in futs]
        except Exception:  # no processes here (limits, sandbox...): read them in this one
            for f in feeds:
                f.reset()
            return False
        by_path = {}
        for done, sub in results:
            for f in done:
                by_path[f.tail.path] = f
            self.agg.absorb(sub)
        self.agg.compare_absorbed()
        self.feeds = {k: by_path.get(f.tail.path, f) for k, f in self.feeds.items()}
        newest = max((f.tail.mtime for f in self.feeds.values()), default=0.0)
        age = max(0.0, self.wall() - newest) if newest else 0.0
        self.last_growth = self.clock() - age
        self.version += 1
        return True

    def idle_s(self) -> float:
        return max(0.0, self.clock() - self.last_growth)

    def state(self) -> str:
        st = self.agg.state(self.idle_s(), self.stale_after)
        if (
            st in ("stale", "running")
            and self.feeds
            and all(f.kind == "text" for f in self.feeds.values())
            and (st == "stale" or self.read_to_end)
        ):
            return FINISHED  # a classic text log has no end record
        return st

    def files(self) -> tuple[FileInfo, ...]:
        return tuple(f.info() for f in sorted(self.feeds.values(), key=lambda f: (f.rank, f.kind)))

    def snapshot(self, replay: str | None = None, light: bool = False) -> RunSnapshot:
        """The run now; ``light``: without per-region figures (see :meth:`RunAgg.snapshot`)."""
        snap = self.agg.snapshot(
            idle_s=self.idle_s(),
            stale_after=self.stale_after,
            files=self.files(),
            replay=replay,
            light=light,
        )
        st = self.state()
        if st != snap.state:
            snap = _replace_state(snap, st)
        if self.error is not None or self.from_index:
            from dataclasses import replace

            snap = replace(snap, reader_error=self.error, from_index=self.from_index)
        return with_advice(snap)  # its advice lines (not a light one's)

    from_index = False  # the folded state came from a saved run index

    def item(self) -> RunItem:
        a = self.agg
        start = a.starts.get(0) or next(iter(a.starts.values()), None)
        return RunItem(
            self.run_id,
            str(self.dir),
            self.state(),
            a.last_step,
            a.total_steps,
            start.time if start else None,
        )


def _replace_state(snap: RunSnapshot, state: str) -> RunSnapshot:
    from dataclasses import replace

    return replace(snap, state=state, eta_s=None if state != "running" else snap.eta_s)


@dataclass
class ReadStats:
    polls: int = 0
    snapshots: int = 0


class RootReader:
    """Every run under a log root (or one run folder / file), read on demand.

    Call :meth:`tick` from one thread only; it returns True when a new snapshot is due.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        window: int = DEFAULT_WINDOW,
        stale_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        closed_recheck_s: float = 10.0,
        use_index: bool | None = None,
    ) -> None:
        self.root = Path(root)
        self.use_index = use_index
        self.window = window
        self.stale_after = stale_after
        self.clock = clock
        self.closed_recheck_s = closed_recheck_s
        self.runs: dict[str, RunSource] = {}
        self.selected: str | None = None
        self.stats = ReadStats()
        self._root_mtime: float | None = None
        self._states: dict[str, str] = {}

    def _add(self, path: Path) -> None:
        key = str(path)
        if key not in self.runs:
            self.runs[key] = RunSource(
                path,
                window=self.window,
                stale_after=self.stale_after,
                clock=self.clock,
                use_index=self.use_index,
            )

    def scan(self) -> bool:
        """Discover run folders (cheap when the root did not change)."""
        root = self.root
        if root.is_file() or is_run_dir(root):
            n = len(self.runs)
            self._add(root)
            return len(self.runs) != n
        try:
            mtime = root.stat().st_mtime_ns
        except OSError:  # the log root is gone (or unreadable): so are its runs
            gone = bool(self.runs)
            self.runs.clear()
            self._root_mtime = None
            return gone
        if mtime == self._root_mtime:
            return False
        self._root_mtime = mtime
        n = len(self.runs)
        try:
            entries = list(os.scandir(root))
        except OSError:
            return False
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                self._add(Path(e.path))
        gone = [k for k in self.runs if not os.path.isdir(k) and not os.path.isfile(k)]
        for k in gone:
            del self.runs[k]
        return len(self.runs) != n or bool(gone)

    def tick(self, force_all: bool = False) -> bool:
        """Scan and read; True when the selected run or the run list changed."""
        self.stats.polls += 1
        changed = self.scan()
        now = self.clock()
        behind = False
        for key, run in self.runs.items():
            if run.closed and not force_all and now - run._last_check < self.closed_recheck_s:
                continue
            run._last_check = now
            try:
                if run.poll():
                    changed = True
            except Exception as e:  # one run failing leaves the others live
                run.error = f"{run.dir}: {type(e).__name__}: {e}"[:300]
                changed = True
            behind |= run.behind
            st = run.state()
            run.closed = st in ENDED and not any(f.tail.partial for f in run.feeds.values())
            if not run.behind and (run.closed or st == STALE):
                run.save_index()  # ended or idle: the next open starts from here
            if self._states.get(key) != st:
                self._states[key] = st
                changed = True
        self.behind = behind
        return changed

    behind = False

    def items(self) -> tuple[RunItem, ...]:
        """Runs newest first (run ids sort by start time)."""
        items = [r.item() for r in self.runs.values()]
        items.sort(key=lambda i: (i.started or 0.0, i.run_id), reverse=True)
        return tuple(items)

    def selected_run(self) -> RunSource | None:
        if self.selected is not None:
            for r in self.runs.values():
                if r.run_id == self.selected or str(r.dir) == self.selected:
                    return r
        items = self.items()
        if not items:
            return None
        self.selected = items[0].run_id
        return self.selected_run()
