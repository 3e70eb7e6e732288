"""Immutable snapshots: what the reader hands the screen once per tick (widgets only render).

All values are plain floats/ints/strings; times in milliseconds, ``nan`` when unknown.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

NAN = math.nan

# Run states
RUNNING = "running"
FINISHED = "finished"
FAILED = "failed"
INTERRUPTED = "interrupted"
STALE = "stale"
WAITING = "waiting"  # a folder with no record yet
STATES = (RUNNING, FINISHED, FAILED, INTERRUPTED, STALE, WAITING)

UNACCOUNTED = "(unaccounted)"


@dataclass(frozen=True, slots=True)
class Stats:
    """Statistics of one value (a region's ms, or step wall ms) over a span of steps."""

    last: float = NAN
    avg: float = NAN
    min: float = NAN
    max: float = NAN
    p50: float = NAN
    p95: float = NAN
    steps: int = 0  # steps in which it was seen
    calls: int = 0  # call count over the span
    share: float = NAN  # of step wall time over the span (0..1)
    last_share: float = NAN  # in the last step


EMPTY = Stats()

RankStats = tuple[int, Stats, Stats]  # (rank, whole, window)


class LazyRanks(Sequence[RankStats]):
    """A region's per-rank figures, made on first read from values a snapshot froze: at 64
    ranks × 40 regions a full snapshot would otherwise build 5,120 Stats for the one region
    a panel shows. Reads like a tuple (equal to one with the same items); ``make`` must only
    read values nothing changes after the snapshot is made."""

    __slots__ = ("_items", "_make")

    def __init__(self, make: Callable[[], tuple[RankStats, ...]]) -> None:
        self._make = make
        self._items: tuple[RankStats, ...] | None = None

    def _get(self) -> tuple[RankStats, ...]:
        items = self._items
        if items is None:  # two threads may both make it (the same items): no lock needed
            items = self._items = self._make()
        return items

    @overload
    def __getitem__(self, i: int) -> RankStats: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[RankStats, ...]: ...
    def __getitem__(self, i: int | slice) -> Any:
        return self._get()[i]

    def __len__(self) -> int:
        return len(self._get())

    def __iter__(self) -> Iterator[RankStats]:
        return iter(self._get())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LazyRanks):
            other = other._get()
        return self._get() == other if isinstance(other, tuple) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._get())

    def __repr__(self) -> str:
        return repr(self._get())


@dataclass(frozen=True, slots=True)
class RegionRow:
    """One node of the stage tree: inclusive statistics, all ranks together."""

    name: str  # full path, e.g. "forward/vrt/stage8"
    leaf: str  # last component
    depth: int  # 0 for top level
    parent: str | None
    whole: Stats
    window: Stats
    # (rank, whole, window) per rank: a tuple, or (a full snapshot's) LazyRanks
    ranks: Sequence[RankStats] = ()
    # True for a "…" row standing for rows cut from the tree (too deep, too many): no figures
    cut: bool = False


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    rank: int | None
    lines: int
    malformed: int
    skipped: int  # records of kinds this version does not know
    last_error: str
    kind: str  # "jsonl" or "text"
    # FILE_OK "ok", or "missing" (removed), "unreadable", "not-regular" (a folder, a FIFO:
    # never opened), "symlink-loop"; ``problem`` says it in one line. Figures read before
    # a file went missing or unreadable are kept.
    state: str = "ok"
    problem: str = ""
    duplicates: int = 0  # step records dropped because a resumed segment repeated them
    dropped: int = 0  # records the writer dropped (its queue full): the records' "dropped"
    # a classic text log's nesting and what it holds (tui.model.nesting.NestNote)
    nesting: Any = None
    restarts: int = 0  # a classic text log's logger restarts (its blocks numbered on)
    interleaved: int = 0  # its blocks going on with an earlier process's count (one file)
    blank: int = 0  # its blocks with no region and no time (headers a crash left): not steps


@dataclass(frozen=True, slots=True)
class RankInfo:
    rank: int
    step: int
    wall: Stats  # whole run
    wall_window: Stats
    samples_per_s: float
    host: str
    device: str
    slowest_steps: int  # steps in the window where this rank was the slowest
    mem_peak: int | None
    # the window's steps, oldest first: (step, wall, wait, data, h2d, launch, sync, exposed)
    # ms (tui.model.rankstats.RECENT_COLUMNS), for judging stragglers by their own time
    # (tui.model.rankstats.judge_stragglers); NaN where not measured
    recent: tuple[tuple[float, ...], ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """Everything the screen shows about one run."""

    run_id: str
    path: str
    state: str
    step: int
    total_steps: int | None
    world_size: int
    ranks_seen: tuple[int, ...]
    window_size: int
    wall: Stats
    wall_window: Stats
    samples_per_s: float  # whole run, summed over ranks
    samples_per_s_window: float
    steps_per_s_window: float
    eta_s: float | None
    mem_peak: int | None  # bytes, max over ranks ("peak", else "allocated", else "rss")
    mem_last: int | None
    mem_total: int | None
    scalars: tuple[tuple[str, float], ...]
    loss_window: float
    evals: tuple[tuple[str, float], ...]
    eval_step: int | None
    regions: tuple[RegionRow, ...]
    unaccounted: RegionRow
    step_times: tuple[float, ...]  # recent step wall ms (slowest rank per step)
    rank_info: tuple[RankInfo, ...]
    straggler: int | None
    straggler_excess: float  # mean ms the straggler is behind the median rank, in the window
    spread_window: float  # mean (max - min) step wall ms across ranks, in the window
    files: tuple[FileInfo, ...]
    error: str | None
    host: str
    device: str
    gpu_name: str | None
    started: float | None
    idle_s: float  # seconds since the run's files last grew
    replay: str | None = None  # "▶ 2x" status line when replaying
    # for the advice (tui.diagnosis): the memory trend of the rank whose memory grew most
    # (tui.model.rankstats.TrendFacts) and rank 0's run_start config
    mem_trend: Any = field(default=None, compare=False)
    config: dict[str, Any] | None = field(default=None, compare=False)
    # the straggler verdict (tui.model.rankstats.StragglerVerdict): compute per rank, who
    # waits for whom; ``straggler``/``straggler_excess`` above are its rank and excess
    stragglers: Any = field(default=None, compare=False)
    # each region's and the step's time over the whole run, per rank, downsampled
    # (tui.model.series.SeriesSet): the chart. Full snapshots only.
    series: Any = field(default=None, compare=False)
    # the monitor failing to read the run (a bug, not bad data): one line naming the file
    reader_error: str | None = None
    from_index: bool = field(default=False, compare=False)  # started from a saved run index
    # a light snapshot (``tui watch`` between panel redraws): ``regions`` is empty,
    # ``unaccounted`` blank and no advice, every other field as in the full snapshot of the
    # same moment. What the header shows; the panels are only ever drawn from full ones.
    light: bool = False
    # the advice lines (warnings marked "⚠ ") of the whole run and of the recent window,
    # attached to full snapshots by the source (tui.diagnosis.advice.with_advice): the
    # screen shows them without judging anything on its own thread
    advice: tuple[str, ...] = field(default=(), compare=False)
    advice_window: tuple[str, ...] = field(default=(), compare=False)
    # the run's captured profiler traces, (first step, rank), oldest first (at most 64 of
    # the latest; stagewatch.traces), read from its traces/ folder by the source
    captures: tuple[tuple[int, int], ...] = field(default=(), compare=False)

    @property
    def file_problems(self) -> tuple[FileInfo, ...]:
        """Files that are missing, unreadable or not regular files."""
        return tuple(f for f in self.files if f.state != "ok")

    @property
    def malformed(self) -> int:
        return sum(f.malformed for f in self.files)

    def region(self, name: str) -> RegionRow | None:
        for r in self.regions:
            if r.name == name:
                return r
        return self.unaccounted if name == UNACCOUNTED else None


@dataclass(frozen=True, slots=True)
class RunItem:
    """A line of the run list."""

    run_id: str
    path: str
    state: str
    step: int
    total_steps: int | None
    started: float | None


@dataclass(frozen=True, slots=True)
class WorldSnapshot:
    """One tick: the run list and the selected run's details."""

    seq: int
    root: str
    runs: tuple[RunItem, ...]
    selected: RunSnapshot | None
    made_at: float = field(default=0.0)  # monotonic time the reader built it (latency checks)
    mode: str = "watch"  # or "replay"
    # the reader thread failing (one line, with the file when known); the runs shown are
    # the last good read. `tui watch` exits non-zero when it was set.
    error: str | None = None

    @property
    def light(self) -> bool:
        """The selected run's snapshot is light (no per-region figures): header only."""
        return self.selected is not None and self.selected.light
