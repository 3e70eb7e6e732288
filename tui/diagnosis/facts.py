"""The facts the rules read: :class:`RunFacts`, built from a monitor snapshot.

Everything comes from the :class:`~tui.model.snapshot.RunSnapshot`: its statistics of one
span (the whole run or the recent window, :func:`span_label`), its straggler verdict, its
memory trend (``mem_trend``) and rank 0's ``run_start`` config (``config``,
:func:`config_facts`). No file is read here, so a rule can be tested on hand-made facts and
on synthetic runs alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tui.diagnosis.thresholds import DEFAULT_THRESHOLDS, Thresholds
from tui.model.rankstats import WAIT_REGIONS, StragglerVerdict, TrendFacts, judge_stragglers
from tui.model.units import median, ok


@dataclass(frozen=True, slots=True)
class RankFacts:
    """One rank as the rules see it."""

    rank: int
    host: str
    step_ms: float  # mean step wall time in the window
    slowest_steps: int  # compared steps in the window where this rank was the slowest


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What the rules read. Times in ms (window means), shares 0..1, memory in bytes.

    Unknown values are ``None`` (or ``nan`` for times); a rule that needs one says nothing.
    """

    run_id: str = ""
    steps: int = 0
    world_size: int = 1
    device: str = ""
    step_ms: float = math.nan
    region_ms: Mapping[str, float] = field(default_factory=dict)  # top-level regions
    region_share: Mapping[str, float] = field(default_factory=dict)
    unaccounted_share: float = math.nan
    # memory
    mem_peak: int | None = None  # max over ranks of memory.peak (else allocated, else rss)
    mem_total: int | None = None  # device total (None on CPU)
    mem_allocated: int | None = None  # allocated at the end of the last step (device runs)
    mem_trend: TrendFacts | None = None
    # ranks
    ranks: tuple[RankFacts, ...] = ()
    straggler: int | None = None
    straggler_excess_ms: float = math.nan
    compared_steps: int = 0
    stragglers: StragglerVerdict | None = None  # the verdict (compute per rank, who waits)
    # where the straggler loses its time: top-level region and the deepest one explaining it
    straggler_region: str | None = None
    straggler_region_ms: float = math.nan
    straggler_leaf: str | None = None
    straggler_leaf_ms: float = math.nan
    span: str = "whole run"  # which steps the times and shares are of
    # configuration (run_start config), None when the run does not say
    checkpoint_attn: bool | None = None
    checkpoint_ffn: bool | None = None
    optimizer: str | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    num_workers: int | None = None
    pin_memory: bool | None = None
    data_cache: bool | None = None
    param_count: int | None = None  # trainable parameters, when the run records it

    @property
    def checkpointing(self) -> bool | None:
        """Activation checkpointing on (either key), off, or None when the config is silent."""
        if self.checkpoint_attn is None and self.checkpoint_ffn is None:
            return None
        return bool(self.checkpoint_attn) or bool(self.checkpoint_ffn)

    @property
    def device_memory(self) -> bool:
        """Memory figures are of an accelerator (so headroom means something)."""
        return self.mem_total is not None and self.mem_total > 0

    def ms(self, name: str) -> float:
        """Mean ms of a top-level region (NaN when not timed)."""
        return float(self.region_ms.get(name, math.nan))

    def share(self, name: str) -> float:
        """Share of the step of a top-level region (NaN when not timed)."""
        return float(self.region_share.get(name, math.nan))


# --------------------------------------------------------------------------- configuration


def cfg_get(config: Mapping[str, Any] | None, path: str) -> Any:
    """``config["A"]["B"]`` for ``"A.B"``; None when any part is missing."""
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _bool(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


#: where a parameter count may be recorded in the run_start config (first found wins)
PARAM_KEYS = (
    "PARAMS.TRAINABLE",
    "PARAMS.TOTAL",
    "params.trainable",
    "params.total",
    "num_params",
    "NUM_PARAMS",
)


def config_facts(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The RunFacts fields that come from the trainer's configuration (YAML keys)."""
    c = config or {}
    params = None
    for k in PARAM_KEYS:
        params = _int(cfg_get(c, k))
        if params:
            break
    opt = cfg_get(c, "TRAIN.OPTIM.TYPE")
    synthetic = cfg_get(c, "DATA.TYPE") in (None, "synthetic")
    return {
        "checkpoint_attn": _bool(cfg_get(c, "MODEL.VRT.USE_CHECKPOINT_ATTN")),
        "checkpoint_ffn": _bool(cfg_get(c, "MODEL.VRT.USE_CHECKPOINT_FFN")),
        "optimizer": str(opt).lower() if isinstance(opt, str) else None,
        "batch_size": _int(cfg_get(c, "TRAIN.BATCH_SIZE")),
        "grad_accum": _int(cfg_get(c, "TRAIN.GRADIENT_ACCUMULATION_STEPS")),
        "num_workers": _int(cfg_get(c, "DATALOADER.NUM_WORKERS")),
        "pin_memory": _bool(cfg_get(c, "DATALOADER.PIN_MEMORY")),
        "data_cache": _bool(cfg_get(c, "DATA.SYNTHETIC.CACHE")) if synthetic else None,
        "param_count": params,
    }


# --------------------------------------------------------------------------- ranks


def verdict_of(snap: Any, thresholds: Thresholds | None = None) -> StragglerVerdict | None:
    """The snapshot's straggler verdict: the one the monitor computed, else (or with other
    ``thresholds``) from its ranks' recent steps (``RankInfo.recent``)."""
    v = getattr(snap, "stragglers", None)
    if v is not None and thresholds is None:
        return v
    per = {ri.rank: getattr(ri, "recent", ()) for ri in getattr(snap, "rank_info", ())}
    return judge_stragglers(per, thresholds, getattr(snap, "window_size", None))


def _excess_of(row: Any, rank: int) -> float:
    """ms by which ``rank``'s window mean of a region exceeds the other ranks' median."""
    mine, others = math.nan, []
    for r, _whole, win in row.ranks:
        if not win.steps:
            continue
        if r == rank:
            mine = win.avg
        else:
            others.append(win.avg)
    return mine - median(others) if others and ok(mine) else math.nan


def straggler_region(snap: Any, rank: int) -> tuple[str, float, str, float] | None:
    """Where ``rank`` loses time over the other ranks (recent window means, ms):
    (top-level region, its excess, the deepest region under it explaining most of it, excess).
    Wait regions are left out: they are the symptom, not the cause."""
    rows = [r for r in getattr(snap, "regions", ()) if r.name.split("/", 1)[0] not in WAIT_REGIONS]
    ex = {r.name: e for r in rows if ok(e := _excess_of(r, rank))}
    top = [(n, e) for n, e in ex.items() if "/" not in n]
    if not top:
        return None
    name, e = max(top, key=lambda kv: kv[1])
    if e <= 0:
        return None
    deep, de = name, e
    while True:
        kids = [
            (n, x)
            for n, x in ex.items()
            if n.startswith(deep + "/") and "/" not in n[len(deep) + 1 :]
        ]
        if not kids:
            break
        k, x = max(kids, key=lambda kv: kv[1])
        if x < 0.5 * de:
            break
        deep, de = k, x
    return name, e, deep, de


def _straggler_facts(snap: Any, verdict: StragglerVerdict | None) -> dict[str, Any]:
    """The RunFacts fields saying where the named straggler loses its time."""
    if verdict is None or verdict.straggler is None:
        return {}
    loc = straggler_region(snap, verdict.straggler)
    if loc is None:
        return {}
    return {
        "straggler_region": loc[0],
        "straggler_region_ms": loc[1],
        "straggler_leaf": loc[2],
        "straggler_leaf_ms": loc[3],
    }


# --------------------------------------------------------------------------- snapshot


def span_label(snap: Any, window: bool) -> str:
    """Which steps a figure is of: ``whole run (40 steps)`` or ``last 100 steps (61–160)``.

    The screen, ``tui summary`` and the advice print it next to the figures they show.
    """
    infos = getattr(snap, "rank_info", ())
    last = int(getattr(snap, "step", 0) or 0)
    if not window:
        n = max((ri.wall.steps for ri in infos), default=0) or last
        return f"whole run ({n} step{'s' if n != 1 else ''})"
    n = max((ri.wall_window.steps for ri in infos), default=0)
    if not n:
        return f"last {getattr(snap, 'window_size', 0)} steps"
    return f"last {n} step{'s' if n != 1 else ''} ({max(1, last - n + 1)}–{last})"


#: regions below the top level that rules read: the input pipeline of stagewatch.timed_loader
SUB_REGIONS = frozenset({"data/wait", "data/h2d"})


def _region_facts(snap: Any, window: bool) -> tuple[dict[str, float], dict[str, float]]:
    """(mean ms, share) of each top-level region (and of :data:`SUB_REGIONS`) in the span."""
    ms: dict[str, float] = {}
    share: dict[str, float] = {}
    for r in snap.regions:
        st = r.window if window else r.whole
        if (r.depth == 0 or r.name in SUB_REGIONS) and st.steps:
            ms[r.name] = st.avg
            share[r.name] = st.share
    return ms, share


def facts_from_snapshot(
    snap: Any, *, window: bool = False, thresholds: Thresholds | None = None
) -> RunFacts:
    """RunFacts of a :class:`~tui.model.snapshot.RunSnapshot`: whole-run statistics, or those
    of the recent window with ``window=True`` (the span the screen or ``tui summary`` shows).

    The ``run_start`` config and the memory trend are the snapshot's ``config`` and
    ``mem_trend``. The straggler verdict is always of the recent steps (it compares ranks
    step by step); with ``thresholds`` other than the defaults it is judged again by them.
    """
    ms, share = _region_facts(snap, window)
    alloc = None
    if snap.device.startswith("cuda") and snap.mem_last is not None:
        alloc = int(snap.mem_last)  # the monitor's mem_last is "allocated" when there is one
    ranks = tuple(
        RankFacts(
            rank=ri.rank,
            host=ri.host,
            step_ms=(ri.wall_window if window else ri.wall).avg,
            slowest_steps=ri.slowest_steps,
        )
        for ri in snap.rank_info
    )
    verdict = verdict_of(snap, thresholds if thresholds not in (None, DEFAULT_THRESHOLDS) else None)
    if verdict is not None:
        straggler, excess, compared = verdict.straggler, verdict.excess_ms, verdict.compared_steps
    else:
        straggler, excess = snap.straggler, snap.straggler_excess
        compared = sum(r.slowest_steps for r in ranks)
    return RunFacts(
        run_id=snap.run_id,
        steps=snap.step,
        world_size=snap.world_size,
        device=snap.device,
        step_ms=(snap.wall_window if window else snap.wall).avg,
        region_ms=ms,
        region_share=share,
        unaccounted_share=(snap.unaccounted.window if window else snap.unaccounted.whole).share,
        mem_peak=snap.mem_peak,
        mem_total=snap.mem_total,
        mem_allocated=alloc,
        mem_trend=getattr(snap, "mem_trend", None),
        ranks=ranks,
        straggler=straggler,
        straggler_excess_ms=excess,
        compared_steps=compared,
        stragglers=verdict,
        span=span_label(snap, window),
        **_straggler_facts(snap, verdict),
        **config_facts(getattr(snap, "config", None)),
    )
