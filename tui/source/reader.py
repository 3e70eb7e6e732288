"""One run read into a :class:`RunAgg`: its folder (or a single rank/text file), followed as
its files grow.

No widget code here. Each rank file is a :class:`~tui.source.feed.Feed` (tailed by
:class:`~tui.source.tail.TailFile`); a file that shrinks, is replaced or rewritten is read
again from the start, and the run's statistics are rebuilt from all its files. A run read
before starts from its index (:mod:`tui.source.index`); a whole big run is read by several
processes (:mod:`tui.source.bulk`).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from stagewatch.records import rank_of_file, text_log_name
from stagewatch.runs import is_rank_file, rank_files, text_log_rank, text_logs
from stagewatch.traces import list_traces
from tui.diagnosis.advice import with_advice
from tui.model.aggregate import DEFAULT_WINDOW, RunAgg
from tui.model.snapshot import FAILED, FINISHED, INTERRUPTED, FileInfo, RunItem, RunSnapshot
from tui.source import bulk, index
from tui.source.feed import Feed
from tui.source.nesting import HOLD_S, MAX_BANS, NestPolicy
from tui.source.tail import CHUNK

ENDED = (FINISHED, FAILED, INTERRUPTED)
TRACES_EVERY_S = 1.0  # the run's traces/ folder is listed at most this often


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
        nest: NestPolicy | None = None,
    ) -> None:
        p = Path(path)
        self.nest = nest or NestPolicy()  # how text logs' top-level names nest
        self.use_index = index.enabled() if use_index is None else use_index
        self._index_tried = not self.use_index
        self._index_key: tuple[int, ...] | None = None  # offsets the index on disk holds
        self.wall = wall
        self.single = p.is_file()
        self.path = p
        self.dir = p.parent if self.single else p
        # a file named by its rank alone takes the run id of its folder
        generic = is_rank_file(p.name) or p.name == text_log_name(text_log_rank(p.name))
        self.run_id = self.dir.name if not self.single or generic else p.stem
        self.index_path = index.index_path(self.dir, p.name if self.single else None)
        self.window = window
        self.stale_after = stale_after
        self.clock = clock
        self.feeds: dict[str, Feed] = {}
        self.agg = RunAgg(self.run_id, str(self.dir), window)
        self.last_growth = clock()
        self.version = 0  # bumped whenever new data was folded in
        self.closed = False
        self.last_check = -1e9  # when RootReader last polled it
        self.captures: tuple[tuple[int, int], ...] = ()  # its profiler traces (step, rank)
        self._traces_at = -1e9
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
                        str(self.path), text_log_rank(self.path.name), kind, self.nest
                    )
                return True
            return False
        try:
            listing = os.listdir(self.dir)
            if listing == self._listing:
                return False  # the same names: nothing to add (at 64 ranks, 8 times a second)
            jsonl = dict(rank_files(self.dir))
            texts = text_logs(self.dir)
        except OSError:
            return False
        self._listing = listing
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
                self.feeds[path] = Feed(path, rank, "text", self.nest)
                added = True
        if added:
            self.closed = False
        return added

    _listing: list[str] | None = None  # the folder's names when discover() last looked
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

    def open_index(self) -> bool:
        """Start from the run's saved index, once, before anything is read. True when the
        state was restored from it."""
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
        agg = index.load(
            self.index_path, self.run_id, str(self.dir), self.window, list(self.feeds.values())
        )
        if agg is not None:
            self.agg = agg
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
        ok = index.save(
            self.index_path, self.run_id, self.window, list(self.feeds.values()), self.agg
        )
        self._index_key = key  # tried: not again until more is read
        return ok

    def _scan_traces(self) -> bool:
        """List the run's captured traces (at most once a second); True if they changed."""
        now = self.clock()
        if now - self._traces_at < TRACES_EVERY_S:
            return False
        self._traces_at = now
        found = tuple((t.step, t.rank) for t in list_traces(self.dir, limit=64))
        if found == self.captures:
            return False
        self.captures = found
        return True

    def _poll(self, budget_s: float | None) -> bool:
        t0 = time.perf_counter()
        changed = self.open_index()
        changed |= self.discover()
        changed |= self._scan_traces()
        if self._rebuild_needed:
            self._rebuild()
            changed = True
        while True:
            more_any = False
            batches = []
            for f in list(self.feeds.values()):
                before = f.tail.status
                lines, reset, more = f.tail.read()
                if f.tail.status != before:
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
        if not self.behind and self.idle_s() >= HOLD_S:
            changed |= self._settle_text()
        if not self.behind and self.idle_s() >= self.stale_after:
            changed |= self._end_text_blocks()
        if changed:
            # an old file read for the first time is as idle as its modification time says
            newest = max((f.tail.mtime for f in self.feeds.values()), default=0.0)
            age = max(0.0, self.wall() - newest) if newest else 0.0
            self.last_growth = self.clock() - age
            self.version += 1
        return changed

    def _settle_text(self) -> bool:
        """Text logs idle with steps held for the nesting decision: decide on those."""
        done = False
        for f in self.feeds.values():
            if f.nest is not None and f.nest.held:
                rows = f.flush_text(last_block=False)
                if rows:
                    self.agg.add_steps(f.rank, rows)
                    done = True
        return done

    def _end_text_blocks(self) -> bool:
        """Text logs idle past ``stale_after`` (the run reads as finished): their last block,
        even without a Total line, counts, as ``tui summary`` counts it. Should the file
        grow again, it is read again from the start (the block was not complete)."""
        done = False
        for f in self.feeds.values():
            if f.text is not None and f.text.pending():
                rows = f.flush_text()
                f.ended_early = True
                if rows:
                    self.agg.add_steps(f.rank, rows)
                    done = True
        return done

    def load(self, parallel: bool | None = None) -> RunSource:
        """Read everything there is now (replay, summary), ending text logs' last blocks.

        A big run of several JSONL ranks, not read before, is read by up to one process per
        core plus one (``parallel``: None decides by size, True/False forces it).
        """
        self.open_index()
        if parallel is None:
            self.discover()
            parallel = bulk.parallel_worth(list(self.feeds.values()))
        if not (parallel and self._load_parallel()):
            for f in self.feeds.values():
                f.tail.chunk = bulk.BULK_CHUNK
            self.poll(budget_s=None)
            for f in self.feeds.values():
                f.tail.chunk = CHUNK
        for _ in range(MAX_BANS + 2):  # a text log's nesting broken by its last steps: again
            for f in self.feeds.values():
                f.finish_text(self.agg)
            if not any(f.resegment for f in self.feeds.values()):
                break
            self._rebuild()  # a text log's last block repeats an earlier step: read again
            self.poll(budget_s=None)
        self._traces_at = -1e9
        self._scan_traces()  # (a parallel read does not poll)
        self.read_to_end = True
        self.save_index()
        return self

    read_to_end = False  # load() ran: a text log's last block was taken as final

    def _load_parallel(self) -> bool:
        """Read every rank in worker processes and merge; False (nothing changed) if not
        possible: feeds already read, text logs, or no worker process could be used."""
        self.discover()
        if self._rebuild_needed or self.agg.ranks or self.agg.starts:
            return False
        done = bulk.read_parallel(list(self.feeds.values()), self.agg)
        if done is None:
            return False
        by_path = {f.tail.path: f for f in done}
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
            snap = replace(snap, reader_error=self.error, from_index=self.from_index)
        if self.captures:
            snap = replace(snap, captures=self.captures)
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
    return replace(snap, state=state, eta_s=None if state != "running" else snap.eta_s)
