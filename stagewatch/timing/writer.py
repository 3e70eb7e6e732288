"""The writer: turns queued records into statistics and output lines, off the step.

``step()`` only measures, builds its record and puts it on a bounded queue
(:meth:`RecordWriter.put`, a deque append). Everything else a record costs (checking the
limits, the running statistics, JSON encoding, the classic text log's block, the console
panel, the file writes) happens here, for all the queued records at once: by default on the
thread that calls ``step()``, at the flush points the logger picks (:meth:`RecordWriter.kick`);
with ``background=True`` on a thread that the logger wakes there. ``flush()``, ``close()``,
``get_summary()``, a signal and a fork process the queue on the caller's thread
(:meth:`RecordWriter.drain`).

A background writer's queue never blocks the loop: when it is full (the writer starved or
stuck) a step record is dropped, counted, and the count is written in the next record that
gets through (``dropped``), with one warning. Where no thread runs (the default, a forked
child, a thread that could not start), a full queue is processed at once instead.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable
from itertools import compress
from typing import Any

from stagewatch import records as R
from stagewatch.timing.clean import WarnOnce, positive_int
from stagewatch.timing.sinks import ConsoleSink, JsonlSink, Sink, TextSink, within_limits
from stagewatch.timing.stats import RegionStats, RunningStats

QUEUE_RECORDS = 4096  # records waiting for the writer at most (about 3 kB each)
IDLE_SECONDS = 1.0  # the thread looks at the queue at least this often
assert R.MAX_MS <= R.MAX_INT  # the limits check below counts on it
MAX_SETS = 64  # region sets (the names of a step, in order) whose facts are cached


class _RegionSet:
    """What a step's processing needs to know about its names, found once per set: whether
    they are within the name limits, which are top-level (for the unaccounted time), and
    their running statistics in order."""

    __slots__ = ("names", "plain", "stats", "top")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.plain = all(len(k) <= R.MAX_NAME_CHARS for k in names)
        self.top = [("/" not in k) for k in names]
        self.stats: list[RunningStats] | None = None  # found at its first record in limits


class RecordWriter:
    """Statistics and sinks of one logger, fed through a bounded queue.

    ``put`` is safe from any thread and never blocks; processing is serialised by a
    re-entrant lock (a signal handler may drain while the main thread is draining).
    """

    def __init__(
        self,
        sinks: tuple[Sink, ...],
        stats: RegionStats,
        wall: RunningStats,
        unaccounted: RunningStats,
        peak_memory: dict[str, int],
        warn_once: WarnOnce,
        max_queue: int = QUEUE_RECORDS,
        background: bool = False,
    ) -> None:
        self.sinks = tuple(sorted(sinks, key=lambda k: k.LAST))  # (stable) see Sink.LAST
        self._stats = stats
        self._wall = wall
        self._unaccounted = unaccounted
        self.peak_memory = peak_memory
        self._warn_once = warn_once
        self.max_queue = max(1, int(max_queue))
        self._q: collections.deque[R.Record] = collections.deque()
        self.dropped = 0  # records dropped since the last one queued
        self.dropped_total = 0
        self._sets: dict[tuple[str, ...], _RegionSet] = {}  # per region set, bounded
        self._set = _RegionSet(())  # the last one used
        self._lock = threading.RLock()
        self._owner: int | None = None  # the thread processing records now
        self._deferred: Callable[[], None] | None = None
        self._wake = threading.Event()
        self._flush_wanted = False
        self._stop = False
        self._thread: threading.Thread | None = None
        if background:
            self._start_thread()

    @classmethod
    def of(cls, lg: Any, max_queue: Any, background: bool) -> RecordWriter:
        """The writer of a logger (its sinks, statistics and warnings)."""
        return cls(
            lg._sinks,
            lg._stats,
            lg._wall,
            lg._unaccounted,
            lg.peak_memory,
            lg._warn_once,
            max_queue=positive_int(max_queue, "writer_queue"),
            background=background,
        )

    # ------------------------------------------------------------------ the thread

    def _start_thread(self) -> None:
        t = threading.Thread(target=self._run, name="stagewatch-writer", daemon=True)
        try:
            t.start()
        except RuntimeError:  # e.g. at interpreter shutdown: process on the caller's thread
            return
        self._thread = t

    def _run(self) -> None:
        wake = self._wake
        while not self._stop:
            wake.wait(IDLE_SECONDS)
            wake.clear()
            if self._stop:
                break
            flush, self._flush_wanted = self._flush_wanted, False
            try:
                self.drain(flush)
            except Exception as e:  # never dies silently with records queued
                self._warn_once("writer", f"writer thread: {e}")

    @property
    def background(self) -> bool:
        """True while a writer thread processes the queue."""
        return self._thread is not None

    def stop(self) -> None:
        """End the thread (after its current batch); what is queued stays for :meth:`drain`."""
        t = self._thread
        self._thread = None
        if t is None:
            return
        self._stop = True
        self._wake.set()
        if t is not threading.current_thread():
            t.join(timeout=5.0)

    def after_fork_in_child(self) -> None:
        """A forked child has no writer thread and fresh locks; it processes inline."""
        self._lock = threading.RLock()
        self._owner = None
        self._wake = threading.Event()
        self._thread = None

    # ------------------------------------------------------------------ the loop's side

    def put(self, rec: R.Record) -> None:
        """Queue one record; never blocks. When the queue is full a thread-less writer
        processes it at once; a background one drops a step record and counts it (the
        rare other records, ``eval`` and ``run_end``, are always kept)."""
        q = self._q
        if len(q) >= self.max_queue:
            if self._thread is None:
                self.drain(False)
            elif type(rec) is R.Step:
                self._drop()
                return
        if self.dropped and type(rec) in (R.Step, R.RunEnd):
            rec.dropped = self.dropped  # type: ignore[union-attr]
            self.dropped = 0
        q.append(rec)

    def _drop(self) -> None:
        self.dropped += 1
        self.dropped_total += 1
        self._warn_once(
            "dropped",
            f"the record writer fell {self.max_queue} records behind; records are dropped "
            "(counted in the next record's 'dropped') until it catches up",
        )
        self._wake.set()

    def kick(self, flush: bool) -> None:
        """Process what is queued soon (``flush``: and write it to the files)."""
        if self._thread is None:
            self.drain(flush)
            return
        if flush:
            self._flush_wanted = True
        self._wake.set()

    # ------------------------------------------------------------------ processing

    def drain(self, flush: bool) -> None:
        """Process every queued record now, on this thread (``flush``: write the files).

        Called again by this thread while it drains (a signal handler's ``flush()``), it
        only writes the lines already made: processing the next records before the one
        under way would put them out of order in the file.
        """
        me = threading.get_ident()
        if self._owner == me:
            if flush:
                for sink in self.sinks:
                    sink.flush()
            return
        with self._lock:
            self._owner = me
            try:
                self._process(flush)
            finally:
                self._owner = None
        if self._deferred is not None:  # a signal that came during the batch: now
            fn, self._deferred = self._deferred, None
            fn()

    def _process(self, flush: bool) -> None:
        q = self._q
        while q:
            try:
                rec = q.popleft()
            except IndexError:  # another drain took it
                break
            if type(rec) is R.Step:
                self._step(rec)
            else:
                for sink in self.sinks:
                    sink.record(rec)
        if flush:
            for sink in self.sinks:
                sink.flush()

    def busy_here(self) -> bool:
        """True while this thread is processing records (e.g. in a signal handler that
        interrupted a batch)."""
        return self._owner == threading.get_ident()

    def defer(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once the batch under way on this thread is done."""
        self._deferred = fn

    def _step(self, rec: R.Step) -> None:
        regions = rec.regions
        key = tuple(regions)
        rs = self._set
        if key != rs.names:
            rs = self._set_of(key)
        # the values and the call counts, as two tuples in one C call ([ms, calls] pairs)
        ms, ns = zip(*regions.values(), strict=True) if regions else ((), ())
        wall = rec.wall_ms
        # what within_limits would keep as it is (a NaN or inf fails a comparison); else the
        # general path
        if not (
            rs.plain
            and 0.0 <= wall < R.MAX_MS
            and (
                not ms
                # (each count is then below MAX_MS <= MAX_INT too)
                or (sum(ms) + sum(ns) < R.MAX_MS and min(ms) >= 0.0 and min(ns) >= 0)
            )
        ):
            self._step_checked(within_limits(rec, self._warn_once))
            return
        found = rs.stats
        if found is None:  # (created as add_step creates them, at the same record)
            found = rs.stats = self._stats.resolve(key)
        self._stats.add_values(found, ms, ns)
        self._stats.last = (regions, key, ms, ns)
        un = wall - sum(compress(ms, rs.top))  # as R.unaccounted_ms
        if un < 0.0:
            un = 0.0
        self._after_stats(rec, wall, un)

    def _step_checked(self, rec: R.Step) -> None:
        """A step record :func:`within_limits` has seen, the general way."""
        regions = rec.regions
        self._stats.add_step(regions)
        self._stats.last = None
        wall = rec.wall_ms
        # as R.unaccounted_ms
        un = wall - sum([v[0] for k, v in regions.items() if "/" not in k])
        if un < 0.0:
            un = 0.0
        self._after_stats(rec, wall, un)

    def _after_stats(self, rec: R.Step, wall: float, un: float) -> None:
        self._wall.add(wall)
        self._unaccounted.add(un)
        if rec.memory:
            peak = self.peak_memory
            for k, v in rec.memory.items():
                if v > peak.get(k, -1):
                    peak[k] = v
        for sink in self.sinks:
            sink.step(rec, un)

    def _set_of(self, names: tuple[str, ...]) -> _RegionSet:
        """The cached facts of a region set (the names of a step, in their order)."""
        rs = self._sets.get(names)
        if rs is None:
            if len(self._sets) >= MAX_SETS:  # e.g. names built from a counter: stay bounded
                self._sets.clear()
            rs = self._sets[names] = _RegionSet(names)
        self._set = rs
        return rs

    def close(self) -> None:
        """Stop the thread, process and flush everything queued, close the sinks."""
        self.stop()
        with self._lock:
            self.drain(True)
            for sink in self.sinks:
                sink.close()

    def flush_before_fork(self, timeout: float = 1.0) -> None:
        """Write what is queued before a fork (a child must not inherit it half-written);
        skipped if the lock is not free within ``timeout`` (it never hangs a fork)."""
        if not self._lock.acquire(timeout=timeout):
            return
        try:
            self.drain(True)
        finally:
            self._lock.release()

    def __len__(self) -> int:
        return len(self._q)

    def __repr__(self) -> str:
        mode = "thread" if self._thread is not None else "inline"
        return f"RecordWriter({mode}, queued={len(self._q)}, dropped={self.dropped_total})"


def open_sinks(
    run_dir: str,
    rank: int,
    jsonl: bool,
    text: bool,
    console: bool,
    console_stream: Any,
    lg: Any,
) -> tuple[Sink, ...]:
    """A logger's outputs: the rank's JSONL file, its text log, the console panel."""
    sinks: list[Sink] = []
    if jsonl:
        sinks.append(JsonlSink(os.path.join(run_dir, R.rank_file_name(rank)), lg._warn_once))
    if text:
        path = os.path.join(run_dir, R.text_log_name(rank))
        sinks.append(TextSink(path, lg._stats, lg._warn_once))
    if console:
        interval = lg.console_update_interval
        sinks.append(ConsoleSink(console_stream, interval, lg.world_size, lg._warn_once))
    return tuple(sinks)
