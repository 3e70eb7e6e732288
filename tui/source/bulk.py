"""A whole run read at once (replay's read behind, summary, export): big reads, and the JSONL
ranks of a big run read by several processes, then merged."""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence

from tui.model.aggregate import RunAgg
from tui.source.feed import Feed
from tui.source.tail import CHUNK

BULK_CHUNK = 1024 * 1024  # bytes read from one file per round when reading a whole run
PARALLEL_MIN_BYTES = 32 * 2**20  # a whole run at least this big is read by several processes


def _size(f: Feed) -> int:
    try:
        return os.path.getsize(f.tail.path)
    except OSError:
        return 0


def parallel_worth(feeds: Sequence[Feed]) -> bool:
    """Several files, several cores, and at least :data:`PARALLEL_MIN_BYTES` in all."""
    if len(feeds) < 2 or (os.cpu_count() or 1) < 2:
        return False
    size = 0
    for f in feeds:
        try:
            size += os.path.getsize(f.tail.path)
        except OSError:
            return False
    return size >= PARALLEL_MIN_BYTES


def read_parallel(feeds: Sequence[Feed], agg: RunAgg) -> list[Feed] | None:
    """Read every file (JSONL, nothing read yet) to its end in up to one process per core
    plus one, into ``agg``. Returns the feeds as read (new objects: they come back from the
    workers), or None, nothing changed, when not possible (text logs, feeds already read,
    no worker process could be used)."""
    if len(feeds) < 2 or any(f.kind != "jsonl" or f.tail.offset or f.lines for f in feeds):
        return None
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
            futs = [pool.submit(_read_feeds, g, agg.run_id, agg.window) for g in groups[1:]]
            results = [_read_feeds(groups[0], agg.run_id, agg.window)]
            results += [fu.result() for fu in futs]
    except Exception:  # no processes here (limits, sandbox...): read them in this one
        for f in feeds:
            f.reset()
        return None
    done: list[Feed] = []
    for read, sub in results:
        done += read
        agg.absorb(sub)
    agg.compare_absorbed()
    return done


def _read_feeds(feeds: list[Feed], run_id: str, window: int) -> tuple[list[Feed], RunAgg]:
    """Read whole files into an aggregate of their own (in a worker process of
    :func:`read_parallel`); the feeds come back with their positions and counters."""
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
