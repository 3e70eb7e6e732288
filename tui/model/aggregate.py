"""All ranks of one run: records in, :class:`~tui.model.snapshot.RunSnapshot` out.

Each rank's steps are folded by a :class:`~tui.model.ranks.RankAgg`; ``run_start``,
``run_end`` and ``eval`` records are kept as they come. Ranks are compared per step (spread,
straggler) through each rank's last (step, wall) pairs, so the comparison does not depend on
the order ranks were read. A snapshot is built in named steps (:mod:`tui.model.build`), at
a cost bounded by regions × ranks × window.
"""

from __future__ import annotations

import math
import operator
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import replace
from operator import itemgetter
from typing import Any

import numpy as np

from stagewatch.records import STATUS_FAILED, STATUS_INTERRUPTED, Eval, RunEnd, RunStart
from tui.model import build, crossrank, crossread
from tui.model.hidden import hidden_wait
from tui.model.ranks import DEFAULT_WINDOW, RankAgg
from tui.model.rankstats import compare_walls, worst_trend
from tui.model.rows import StepBlock, StepRow
from tui.model.snapshot import (
    FAILED,
    FINISHED,
    INTERRUPTED,
    RUNNING,
    STALE,
    WAITING,
    FileInfo,
    RunSnapshot,
)

# DEFAULT_WINDOW and RankAgg are part of what callers import from here
__all__ = ["DEFAULT_WINDOW", "RankAgg", "RunAgg"]

COMPARE_EVERY = 1.0  # seconds a light snapshot may reuse the ranks' comparison
_step_wall = itemgetter(0, 2)  # StepRow (step, time, wall, ...) -> (step, wall)


def _rises(t: Iterable[tuple[int, float]]) -> bool:
    """The steps of ``(step, wall)`` pairs rise strictly."""
    steps = [x[0] for x in t]
    return all(map(operator.lt, steps, steps[1:]))


class RunAgg:
    """All ranks of one run: records in, :class:`RunSnapshot` out."""

    def __init__(self, run_id: str, path: str = "", window: int = DEFAULT_WINDOW) -> None:
        self.run_id = run_id
        self.path = path
        self.window = max(2, int(window))
        self.ranks: dict[int, RankAgg] = {}
        self.starts: dict[int, RunStart] = {}
        self.ends: dict[int, RunEnd] = {}
        self.evals: dict[str, float] = {}
        self.eval_step: int | None = None
        # rank -> its last (step, wall ms): ranks are compared per step over these when a
        # snapshot is made, so the comparison does not depend on the order ranks were read
        self.tails: dict[int, deque[tuple[int, float]]] = {}
        # rank -> whether its tail's steps rise (compare_walls reads only their last entries)
        self._rising: dict[int, bool] = {}
        self.compared_steps = 0
        self.compare_ranks = True  # kept for callers; the comparison is always made
        # the ranks compared (and the straggler verdict) until a rank folds new steps
        self._compared: tuple[Any, float, tuple[Any, ...]] | None = None
        # the ranks' region arrays as rows of shared ones: folded and read in one pass
        self._rows = crossrank.RankRows()

    @property
    def pending_limit(self) -> int:
        """Steps waiting for the other ranks at most (older ones are dropped)."""
        return max(4 * self.window, 4096)

    @property
    def world_size(self) -> int:
        """Ranks of the run: as its run_start records say, at least those seen."""
        ws = max((s.world_size for s in self.starts.values()), default=0)
        return max(ws, len(self.ranks), 1)

    def rank(self, r: int) -> RankAgg:
        """The statistics of rank ``r`` (made on first use)."""
        agg = self.ranks.get(r)
        if agg is None:
            agg = self.ranks[r] = RankAgg(r, self.window)
        return agg

    def add_record(self, rank: int, rec: Any) -> None:
        """A non-step record of ``rank``."""
        if isinstance(rec, RunStart):
            self.starts[rank] = rec
            self.ends.pop(rank, None)  # a resumed run appends a new run_start
            self.rank(rank)
        elif isinstance(rec, RunEnd):
            self.ends[rank] = rec
        elif isinstance(rec, Eval) and (self.eval_step is None or rec.step >= self.eval_step):
            self.eval_step = rec.step
            self.evals = dict(rec.metrics)

    def add_steps(self, rank: int, rows: Sequence[StepRow]) -> None:
        """A batch of steps of one rank, in file order."""
        if not rows:
            return
        self.rank(rank).ingest(rows)
        t = self.tails.get(rank)
        if t is None:
            t = self.tails[rank] = deque(maxlen=self.pending_limit)
        self._track(rank, t, [r[0] for r in rows])
        t.extend(map(_step_wall, rows))  # (step, wall ms) of each row, in C

    def add_block(self, rank: int, blk: StepBlock) -> None:
        """A :class:`StepBlock` of one rank, in file order (as :meth:`add_steps`)."""
        if not blk.msgs:
            return
        self.rank(rank).ingest_block(blk)
        t = self.tails.get(rank)
        if t is None:
            t = self.tails[rank] = deque(maxlen=self.pending_limit)
        msgs = blk.msgs
        steps = [x.step for x in msgs]
        self._track(rank, t, steps)
        t.extend(zip(steps, [x.wall_ms for x in msgs], strict=True))

    def _track(self, rank: int, t: deque[tuple[int, float]], steps: list[int]) -> None:
        """Keep whether ``rank``'s tail ``t`` rises with ``steps`` appended."""
        ok = self._rising.get(rank)
        if ok is None:
            ok = _rises(t)
        if ok and steps:
            ok = (not t or steps[0] > t[-1][0]) and (
                len(steps) == 1 or all(map(operator.lt, steps, steps[1:]))
            )
        self._rising[rank] = ok

    def _all_rising(self) -> bool:
        """Every tail's steps rise (found once for tails set from outside: an index, absorb)."""
        for r, t in self.tails.items():
            ok = self._rising.get(r)
            if ok is None:
                ok = self._rising[r] = _rises(t)
            if not ok:
                return False
        return True

    def drop_rank(self, rank: int) -> None:
        """Forget everything read of one rank (its file is read again)."""
        self.ranks.pop(rank, None)
        self.starts.pop(rank, None)
        self.ends.pop(rank, None)
        self.tails.pop(rank, None)
        self._rising.pop(rank, None)

    def absorb(self, other: RunAgg) -> None:
        """Take the ranks another aggregate read (in another process) of the same run."""
        for r, a in other.ranks.items():
            self.ranks[r] = a
        self.starts.update(other.starts)
        for r in other.starts:
            if r not in other.ends:
                self.ends.pop(r, None)
        self.ends.update(other.ends)
        if other.eval_step is not None and (
            self.eval_step is None or other.eval_step >= self.eval_step
        ):
            self.eval_step = other.eval_step
            self.evals = dict(other.evals)
        self.tails.update(other.tails)
        for r in other.tails:
            self._rising.pop(r, None)

    def compare_absorbed(self) -> None:
        """Nothing left to do (ranks are compared when a snapshot is made); kept for callers."""

    def compare(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per step that every rank has among its last :attr:`pending_limit` steps (the last
        ``window`` such steps, oldest first): slowest rank, spread (max - min wall ms) and
        excess of the slowest over the median."""
        return compare_walls(self.tails, self.world_size, self.window, self._all_rising())

    def _compare_ranks(self, aggs: list[RankAgg], exact: bool) -> tuple[Any, build.RankComparison]:
        """Each rank's recent work and the ranks compared (the verdict included), made again
        only when a rank folded steps since the last snapshot (or ranks came or went).

        ``exact=False`` (a light snapshot, for the header): the last comparison of the same
        ranks is kept while it is under :data:`COMPARE_EVERY` seconds old, though steps came
        since. At 64 ranks a comparison costs more than the rest of a light snapshot, which
        ``tui watch`` makes up to 8 times a second; full snapshots are always exact."""
        ranks = tuple((a.rank, id(a)) for a in aggs)
        key = (self.world_size, ranks, tuple(a.steps for a in aggs))
        now = time.monotonic()
        c = self._compared
        if c is None or c[0] != key:
            if not exact and c is not None and c[0][:2] == key[:2] and now - c[1] < COMPARE_EVERY:
                return c[2][1], c[2][2]
            compared = self.compare()
            if len(aggs) > 1:
                crossrank.flush(self._rows, aggs)
                crossread.read_recent(self._rows, aggs)
            recent = build.recent_work(aggs)
            tables = crossread.recent_tables(aggs, recent) if len(aggs) > 1 else None
            cmp = build.compare_ranks(compared, recent, self.window, tables)
            v = hidden_wait(aggs, cmp.verdict)  # a wait in a collective of the loop's own
            if v is not cmp.verdict and v is not None:
                named = v.straggler is not None
                cmp = replace(
                    cmp,
                    verdict=v,
                    straggler=v.straggler,
                    excess=v.excess_ms if named else cmp.excess,
                )
            c = self._compared = (key, now, (len(compared[0]), recent, cmp))
        self.compared_steps = c[2][0]
        return c[2][1], c[2][2]

    # ----------------------------------------------------------------- state
    def state(self, idle_s: float, stale_after: float) -> str:
        """WAITING, FAILED, INTERRUPTED, FINISHED, STALE (no growth for ``stale_after`` s)
        or RUNNING."""
        if not self.ranks and not self.starts:
            return WAITING
        ends = self.ends.values()
        if any(e.status == STATUS_FAILED for e in ends):
            return FAILED
        seen = set(self.ranks) | set(self.starts)
        if ends and all(r in self.ends for r in seen) and len(self.ends) >= self.world_size:
            if any(e.status == STATUS_INTERRUPTED for e in ends):
                return INTERRUPTED
            return FINISHED
        if idle_s > stale_after:
            return STALE
        return RUNNING

    @property
    def last_step(self) -> int:
        """The furthest step any rank reached."""
        return max((a.last_step for a in self.ranks.values()), default=0)

    @property
    def total_steps(self) -> int | None:
        """The steps the run is to make, when a run_start says."""
        vals = [s.total_steps for s in self.starts.values() if s.total_steps]
        return max(vals) if vals else None

    def snapshot(
        self,
        *,
        idle_s: float = 0.0,
        stale_after: float = 60.0,
        files: tuple[FileInfo, ...] = (),
        with_ranks: bool = True,
        replay: str | None = None,
        light: bool = False,
    ) -> RunSnapshot:
        """An immutable picture of the run now (cost bounded by regions × ranks × window).

        ``light``: without the per-region figures (``regions`` empty, ``unaccounted`` blank,
        ``light`` set): what the header shows, at a fraction of the cost; every other field
        is what the full snapshot would hold.
        """
        aggs = [self.ranks[r] for r in sorted(self.ranks)]
        regions, unaccounted = (
            build.region_rows(aggs, with_ranks, self._rows)
            if not light
            else ((), build.BLANK_UNACCOUNTED)
        )
        if len(aggs) > 1:
            crossread.read_walls(self._rows, aggs)
        walls = [a.wall_stats() for a in aggs]
        sps = [a.samples_per_s() for a in aggs]
        sps_whole, sps_win, steps_per_s = build.throughput(sps, walls)
        step, total = self.last_step, self.total_steps
        st = self.state(idle_s, stale_after)
        eta = None
        if total and step < total and st == RUNNING and not math.isnan(steps_per_s):
            eta = (total - step) / steps_per_s
        recent, cmp = self._compare_ranks(aggs, exact=not light)
        mem_peak, mem_last = build.memory_figures(aggs)
        start0 = self.starts.get(0) or next(iter(self.starts.values()), None)
        return RunSnapshot(
            run_id=self.run_id,
            path=self.path,
            state=st,
            step=step,
            total_steps=total,
            world_size=self.world_size,
            ranks_seen=tuple(sorted(set(self.ranks) | set(self.starts))),
            window_size=self.window,
            wall=build.merge([w[0] for w in walls]),
            wall_window=build.merge([w[1] for w in walls]),
            samples_per_s=sps_whole,
            samples_per_s_window=sps_win,
            steps_per_s_window=steps_per_s,
            eta_s=eta,
            mem_peak=mem_peak,
            mem_last=mem_last,
            mem_total=start0.device_memory_total if start0 else None,
            scalars=build.last_scalars(aggs),
            loss_window=build.loss_window(aggs),
            evals=tuple(self.evals.items()),
            eval_step=self.eval_step,
            regions=regions,
            unaccounted=unaccounted,
            step_times=build.step_times(aggs, self.window),
            rank_info=build.rank_infos(aggs, walls, sps, self.starts, cmp.slowest, recent),
            straggler=cmp.straggler,
            straggler_excess=cmp.excess,
            spread_window=cmp.spread,
            files=files,
            error=build.run_error(self.ends),
            host=start0.host if start0 else "",
            device=start0.device if start0 else "",
            gpu_name=start0.gpu_name if start0 else None,
            started=start0.time if start0 else None,
            idle_s=idle_s,
            replay=replay,
            mem_trend=worst_trend(a.mem_facts() for a in aggs),
            config=start0.config if start0 else None,
            stragglers=cmp.verdict,
            light=light,
            series=None if light else build.region_series(aggs, regions, self._rows),
        )
