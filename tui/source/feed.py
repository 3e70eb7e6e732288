"""One rank's file (JSONL or classic text log): its counters, its resumed segments, and its
records folded into the run's aggregate in file order."""

from __future__ import annotations

import math
from itertools import islice
from operator import lt
from typing import Any

import msgspec

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
MAX_CUTS = 4096  # resumed segments remembered per file


def _suffix_min(xs: list[int]) -> list[float]:
    out: list[float] = [math.inf] * len(xs)
    m = math.inf
    for i in range(len(xs) - 1, -1, -1):
        m = min(m, xs[i])
        out[i] = m
    return out


class FeedState(msgspec.Struct, frozen=True):
    """A JSONL feed's counters, resume cuts and file position (the run index saves it)."""

    lines: int
    malformed: int
    skipped: int
    last_error: str
    duplicates: int
    prev_step: int | None
    cuts: list[tuple[int, int]]
    tail: TailState


class Feed:
    """A rank's file (JSONL or classic text log) and its counters.

    Steps are kept once each: when a step number repeats (a run resumed from a checkpoint
    older than its last written step, after kill -9), the line where it happens starts a
    new segment and the earlier segment's steps from that number on are dropped (the later
    segment wins). Such a repeat found for the first time sets :attr:`resegment`: the
    caller reads the file again from the start (the statistics cannot be un-added), now
    knowing the cut.
    """

    def __init__(self, path: str, rank: int, kind: str, nest: NestPolicy | None = None) -> None:
        self.tail = TailFile(path)
        self.rank = rank
        self.kind = kind
        self.lines = 0
        self.malformed = 0
        self.skipped = 0
        self.last_error = ""
        self.text = TextLogParser() if kind == "text" else None
        # a text log's top-level names nested in each other (inferred, --nest, --no-nest)
        self.nest = Nester(nest or NestPolicy(), path) if kind == "text" else None
        self.cuts: list[tuple[int, int]] = []  # (line number, first step) of later segments
        self.resegment = False
        self.duplicates = 0  # step records dropped for a later segment's
        # the region names of the last step decoded in full: the C fast path checks the
        # next lines against it
        self._schema: Schema | None = None
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
        )

    def restore(self, state: FeedState, ident: tuple[int, int]) -> None:
        """Go on from ``state``; ``ident``: the file's (device, inode) now."""
        self.reset()
        self.lines, self.malformed, self.skipped = state.lines, state.malformed, state.skipped
        self.last_error, self.duplicates = state.last_error, state.duplicates
        self.cuts = [(int(a), int(b)) for a, b in state.cuts]
        self.restore_cuts()
        self._prev_step = state.prev_step
        self.tail.restore(state.tail, ident)

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
            state=self.tail.status,
            problem=self.tail.problem,
            duplicates=self.duplicates,
            nesting=self.nest.note() if self.nest is not None else None,
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
        if self.text is not None:
            return self._parse_text(lines)
        b = decode_batch(lines, self.lines, self._schema, blocks)
        self.lines = b.lines
        self._schema = b.schema
        if b.malformed:
            self.malformed += b.malformed
            self.last_error = b.last_error
        self.skipped += b.skipped
        steps = b.steps
        if not steps:
            return b.items
        prev = self._prev_step
        # the usual batch: no known cut, step numbers increasing (no _step_kept per step)
        if (
            not self.cuts
            and (prev is None or steps[0] > prev)
            and all(map(lt, steps, islice(steps, 1, None)))
        ):
            self._prev_step = steps[-1]
            return b.items
        return self._drop_repeats(b)

    def _drop_repeats(self, b: Batch) -> list[Any]:
        """The batch's items without the steps a later segment supersedes."""
        keep = [self._step_kept(s, n) for s, n in zip(b.steps, b.line_nos, strict=True)]
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
        out: list[Any] = []
        n = self.lines
        for line in lines:
            if not line or line.isspace():
                continue
            n += 1
            self.lines = n
            try:
                s = text.feed(line.decode("utf-8").rstrip("\r"))
            except UnicodeDecodeError:
                text.malformed += 1
                text.last_error = f"line {n}: not UTF-8"
                continue
            if s is None:
                continue
            nest = self.nest
            assert nest is not None
            for at, x in nest.push(s, text.native, n):
                if self._step_kept(x.step, at):
                    out.append(row_from_step(x))
            if nest.failed:
                self.resegment = True  # a nesting rule later steps broke: read again without
        return out

    def flush_text(self, last_block: bool = True) -> list[StepRow]:
        """A text log's steps held back: the steps the nesting decision waits for (the file
        ended, or idles) and (``last_block``: the file ended) its last block, even without a
        Total line."""
        if self.text is None or self.nest is None:
            return []
        s = self.text.flush() if last_block else None
        held = self.nest.push(s, self.text.native, self.lines) if s is not None else []
        pairs = [*held, *self.nest.flush()]
        return [row_from_step(x) for at, x in pairs if self._step_kept(x.step, at)]

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
