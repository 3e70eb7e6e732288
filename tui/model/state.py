"""A run's aggregate as plain typed values, and back: what the run index saves.

:func:`state_of` turns a :class:`RunAgg` into a :class:`RunAggState` (msgspec Structs, numpy
arrays as raw buffers); :func:`agg_from_state` makes the same aggregate again. Both check
that the aggregate still has exactly the fields known here, of the same types and shapes,
and raise :class:`StateMismatch` otherwise (a saved state is then not used).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import msgspec
import numpy as np

from stagewatch.records import RunEnd, RunStart
from tui.model.aggregate import RunAgg
from tui.model.histogram import NBUCKETS
from tui.model.ranks import RankAgg
from tui.model.rankstats import MemTrend
from tui.model.series import NBUCKETS as SERIES_BUCKETS
from tui.model.series import RegionSeries


class StateMismatch(ValueError):
    """A state that does not fit the aggregate (another window, shape, field or type)."""


class Array(msgspec.Struct, array_like=True, frozen=True):
    """A numpy array as its dtype (``numpy.dtype.str``), shape and raw bytes."""

    dtype: str
    shape: list[int]
    data: bytes

    @classmethod
    def of(cls, a: np.ndarray) -> Array:
        a = np.ascontiguousarray(a)
        return cls(a.dtype.str, list(a.shape), a.tobytes())

    def array(self, dtype: np.dtype[Any], shape: tuple[int, ...], name: str) -> np.ndarray:
        """The array (a copy), when it has ``dtype`` and ``shape``; else StateMismatch."""
        if self.dtype != dtype.str or tuple(self.shape) != shape:
            raise StateMismatch(f"{name}: {self.dtype}{self.shape}, not {dtype.str}{shape}")
        if len(self.data) != dtype.itemsize * int(np.prod(shape)):
            raise StateMismatch(f"{name}: {len(self.data)} bytes for {shape}")
        return np.frombuffer(self.data, dtype=dtype).reshape(shape).copy()


class MemTrendState(msgspec.Struct, frozen=True):
    """:class:`MemTrend`'s fields (its slots without the leading underscore)."""

    window: int
    skip: int
    skipped: int
    early: list[float]
    ring: list[float]
    n: int
    mx: float
    my: float
    sxx: float
    cxy: float
    first: int
    last: int


class SeriesState(msgspec.Struct, frozen=True):
    """:class:`RegionSeries`'s fields."""

    width: int
    sum: Array
    cnt: Array
    wall_sum: Array
    wall_cnt: Array


class RankAggState(msgspec.Struct, frozen=True):
    """:class:`RankAgg`'s fields (its cache of region schemas left out)."""

    rank: int
    window: int
    cols: dict[str, int]
    names: list[str]
    cap: int
    last: Array
    last_calls: Array
    last_seen: Array
    sum: Array
    min: Array
    max: Array
    n: Array
    calls: Array
    hist: Array
    ring: Array
    ring_calls: Array
    ring_wall: Array
    ring_samples: Array
    ring_step: Array
    ring_loss: Array
    pos: int
    filled: int
    steps: int
    last_step: int
    wall_sum: float
    wall_min: float
    wall_max: float
    wall_last: float
    wall_hist: Array
    samples_total: int
    last_time: float
    memory: dict[str, int | float | None] | None
    mem_peak: int | None
    mem_trend: MemTrendState
    scalars: dict[str, int | float | None] | None
    dropped_names: int
    series: SeriesState


class RunAggState(msgspec.Struct, frozen=True):
    """:class:`RunAgg`'s fields but those given when it is made again (run id, path) and
    those recomputed with each snapshot."""

    window: int
    ranks: dict[int, RankAggState]
    starts: dict[int, RunStart]
    ends: dict[int, RunEnd]
    evals: dict[str, float]
    eval_step: int | None
    tails: dict[int, list[tuple[int, float]]]


# The shape of each of RankAgg's arrays, by its column capacity ("cap") and its window.
_SHAPES: dict[str, tuple[str | int, ...]] = {
    "last": ("cap",),
    "last_calls": ("cap",),
    "last_seen": ("cap",),
    "sum": ("cap",),
    "min": ("cap",),
    "max": ("cap",),
    "n": ("cap",),
    "calls": ("cap",),
    "hist": ("cap", NBUCKETS),
    "ring": ("window", "cap"),
    "ring_calls": ("window", "cap"),
    "ring_wall": ("window",),
    "ring_samples": ("window",),
    "ring_step": ("window",),
    "ring_loss": ("window",),
    "wall_hist": (NBUCKETS,),
}
# rebuilt as regions are folded in / read out ("_kids_cache", "_phase_cache", "_top_cache",
# "_recent": issue 22's recent_work; "_pending": batches not folded yet, folded by the first
# read of a region array; "_prefix": which schemas fill the columns in order; "_qk", "_qc",
# "_wqk", "_wqc": the quantiles' buckets, found again from the histograms when absent)
_RANK_CACHES = {
    "_schemas",
    "_memo",
    "_kids_cache",
    "_phase_cache",
    "_top_cache",
    "_recent",
    "_recent_arr",
    "_pending",
    "_prefix",
    "_qk",
    "_qc",
    "_wqk",
    "_wqc",
}
_RANK_FIELDS = set(RankAggState.__struct_fields__)
_RUN_GIVEN = {"run_id", "path", "compared_steps", "compare_ranks", "_compared", "_rows", "_rising"}
_RUN_FIELDS = set(RunAggState.__struct_fields__)
_TREND_FIELDS = set(MemTrendState.__struct_fields__)


def _shape(name: str, cap: int, window: int) -> tuple[int, ...]:
    return tuple(cap if d == "cap" else window if d == "window" else int(d) for d in _SHAPES[name])


def _same_fields(kind: str, have: set[str], known: set[str]) -> None:
    if have != known:
        new, gone = sorted(have - known), sorted(known - have)
        raise StateMismatch(f"{kind} changed: fields {new} not saved, {gone} gone")


def _check_rank(a: RankAgg) -> None:
    """``a`` has the fields, arrays and shapes this module knows."""
    _same_fields("RankAgg", set(vars(a)) - _RANK_CACHES, _RANK_FIELDS)
    arrays = {k for k, v in vars(a).items() if isinstance(v, np.ndarray) and k not in _RANK_CACHES}
    _same_fields("RankAgg's arrays", arrays, set(_SHAPES))
    for k in arrays:
        if getattr(a, k).shape != _shape(k, a.cap, a.window):
            raise StateMismatch(f"RankAgg.{k} has another shape")
    _same_fields("MemTrend", {s.lstrip("_") for s in MemTrend.__slots__}, _TREND_FIELDS)


def _copy(v: Any) -> Any:
    """Lists and dicts copied (the aggregate goes on changing its own), the rest as is."""
    return list(v) if isinstance(v, (list, deque)) else dict(v) if isinstance(v, dict) else v


def _trend_state(t: MemTrend) -> MemTrendState:
    return MemTrendState(**{s.lstrip("_"): _copy(getattr(t, s)) for s in MemTrend.__slots__})


def _trend_from(s: MemTrendState) -> MemTrend:
    t = MemTrend(s.window, s.skip)
    for slot in MemTrend.__slots__:
        v = _copy(getattr(s, slot.lstrip("_")))
        setattr(t, slot, deque(v, maxlen=t.window) if slot == "_ring" else v)
    return t


def _series_state(s: RegionSeries) -> SeriesState:
    return SeriesState(
        s.width, Array.of(s.sum), Array.of(s.cnt), Array.of(s.wall_sum), Array.of(s.wall_cnt)
    )


def _series_from(st: SeriesState, cap: int) -> RegionSeries:
    s = RegionSeries(cap)
    if st.width < 1 or st.width & (st.width - 1):
        raise StateMismatch("series: width not a power of two")
    s.width = st.width
    s.sum = st.sum.array(s.sum.dtype, (SERIES_BUCKETS, cap), "series.sum")
    s.cnt = st.cnt.array(s.cnt.dtype, (SERIES_BUCKETS, cap), "series.cnt")
    s.wall_sum = st.wall_sum.array(s.wall_sum.dtype, (SERIES_BUCKETS,), "series.wall_sum")
    s.wall_cnt = st.wall_cnt.array(s.wall_cnt.dtype, (SERIES_BUCKETS,), "series.wall_cnt")
    return s


def _rank_state(a: RankAgg) -> RankAggState:
    _check_rank(a)
    d: dict[str, Any] = {}
    for k in _RANK_FIELDS:
        v = getattr(a, k)
        if k in _SHAPES:
            v = Array.of(v)
        elif k == "mem_trend":
            v = _trend_state(v)
        elif k == "series":
            v = _series_state(v)
        d[k] = _copy(v)
    return RankAggState(**d)


def _rank_from(s: RankAggState, window: int) -> RankAgg:
    a = RankAgg(s.rank, window)
    _check_rank(a)
    if s.window != a.window:
        raise StateMismatch("another window")
    if not len(s.names) <= s.cap or s.cols != {n: i for i, n in enumerate(s.names)}:
        raise StateMismatch("inconsistent region columns")
    for k in _RANK_FIELDS:
        v = getattr(s, k)
        if k in _SHAPES:
            v = v.array(getattr(a, k).dtype, _shape(k, s.cap, a.window), k)
        elif k == "mem_trend":
            v = _trend_from(v)
        elif k == "series":
            v = _series_from(v, s.cap)
        setattr(a, k, _copy(v))
    return a


def state_of(agg: RunAgg) -> RunAggState:
    """What :func:`agg_from_state` needs to make ``agg`` again. Raises StateMismatch when
    the aggregate has fields this module does not know."""
    _same_fields("RunAgg", set(vars(agg)) - _RUN_GIVEN, _RUN_FIELDS)
    return RunAggState(
        window=agg.window,
        ranks={r: _rank_state(a) for r, a in agg.ranks.items()},
        starts=dict(agg.starts),
        ends=dict(agg.ends),
        evals=dict(agg.evals),
        eval_step=agg.eval_step,
        tails={r: list(t) for r, t in agg.tails.items()},
    )


def agg_from_state(state: RunAggState, run_id: str, path: str, window: int) -> RunAgg:
    """The aggregate ``state`` was taken of (``run_id``, ``path``: the run's). Raises
    StateMismatch when it does not fit (another window, shapes, fields)."""
    agg = RunAgg(run_id, path, window)
    _same_fields("RunAgg", set(vars(agg)) - _RUN_GIVEN, _RUN_FIELDS)
    if state.window != agg.window:
        raise StateMismatch("another window")
    agg.ranks = {int(r): _rank_from(s, window) for r, s in state.ranks.items()}
    agg.starts = dict(state.starts)
    agg.ends = dict(state.ends)
    agg.evals = dict(state.evals)
    agg.eval_step = state.eval_step
    agg.tails = {
        int(r): deque(((int(s), float(w)) for s, w in t), maxlen=agg.pending_limit)
        for r, t in state.tails.items()
    }
    return agg
