"""One rank's file (JSONL or classic text log): its counters, its resumed segments, and its
records folded into the run's aggregate in file order."""

from __future__ import annotations

import math
from typing import Any

from stagewatch.records import RecordError
from tui.model.aggregate import RunAgg
from tui.model.snapshot import FileInfo
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
from tui.source.tail import TailFile
from tui.source.textlog import TextLogParser

# lines parsed, then folded in, at a time. With the C fast path a line decodes to a few
# objects and the fold's numpy calls are the per-slice cost: 512 costs ~25% less than 128.
# Without it what a line decodes to must stay in the CPU cache: 32 to 256 were alike,
# 512 ~1.7x the CPU (measured on 40-region lines).
FOLD_LINES = 512
_FOLD_LINES_PURE = 128  # the same, the fast path off (tests switch it per reader)
MAX_CUTS = 4096  # resumed segments remembered per file
_new_tuple = tuple.__new__
_MAX_MS = float(LIMITS.MAX_MS)
_MAX_CALLS = int(LIMITS.MAX_CALLS)


def _suffix_min(xs: list[int]) -> list[float]:
    out: list[float] = [math.inf] * len(xs)
    m = math.inf
    for i in range(len(xs) - 1, -1, -1):
        m = min(m, xs[i])
        out[i] = m
    return out


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
