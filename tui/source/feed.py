"""One rank's file (JSONL or classic text log): its counters, its resumed segments, and its
records folded into the run's aggregate in file order."""

from __future__ import annotations

import bisect
import math
import re
from itertools import islice
from operator import lt
from typing import Any

import msgspec

from stagewatch.records import MAX_INT
from tui.model.aggregate import RunAgg
from tui.model.rows import StepBlock, StepRow
from tui.model.snapshot import FileInfo
from tui.source.decode import (
    MAX_LINE,
    Batch,
    Schema,
    decode_batch,
    fast_path,
    row_from_step,
)
from tui.source.nesting import Nester, NestPolicy
from tui.source.tail import TailFile, TailState
from tui.source.textlog import TextLogParser

# lines parsed, then folded in, at a time. With the C fast path a line decodes to a few
# objects and the fold's numpy calls are the per-slice cost: 512 costs ~25% less than 128.
# Without it what a line decodes to must stay in the CPU cache: 32 to 256 were alike,
# 512 ~1.7x the CPU (measured on 40-region lines).
FOLD_LINES = 512
_FOLD_LINES_PURE = 128  # the same, the fast path off (tests switch it per reader)
MAX_CUTS = 4096  # resumes and repeated step numbers remembered per file
MAX_RUNS = 4096  # runs of step numbers a StepSet holds (beyond: repeats of others not found)


def _suffix_min(xs: list[int]) -> list[float]:
    out: list[float] = [math.inf] * len(xs)
    m = math.inf
    for i in range(len(xs) - 1, -1, -1):
        m = min(m, xs[i])
        out[i] = m
    return out


class StepSet:
    """The step numbers of a file kept so far, as arithmetic runs ``[first, last, stride]``
    (stride 0: one number): a run's steps 1, 2, 3, ... or every 10th are one run, a jump or
    a stray record one more; the numbers after a jump (far ahead or back) extend the run
    they continue. Bounded by :data:`MAX_RUNS`; past it a number is not added (a later
    repeat of it is then not found, and both records count)."""

    __slots__ = ("_cur", "high", "runs")

    def __init__(self, runs: list[list[int]] | None = None) -> None:
        self.runs: list[list[int]] = [list(r) for r in runs] if runs else []
        self.high = max((r[1] for r in self.runs), default=0)  # the highest number held
        self._cur: list[int] | None = self.runs[-1] if self.runs else None  # last added to

    def __contains__(self, s: int) -> bool:
        if s > self.high:
            return False
        for first, last, d in reversed(self.runs):
            if first <= s <= last and (s == first if d == 0 else (s - first) % d == 0):
                return True
        return False

    def add(self, s: int) -> None:
        """Add ``s`` (not held yet)."""
        r = self._cur
        if r is not None and s > r[1] and (r[2] == 0 or s - r[1] == r[2]):
            if r[2] == 0:
                r[2] = s - r[0]
            r[1] = s
        elif len(self.runs) < MAX_RUNS:
            r = [s, s, 0]
            self.runs.append(r)
        else:
            return
        self._cur = r
        if s > self.high:
            self.high = s

    def add_increasing(self, steps: list[int]) -> None:
        """Add increasing numbers, all above :attr:`high` (the usual batch: no Python loop
        when they continue the last run)."""
        d = steps[1] - steps[0] if len(steps) > 1 else 0
        if d and steps == list(range(steps[0], steps[-1] + 1, d)):
            r = self._cur
            if r is not None and steps[0] - r[1] == d and r[2] in (0, d):
                r[1], r[2] = steps[-1], d
                self.high = steps[-1]
                return
            if len(self.runs) < MAX_RUNS:
                self._cur = [steps[0], steps[-1], d]
                self.runs.append(self._cur)
                self.high = steps[-1]
                return
        for s in steps:
            self.add(s)

    def drop_above(self, s: int) -> None:
        """Forget the numbers above ``s`` (a resume at ``s`` supersedes them)."""
        if self.high <= s:
            return
        keep = []
        for first, last, d in self.runs:
            if first > s:
                continue
            if last > s:
                last = first + ((s - first) // d) * d if d else first
            keep.append([first, last, d if last > first else 0])
        self.runs = keep
        self.high = max((r[1] for r in keep), default=0)
        self._cur = keep[-1] if keep else None


class FeedState(msgspec.Struct, frozen=True):
    """A JSONL feed's counters, resume cuts and file position (the run index saves it)."""

    lines: int
    malformed: int
    skipped: int
    last_error: str
    duplicates: int
    prev_step: int | None
    cuts: list[tuple[int, int, int]]
    tail: TailState
    dropped: int = 0
    seen: list[tuple[int, int, int]] = []


class Feed:
    """A rank's file (JSONL or classic text log) and its counters.

    Steps are kept once each, the newest record of a number winning. A ``run_start`` whose
    ``start_step`` is below steps already read (a run resumed from a checkpoint older than
    its last written step, after kill -9) supersedes them all: the earlier segment's steps
    above ``start_step`` are dropped. A stray record supersedes only the earlier record of
    its own number, never other steps (steps going back, or far ahead, are all kept). A
    repeat or resume found for the first time sets :attr:`resegment`: the caller reads the
    file again from the start (the statistics cannot be un-added), now knowing the cut.
    Step numbers below 1 never get here (the decoder refuses them as malformed).
    """

    def __init__(self, path: str, rank: int, kind: str, nest: NestPolicy | None = None) -> None:
        self.tail = TailFile(path)
        self.rank = rank
        self.kind = kind
        self.lines = 0
        self.text_line = 0  # a text log's lines read, blank ones too (error line numbers)
        self._long_seen = 0  # the tail's last overlong line counted in the line numbers
        self.malformed = 0
        self.skipped = 0
        self.last_error = ""
        self.text = TextLogParser() if kind == "text" else None
        # (line n, lo, hi): the step records before line n numbered lo..hi are superseded (a
        # resume at line n: lo = start_step + 1, hi = MAX_INT; a repeat of step s: s, s)
        self.cuts: list[tuple[int, int, int]] = []
        # a text log's top-level names nested in each other (inferred, --nest, --no-nest)
        self.nest = Nester(nest or NestPolicy(), path) if kind == "text" else None
        self.resegment = False
        # a text log's open last block taken as final (the file idled): growth reads it again
        self.ended_early = False
        self.duplicates = 0  # step records dropped for a later segment's
        self.dropped = 0  # records the writer dropped (its queue full), as the file says
        # the region names of the last step decoded in full: the C fast path checks the
        # next lines against it
        self._schema: Schema | None = None
        self._rewind()

    def _rewind(self) -> None:
        self._prev_step: int | None = None
        self._seen = StepSet()
        self.restore_cuts()

    def restore_cuts(self) -> None:
        """Position in :attr:`cuts` for the line count reached (a run index restored)."""
        self.cuts.sort()
        resumes = [c for c in self.cuts if c[2] >= MAX_INT]
        self._resumes = resumes
        self._cut_i = sum(1 for c in resumes if c[0] <= self.lines)
        self._limits = _suffix_min([c[1] for c in resumes])
        self._newest: dict[int, int] = {}  # step -> line of its newest record, when repeated
        for n, lo, hi in self.cuts:
            if hi < MAX_INT and n > self._newest.get(lo, 0):
                self._newest[lo] = n
        self._known = set(self.cuts)

    def reset(self, keep_cuts: bool = False) -> None:
        """Forget what was read (``keep_cuts``: the file is the same, read it again)."""
        self.tail.reset()
        self.lines = self.malformed = self.skipped = self.duplicates = self.dropped = 0
        self.text_line = self._long_seen = 0
        self.last_error = ""
        self.resegment = self.ended_early = False
        if not keep_cuts:
            self.cuts = []
        self._rewind()
        if self.text is not None:
            self.text.reset()
        if self.nest is not None:
            self.nest.restart()

    def state(self) -> FeedState:
        """Counters, cuts and position of a JSONL feed (a text log's parser is not kept)."""
        return FeedState(
            lines=self.lines,
            malformed=self.malformed,
            skipped=self.skipped,
            last_error=self.last_error,
            duplicates=self.duplicates,
            prev_step=self._prev_step,
            cuts=list(self.cuts),
            tail=self.tail.state(),
            dropped=self.dropped,
            seen=[(a, b, c) for a, b, c in self._seen.runs],
        )

    def restore(self, state: FeedState, ident: tuple[int, int]) -> None:
        """Go on from ``state``; ``ident``: the file's (device, inode) now."""
        self.reset()
        self.lines, self.malformed, self.skipped = state.lines, state.malformed, state.skipped
        self.last_error, self.duplicates = state.last_error, state.duplicates
        self.dropped = state.dropped
        self.cuts = [(int(a), int(b), int(c)) for a, b, c in state.cuts]
        self.restore_cuts()
        self._prev_step = state.prev_step
        self._seen = StepSet([list(r) for r in state.seen])
        self.tail.restore(state.tail, ident)
        self._long_seen = state.tail.long_at

    def info(self) -> FileInfo:
        malformed = self.malformed + self.tail.overlong
        if self.text is not None:
            malformed += self.text.malformed
        last = (
            self.text.last_error
            if self.text is not None and self.text.last_error
            else self.last_error
        )
        at = self.tail.long_at
        if at and (not last or _line_of(last) < at):  # the overlong line came last
            last = f"line {at}: longer than {MAX_LINE} bytes, not read"
        return FileInfo(
            self.tail.path,
            self.rank,
            self.lines,
            malformed,
            self.skipped,
            last,
            self.kind,
            state=self.tail.status,
            problem=self.tail.problem,
            duplicates=self.duplicates,
            dropped=self.dropped,
            nesting=self.nest.note() if self.nest is not None else None,
            restarts=self.text.restarts if self.text is not None else 0,
            interleaved=self.text.interleaved if self.text is not None else 0,
            blank=self.text.blank if self.text is not None else 0,
        )

    def _step_kept(self, step: int, n: int) -> bool:
        """Whether the step record on line ``n`` counts (not superseded by a resume or by a
        newer record of its number)."""
        res = self._resumes
        while self._cut_i < len(res) and res[self._cut_i][0] <= n:
            self._cut_i += 1
        limit = self._limits[self._cut_i] if self._cut_i < len(self._limits) else math.inf
        if step >= limit or self._newest.get(step, 0) > n:
            self.duplicates += 1
            return False
        self._prev_step = step
        seen = self._seen
        if step in seen:  # an earlier record of this number: this newer one wins
            self._learn((n, step, step))
            return True
        seen.add(step)
        return True

    def _resume(self, start: int, n: int) -> None:
        """A run_start on line ``n`` resuming after step ``start``: the steps above it read so
        far are superseded."""
        if self._seen.high > start:
            self._learn((n, start + 1, MAX_INT))
            self._seen.drop_above(start)

    def _learn(self, cut: tuple[int, int, int]) -> None:
        """A cut not known yet: read the file again knowing it (bounded by MAX_CUTS)."""
        if cut not in self._known and len(self.cuts) < MAX_CUTS:
            self.cuts.append(cut)
            self._known.add(cut)
            self.resegment = True

    def superseded(self, step: int, n: int) -> bool:
        """Whether the step record numbered ``step`` on (non-blank) line ``n`` is superseded,
        by the cuts known (all of them once the file was read to its end)."""
        i = bisect.bisect_right(self._resumes, (n, MAX_INT, MAX_INT))  # the resumes after n
        if i < len(self._limits) and step >= self._limits[i]:
            return True
        return self._newest.get(step, 0) > n

    def parse(self, lines: list[bytes], blocks: bool = False) -> list[Any]:
        """Lines -> StepRows and other records, in file order; bad lines are counted.

        ``blocks``: steps whose regions the C fast path took come as StepBlocks
        (the bulk path of :meth:`process`); otherwise every step is a StepRow.
        """
        if self.tail.long_at != self._long_seen:  # a line dropped before these: count it
            self._long_seen = self.tail.long_at
            self.lines += self.text is None
            self.text_line += self.text is not None
        if self.text is not None:
            return self._parse_text(lines)
        b = decode_batch(lines, self.lines, self._schema, blocks)
        self.lines = b.lines
        self._schema = b.schema
        if b.malformed:
            self.malformed += b.malformed
            self.last_error = b.last_error
        self.skipped += b.skipped
        self.dropped += b.dropped
        steps = b.steps
        if b.starts:
            return self._drop_repeats(b)
        if not steps:
            return b.items
        # the usual batch: no known cut, step numbers increasing (no _step_kept per step)
        if (
            not self.cuts
            and steps[0] > self._seen.high
            and all(map(lt, steps, islice(steps, 1, None)))
        ):
            self._prev_step = steps[-1]
            self._seen.add_increasing(steps)
            return b.items
        return self._drop_repeats(b)

    def _drop_repeats(self, b: Batch) -> list[Any]:
        """The batch's items without the steps superseded by a resume or a newer record."""
        keep = []
        starts = b.starts
        j = 0
        for s, n in zip(b.steps, b.line_nos, strict=True):
            while j < len(starts) and starts[j][0] < n:
                self._resume(starts[j][1], starts[j][0])
                j += 1
            keep.append(self._step_kept(s, n))
        for n, start in starts[j:]:
            self._resume(start, n)
        if all(keep):
            return b.items
        out: list[Any] = []
        i = 0
        for it in b.items:
            t = type(it)
            if t is StepRow:
                if keep[i]:
                    out.append(it)
                i += 1
            elif t is StepBlock:
                k = len(it.msgs)
                mask = keep[i : i + k]
                i += k
                if not all(mask):
                    it.keep_rows(mask)
                if it.msgs:
                    out.append(it)
            else:
                out.append(it)
        return out

    def _parse_text(self, lines: list[bytes]) -> list[Any]:
        """A classic text log's lines -> StepRows of the blocks they complete."""
        text = self.text
        assert text is not None
        if self.ended_early and any(x and not x.isspace() for x in lines):
            self.resegment = True  # the block taken as final goes on: read the file again
        out: list[Any] = []
        n = self.text_line  # the file's line number, blank lines too (as an editor shows it)
        for line in lines:
            n += 1
            if not line or line.isspace():
                continue
            self.lines += 1
            if len(line) > MAX_LINE:  # as the tail drops one it reads in parts
                text.malformed += 1
                text.last_error = f"line {n}: longer than {MAX_LINE} bytes, not read"
                continue
            bad = text.malformed
            # not UTF-8 (a Latin-1 name): its bytes replaced, the line kept (as tui export)
            s = text.feed(line.decode("utf-8", errors="replace").rstrip("\r"))
            if text.malformed != bad:
                text.last_error = f"line {n}: {text.last_error}"
            if s is None:
                continue
            nest = self.nest
            assert nest is not None
            for at, x in nest.push(s, text.native, n):
                if self._text_step_ok(x.step, at):
                    out.append(row_from_step(x))
            if nest.failed:
                self.resegment = True  # a nesting rule later steps broke: read again without
        self.text_line = n
        return out

    def _text_step_ok(self, step: int, n: int) -> bool:
        """A text log's step: refused (counted) below 1, else as :meth:`_step_kept`."""
        if step < 1:
            assert self.text is not None
            self.text.malformed += 1
            self.text.last_error = f"line {n}: step {step}: step numbers start at 1"
            return False
        return self._step_kept(step, n)

    def flush_text(self, last_block: bool = True) -> list[StepRow]:
        """A text log's steps held back: the steps the nesting decision waits for (the file
        ended, or idles) and (``last_block``: the file ended) its last block, even without a
        Total line."""
        if self.text is None or self.nest is None:
            return []
        s = self.text.flush() if last_block else None
        held = self.nest.push(s, self.text.native, self.text_line) if s is not None else []
        pairs = [*held, *self.nest.flush()]
        return [row_from_step(x) for at, x in pairs if self._text_step_ok(x.step, at)]

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
        k = FOLD_LINES if fast_path() else _FOLD_LINES_PURE
        if len(lines) <= k:
            self.fold(self.parse(lines, blocks=True), agg)
            return
        # a megabyte of short lines is thousands: fold them in slices (see FOLD_LINES)
        for i in range(0, len(lines), k):
            self.fold(self.parse(lines[i : i + k], blocks=True), agg)

    def finish_text(self, agg: RunAgg) -> None:
        """A finished text log: its last block, even without a Total line."""
        rows = self.flush_text()
        if rows:
            agg.add_steps(self.rank, rows)


def _line_of(error: str) -> int:
    """The line number an error message begins with (``line 12: ...``); 0 without one."""
    m = re.match(r"line (\d+):", error)
    return int(m.group(1)) if m else 0


def read_cuts(path: str) -> Feed:
    """A JSONL file read to its end for its cuts only (nothing folded): its
    :meth:`Feed.superseded` then tells which step records count (``tui export``)."""
    feed = Feed(path, 0, "jsonl")
    feed.tail.chunk = 1 << 20
    for _ in range(MAX_CUTS + 1):
        while True:
            lines, reset, more = feed.tail.read()
            if reset:
                feed.reset()
                continue
            if lines:
                feed.parse(lines, blocks=True)
            if not more:
                break
        if not feed.resegment:
            break
        feed.reset(keep_cuts=True)
    return feed
