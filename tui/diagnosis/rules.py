"""Diagnosis: what dominates a run's steps and what to try, each with its evidence (torch-free).

The rule set reads a small :class:`RunFacts` object, built from the monitor's
:class:`~tui.model.snapshot.RunSnapshot` plus the ``run_start`` config (:func:`facts_from_snapshot`),
so that every rule can be tested on hand-made facts and on synthetic runs written as real
JSONL. Every threshold lives in :class:`Thresholds`; ``docs/advice.md`` is the prose twin of
this module (rules, thresholds, evidence, what each estimate assumes).

Each rule returns an :class:`Advice` (rule id, severity, a plain-words title, what to try, and
the figures it is based on) or nothing. :func:`diagnose` runs them all and sorts the result
by severity (``warn`` before ``suggest`` before ``info``).

The rank statistics it judges (memory trend, straggler verdict) are the model's
(:mod:`tui.model.rankstats`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stagewatch.runs import rank_files
from tui.model.rankstats import (
    WAIT_REGIONS,
    MemTrend,
    StragglerLimits,
    StragglerVerdict,
    TrendFacts,
    judge_stragglers,
    worst_trend,
)
from tui.model.units import MiB
from tui.model.units import gb as _gb
from tui.model.units import json_num as _json_num
from tui.model.units import median as _median
from tui.model.units import ms as _ms
from tui.model.units import ok as _ok
from tui.model.units import pct as _pct

WARN = "warn"  # something is wrong or about to go wrong
SUGGEST = "suggest"  # a change that should make training faster
INFO = "info"  # what dominates; no action needed by itself
SEVERITIES = (WARN, SUGGEST, INFO)


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True, slots=True)
class Thresholds(StragglerLimits):
    """Every number the rules compare against, in one place (documented in docs/advice.md).

    Shares are fractions of the step wall time (0..1); memory fractions are of the device's
    total memory. The ``straggler_*`` fields are :class:`StragglerLimits`' (the model's
    verdict uses them too).
    """

    #: steps a run needs before timing rules speak (the first step is a warm-up)
    min_steps: int = 5
    #: a top-level region at or above this share "dominates" the step (the monitor's red)
    dominant_share: float = 0.40
    #: backward / forward above this with checkpointing on: recompute is expensive. Without
    #: checkpointing backward costs ~2× forward; checkpointing adds about one more forward
    checkpoint_ratio: float = 2.3
    #: device memory free at the peak needed before suggesting checkpointing off
    checkpoint_headroom: float = 0.25
    #: estimated fp32 Adam state / peak memory at or above which 8-bit AdamW is suggested
    optimizer_state_share: float = 0.20
    #: device memory free at the peak needed before suggesting a larger batch
    batch_headroom: float = 0.30
    #: fraction of the free memory a suggested larger batch may use
    batch_fill: float = 0.90
    #: waiting for data (region ``data``) at or above this share
    data_share: float = 0.10
    #: exposed gradient all-reduce (region ``allreduce``) at or above this share
    allreduce_share: float = 0.10
    #: peak memory at or above this fraction of the device total: warn
    memory_near_limit: float = 0.90
    #: memory growth (recent window mean over early window mean) at or above this: warn
    memory_creep: float = 0.05
    #: ... and at least this many bytes
    memory_creep_min_bytes: int = 64 * MiB
    #: time outside every timed region at or above this share: say so
    unaccounted_share: float = 0.15


DEFAULT_THRESHOLDS = Thresholds()


def verdict_of(snap: Any, thresholds: Thresholds | None = None) -> StragglerVerdict | None:
    """The snapshot's straggler verdict: the one the monitor computed, else from its ranks'
    recent steps (``RankInfo.recent``)."""
    v = getattr(snap, "stragglers", None)
    if v is not None and thresholds is None:
        return v
    per = {ri.rank: getattr(ri, "recent", ()) for ri in getattr(snap, "rank_info", ())}
    return judge_stragglers(per, thresholds, getattr(snap, "window_size", None))


def straggler_region(snap: Any, rank: int) -> tuple[str, float, str, float] | None:
    """Where ``rank`` loses time over the other ranks (recent window means, ms):
    (top-level region, its excess, the deepest region under it explaining most of it, excess).
    Wait regions are left out: they are the symptom, not the cause."""

    def excess(row: Any) -> float:
        mine, others = math.nan, []
        for r, _whole, win in row.ranks:
            if not win.steps:
                continue
            if r == rank:
                mine = win.avg
            else:
                others.append(win.avg)
        return mine - _median(others) if others and _ok(mine) else math.nan

    rows = [r for r in getattr(snap, "regions", ()) if r.name.split("/", 1)[0] not in WAIT_REGIONS]
    ex = {r.name: e for r in rows if _ok(e := excess(r))}
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


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True, slots=True)
class RankFacts:
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
        if self.checkpoint_attn is None and self.checkpoint_ffn is None:
            return None
        return bool(self.checkpoint_attn) or bool(self.checkpoint_ffn)

    @property
    def device_memory(self) -> bool:
        """Memory figures are of an accelerator (so headroom means something)."""
        return self.mem_total is not None and self.mem_total > 0

    def ms(self, name: str) -> float:
        return float(self.region_ms.get(name, math.nan))

    def share(self, name: str) -> float:
        return float(self.region_share.get(name, math.nan))


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
    return {
        "checkpoint_attn": _bool(cfg_get(c, "MODEL.VRT.USE_CHECKPOINT_ATTN")),
        "checkpoint_ffn": _bool(cfg_get(c, "MODEL.VRT.USE_CHECKPOINT_FFN")),
        "optimizer": str(opt).lower() if isinstance(opt, str) else None,
        "batch_size": _int(cfg_get(c, "TRAIN.BATCH_SIZE")),
        "grad_accum": _int(cfg_get(c, "TRAIN.GRADIENT_ACCUMULATION_STEPS")),
        "num_workers": _int(cfg_get(c, "DATALOADER.NUM_WORKERS")),
        "pin_memory": _bool(cfg_get(c, "DATALOADER.PIN_MEMORY")),
        "data_cache": _bool(cfg_get(c, "DATA.SYNTHETIC.CACHE"))
        if cfg_get(c, "DATA.TYPE") in (None, "synthetic")
        else None,
        "param_count": params,
    }


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


def facts_from_snapshot(
    snap: Any,
    config: Mapping[str, Any] | None = None,
    trend: TrendFacts | None = None,
    *,
    window: bool = False,
    thresholds: Thresholds | None = None,
) -> RunFacts:
    """RunFacts of a :class:`~tui.model.snapshot.RunSnapshot`: whole-run statistics, or those of the
    recent window with ``window=True`` (the span the screen or ``tui summary`` shows).

    ``config`` is the ``run_start`` config; ``trend`` the memory trend. Each falls back to a
    ``config`` / ``mem_trend`` attribute of the snapshot when the monitor provides one. The
    straggler verdict is always of the recent steps (it compares ranks step by step).
    """
    if config is None:
        config = getattr(snap, "config", None)
    if trend is None:
        trend = getattr(snap, "mem_trend", None)
    ms: dict[str, float] = {}
    share: dict[str, float] = {}
    for r in snap.regions:
        st = r.window if window else r.whole
        if r.depth == 0 and st.steps:
            ms[r.name] = st.avg
            share[r.name] = st.share
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
    where: dict[str, Any] = {}
    if verdict is not None and verdict.straggler is not None:
        loc = straggler_region(snap, verdict.straggler)
        if loc is not None:
            where = {
                "straggler_region": loc[0],
                "straggler_region_ms": loc[1],
                "straggler_leaf": loc[2],
                "straggler_leaf_ms": loc[3],
            }
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
        mem_trend=trend,
        ranks=ranks,
        straggler=verdict.straggler if verdict is not None else snap.straggler,
        straggler_excess_ms=verdict.excess_ms if verdict is not None else snap.straggler_excess,
        compared_steps=verdict.compared_steps
        if verdict is not None
        else sum(r.slowest_steps for r in ranks),
        stragglers=verdict,
        span=span_label(snap, window),
        **where,
        **config_facts(config),
    )


# --------------------------------------------------------------------------- advice


@dataclass(frozen=True, slots=True)
class Advice:
    """One finding. ``evidence`` holds the figures it rests on (JSON-ready numbers/strings)."""

    rule: str
    severity: str
    title: str  # what is going on, in plain words
    action: str  # what to try
    evidence: Mapping[str, Any]
    because: str  # the evidence as a sentence

    def line(self) -> str:
        """One line for a screen or a terminal."""
        return f"{self.title}: {self.action} ({self.because})"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["evidence"] = {k: _json_num(v) for k, v in self.evidence.items()}
        return d


Rule = Callable[[RunFacts, Thresholds], "Advice | None"]


def rule_dominant(f: RunFacts, t: Thresholds) -> Advice | None:
    """What dominates the step: the top-level region with the largest share, if red."""
    if f.steps < t.min_steps or not f.region_share:
        return None
    name, share = max(f.region_share.items(), key=lambda kv: kv[1] if _ok(kv[1]) else -1.0)
    if not _ok(share) or share < t.dominant_share:
        return None
    return Advice(
        "dominant",
        INFO,
        f"{name} dominates the step ({_pct(share)})",
        f"speed-ups elsewhere are capped at {_pct(1 - share)} of the step; start with {name}",
        {"region": name, "share": share, "region_ms": f.ms(name), "step_ms": f.step_ms},
        f"{name} {_ms(f.ms(name))} of a {_ms(f.step_ms)} step",
    )


def rule_checkpointing(f: RunFacts, t: Thresholds) -> Advice | None:
    """Backward far above ~2× forward with checkpointing on and memory to spare."""
    if f.steps < t.min_steps or not f.checkpointing:
        return None
    fwd, bwd = f.ms("forward"), f.ms("backward")
    if not (_ok(fwd) and _ok(bwd)) or fwd <= 0:
        return None
    ratio = bwd / fwd
    if ratio < t.checkpoint_ratio or not f.device_memory or f.mem_peak is None:
        return None
    assert f.mem_total is not None
    free = f.mem_total - f.mem_peak
    headroom = free / f.mem_total
    if headroom < t.checkpoint_headroom:
        return None
    saving = max(0.0, bwd - 2.0 * fwd)  # backward without recompute ≈ 2× forward
    keys = [
        k
        for k, on in (
            ("MODEL.VRT.USE_CHECKPOINT_ATTN", f.checkpoint_attn),
            ("MODEL.VRT.USE_CHECKPOINT_FFN", f.checkpoint_ffn),
        )
        if on
    ]
    sets = " and ".join(f"{k}=false" for k in keys)
    return Advice(
        "checkpointing_off",
        SUGGEST,
        f"backward is {ratio:.1f}× forward: checkpoint recompute is expensive",
        f"turn checkpointing off ({sets}; one at a time if memory is tight) and measure with "
        f"`trainer bench --sweep {keys[0]}=true,false`; expect up to ~{_ms(saving)} less per step",
        {
            "forward_ms": fwd,
            "backward_ms": bwd,
            "ratio": ratio,
            "expected_saving_ms": saving,
            "mem_peak": f.mem_peak,
            "mem_total": f.mem_total,
            "headroom": headroom,
            "checkpoint_attn": f.checkpoint_attn,
            "checkpoint_ffn": f.checkpoint_ffn,
        },
        f"forward {_ms(fwd)}, backward {_ms(bwd)}; peak {_gb(f.mem_peak)} of {_gb(f.mem_total)}, "
        f"{_pct(headroom)} free",
    )


def optimizer_state_estimate(f: RunFacts) -> tuple[float, str] | None:
    """(bytes of fp32 Adam state, how it was estimated), or None when nothing says.

    From the parameter count when the run records one (2 fp32 moments = 8 bytes per
    parameter); else from the device memory allocated at the end of a step, which then holds
    the weights (4 B/param) and the two moments (8 B/param) — gradients are freed by
    ``zero_grad(set_to_none=True)`` — so the moments are 2/3 of it.
    """
    if f.param_count:
        return 8.0 * f.param_count, f"parameter count ({f.param_count:,} × 8 bytes)"
    if f.device_memory and f.mem_allocated:
        return (
            f.mem_allocated * 8.0 / 12.0,
            "2/3 of the memory allocated at step end (weights + 2 moments)",
        )
    return None


def rule_adamw8bit(f: RunFacts, t: Thresholds) -> Advice | None:
    """fp32 AdamW whose state is a large part of peak memory."""
    if f.optimizer != "adamw" or not f.mem_peak:
        return None
    est = optimizer_state_estimate(f)
    if est is None:
        return None
    state, source = est
    share = state / f.mem_peak
    if share < t.optimizer_state_share:
        return None
    saved = state * 0.75  # 8-bit keeps 2 bytes per parameter instead of 8
    return Advice(
        "adamw_8bit",
        SUGGEST,
        f"fp32 AdamW state is ~{_pct(share)} of peak memory",
        f"use 8-bit AdamW (TRAIN.OPTIM.TYPE=adamw8bit) to free ~{_gb(saved)}, room for a larger "
        "batch or for turning checkpointing off (it saves memory, not step time)",
        {
            "state_bytes": state,
            "mem_peak": f.mem_peak,
            "share": share,
            "saved_bytes": saved,
            "estimated_from": source,
        },
        f"state ~{_gb(state)} of a {_gb(f.mem_peak)} peak, estimated from {source}",
    )


def rule_larger_batch(f: RunFacts, t: Thresholds) -> Advice | None:
    """Batch 1 with memory headroom."""
    if f.batch_size != 1 or not f.device_memory or not f.mem_peak:
        return None
    assert f.mem_total is not None
    free = f.mem_total - f.mem_peak
    headroom = free / f.mem_total
    if headroom < t.batch_headroom:
        return None
    ev: dict[str, Any] = {
        "batch_size": 1,
        "mem_peak": f.mem_peak,
        "mem_total": f.mem_total,
        "headroom": headroom,
    }
    fit, most = "", None
    if f.mem_allocated and f.mem_peak > f.mem_allocated:
        per_sample = f.mem_peak - f.mem_allocated  # activations of one sample, roughly
        most = 1 + int(free * t.batch_fill // per_sample)
        ev.update(activation_bytes_per_sample=per_sample, estimated_max_batch=most)
        if most < 2:
            return None
        fit = f"; activations ~{_gb(per_sample)} per sample suggest up to batch {most}"
    sizes = "2" if most == 2 else "2 or 3"
    accum = f.grad_accum or 1
    keep = (
        f"and divide TRAIN.GRADIENT_ACCUMULATION_STEPS (now {accum}) by the same factor to keep "
        "the effective batch"
        if accum > 1
        else "adjust the learning rate"
    )
    return Advice(
        "larger_batch",
        SUGGEST,
        f"batch 1 leaves {_pct(headroom)} of device memory unused",
        f"try TRAIN.BATCH_SIZE={sizes} ({keep}) and measure with "
        f"`trainer bench --sweep TRAIN.BATCH_SIZE=1,{sizes.replace(' or ', ',')}`",
        ev,
        f"peak {_gb(f.mem_peak)} of {_gb(f.mem_total)}{fit}",
    )


def rule_data_wait(f: RunFacts, t: Thresholds) -> Advice | None:
    """Waiting for data above ~10% of the step."""
    share = f.share("data")
    if f.steps < t.min_steps or not _ok(share) or share < t.data_share:
        return None
    now = []
    if f.num_workers is not None:
        now.append(f"DATALOADER.NUM_WORKERS={f.num_workers}")
    if f.pin_memory is not None:
        now.append(f"PIN_MEMORY={str(f.pin_memory).lower()}")
    if f.data_cache is not None:
        now.append(f"DATA.SYNTHETIC.CACHE={str(f.data_cache).lower()}")
    tries = ["more DATALOADER.NUM_WORKERS"]
    if f.pin_memory is not True:
        tries.append("DATALOADER.PIN_MEMORY=true")
    tries.append("caching decoded clips or faster storage")
    return Advice(
        "data_wait",
        SUGGEST,
        f"the step waits for data {_pct(share)} of the time",
        "try " + ", ".join(tries),
        {
            "data_ms": f.ms("data"),
            "share": share,
            "h2d_ms": f.ms("h2d"),
            "num_workers": f.num_workers,
            "pin_memory": f.pin_memory,
        },
        f"data {_ms(f.ms('data'))} per step" + (f"; now {', '.join(now)}" if now else ""),
    )


def rule_allreduce(f: RunFacts, t: Thresholds) -> Advice | None:
    """Exposed gradient all-reduce above ~10% of the step."""
    share, ms = f.share("allreduce"), f.ms("allreduce")
    v = f.stragglers
    me = v.rank(v.straggler) if v is not None and v.straggler is not None else None
    if me is not None and _ok(v.step_ms) and v.step_ms > 0:  # type: ignore[union-attr]
        # the others' wait is the straggler's compute (rule_straggler); what the straggler
        # itself waits is the communication really left exposed
        ms = me.allreduce_ms
        share = ms / v.step_ms  # type: ignore[union-attr]
    if f.steps < t.min_steps or f.world_size < 2 or not _ok(share) or share < t.allreduce_share:
        return None
    accum = f.grad_accum or 1
    return Advice(
        "allreduce",
        SUGGEST,
        f"gradient all-reduce left exposed takes {_pct(share)} of the step",
        f"accumulate gradients over more micro-batches (TRAIN.GRADIENT_ACCUMULATION_STEPS, now "
        f"{accum}: one all-reduce per optimizer step) or tune DDP buckets (bucket_cap_mb) so "
        "communication overlaps the backward pass; check the interconnect",
        {"allreduce_ms": ms, "share": share, "world_size": f.world_size, "grad_accum": accum},
        f"allreduce {_ms(ms)} per step on {f.world_size} ranks"
        + (f" (rank {me.rank}'s own wait, the straggler's)" if me is not None else ""),
    )


def rule_straggler(f: RunFacts, t: Thresholds) -> Advice | None:
    """One rank's compute consistently longer than the others': they wait for it."""
    v = f.stragglers
    if v is None or v.straggler is None or f.world_size < 2:
        return None
    me = v.rank(v.straggler)
    if me is None:
        return None
    info = next((r for r in f.ranks if r.rank == v.straggler), None)
    host = info.host if info else ""
    on = f" on {host}" if host else ""
    share = v.excess_ms / v.step_ms if _ok(v.step_ms) and v.step_ms > 0 else math.nan
    others = [x for x in v.ranks if x.rank != v.straggler]
    rel = v.excess_ms / _median([x.compute_ms for x in others]) if others else math.nan
    if f.straggler_region:
        where = f"rank {v.straggler}'s {f.straggler_region} first (+{_ms(f.straggler_region_ms)} per step"
        if f.straggler_leaf and f.straggler_leaf != f.straggler_region:
            where += f", most of it in {f.straggler_leaf} +{_ms(f.straggler_leaf_ms)}"
        look = f"look at {where}), then at that rank's"
    else:
        look = f"look at rank {v.straggler}'s"
    return Advice(
        "straggler",
        WARN,
        f"rank {v.straggler}{on} is a straggler: the other ranks wait for it at the all-reduce",
        f"{look} device (clocks, temperature, other processes), host and inputs (uneven clip sizes); "
        "not the interconnect: the all-reduce wait is the others waiting for this rank",
        {
            "rank": v.straggler,
            "host": host,
            "excess_ms": v.excess_ms,
            "excess_share": share,
            "compute_excess_ratio": rel,
            "region": f.straggler_region,
            "region_excess_ms": f.straggler_region_ms,
            "leaf": f.straggler_leaf,
            "leaf_excess_ms": f.straggler_leaf_ms,
            "slowest_steps": me.slowest,
            "compared_steps": v.compared_steps,
            "noise_ms": v.noise_ms,
            "rank_compute_ms": me.compute_ms,
            "step_ms": v.step_ms,
            "waits": {str(r): ms for r, ms in v.waits()},
            "span": v.span,
        },
        f"compute +{_ms(v.excess_ms)} per step over the other ranks ({_pct(share)} of the step), slowest in "
        f"{me.slowest} of {v.compared_steps} steps, {v.span}; {v.who_waits()}",
    )


def rule_memory_near_limit(f: RunFacts, t: Thresholds) -> Advice | None:
    """Peak memory close to the device total."""
    if not f.device_memory or not f.mem_peak:
        return None
    assert f.mem_total is not None
    frac = f.mem_peak / f.mem_total
    if frac < t.memory_near_limit:
        return None
    return Advice(
        "memory_near_limit",
        WARN,
        f"peak memory is {_pct(frac)} of the device",
        "an out-of-memory error is close (longer clips, a larger batch or fragmentation will "
        "tip it): keep checkpointing on, consider 8-bit AdamW, or set "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True",
        {"mem_peak": f.mem_peak, "mem_total": f.mem_total, "fraction": frac},
        f"peak {_gb(f.mem_peak)} of {_gb(f.mem_total)}",
    )


def rule_memory_creep(f: RunFacts, t: Thresholds) -> Advice | None:
    """Memory creeping up over the run (a leak: tensors kept across steps)."""
    tr = f.mem_trend
    if tr is None or not tr.ready or tr.early_mean <= 0:
        return None
    growth = tr.growth
    rel = growth / tr.early_mean
    if growth < t.memory_creep_min_bytes or rel < t.memory_creep or tr.slope <= 0:
        return None
    ev: dict[str, Any] = {
        "early_mean": tr.early_mean,
        "recent_mean": tr.recent_mean,
        "growth": growth,
        "growth_share": rel,
        "bytes_per_step": tr.slope,
        "first_step": tr.first_step,
        "last_step": tr.last_step,
    }
    eta = ""
    if f.device_memory and f.mem_peak:
        assert f.mem_total is not None
        left = f.mem_total - f.mem_peak
        if left > 0:
            steps_left = left / tr.slope
            ev["steps_until_full"] = steps_left
            eta = f"; at this rate the device is full in ~{steps_left:,.0f} steps"
    return Advice(
        "memory_creep",
        WARN,
        f"memory grows over the run (+{_gb(growth)}, {_pct(rel)})",
        "look for tensors kept across steps (losses or outputs stored without .item()/.detach(), "
        "growing lists, caches keyed by shape)",
        ev,
        f"mean {_gb(tr.early_mean)} early (from step {tr.first_step}) vs {_gb(tr.recent_mean)} "
        f"recently (to step {tr.last_step}), ~{_gb(tr.slope * 100)} per 100 steps{eta}",
    )


def rule_unaccounted(f: RunFacts, t: Thresholds) -> Advice | None:
    """A large part of the step is outside every timed region."""
    s = f.unaccounted_share
    if f.steps < t.min_steps or not _ok(s) or s < t.unaccounted_share:
        return None
    return Advice(
        "unaccounted",
        INFO,
        f"{_pct(s)} of the step is outside the timed regions",
        "time the rest (logging, metrics, validation or checkpoint steps, Python between "
        "regions) with `timed(...)` to see where it goes",
        {"share": s, "step_ms": f.step_ms},
        f"{_ms(s * f.step_ms) if _ok(f.step_ms) else '?'} of a {_ms(f.step_ms) if _ok(f.step_ms) else '?'} step",
    )


RULES: tuple[Rule, ...] = (
    rule_memory_near_limit,
    rule_memory_creep,
    rule_straggler,
    rule_checkpointing,
    rule_adamw8bit,
    rule_larger_batch,
    rule_data_wait,
    rule_allreduce,
    rule_dominant,
    rule_unaccounted,
)


def diagnose(facts: RunFacts, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[Advice]:
    """Every rule's advice, warnings first. A rule that raises is skipped (never fatal)."""
    out: list[Advice] = []
    for rule in RULES:
        try:
            a = rule(facts, thresholds)
        except (ArithmeticError, TypeError, ValueError, KeyError):
            continue
        if a is not None:
            out.append(a)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    out.sort(key=lambda a: order.get(a.severity, len(order)))  # stable: rule order within
    return out


# --------------------------------------------------------------------------- reading runs


def _rank_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    try:
        return [p for _, p in rank_files(path)]
    except OSError:
        return []


def read_run_config(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``config`` of the lowest rank's first ``run_start`` line (one line read)."""
    for p in _rank_files(Path(path)):
        try:
            with open(p, "rb") as f:
                first = f.readline(4 * 1024 * 1024)
            d = json.loads(first)
        except (OSError, ValueError):
            continue
        if (
            isinstance(d, dict)
            and d.get("kind") == "run_start"
            and isinstance(d.get("config"), dict)
        ):
            return d["config"]
    return None


def scan_memory_trend(
    path: str | os.PathLike[str], window: int = 20, skip: int = 3
) -> TrendFacts | None:
    """The worst rank's memory trend of a run read from its files (bounded memory, one pass).

    Uses ``memory.allocated`` (device) or ``memory.rss`` (host) at the end of each step.
    """
    trends = []
    for p in _rank_files(Path(path)):
        tr = MemTrend(window, skip)
        try:
            with open(p, "rb") as f:
                for line in f:
                    if b'"memory"' not in line:
                        continue
                    try:
                        d = json.loads(line)
                    except ValueError:
                        continue
                    mem = (
                        d.get("memory") if isinstance(d, dict) and d.get("kind") == "step" else None
                    )
                    if isinstance(mem, dict) and isinstance(d.get("step"), int):
                        v = mem.get("allocated", mem.get("rss"))
                        if isinstance(v, (int, float)) and not isinstance(v, bool):
                            tr.add(d["step"], v)
        except OSError:
            continue
        trends.append(tr.facts())
    return worst_trend(trends)


_CONFIGS: dict[str, dict[str, Any]] = {}  # run folder -> run_start config (bounded below)


def cached_run_config(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """:func:`read_run_config`, remembered per folder (the screen asks on every snapshot)."""
    key = os.fspath(path)
    c = _CONFIGS.get(key)
    if c is None:
        c = read_run_config(key)
        if c is not None:
            if len(_CONFIGS) >= 64:
                del _CONFIGS[next(iter(_CONFIGS))]
            _CONFIGS[key] = c
    return c


def advice_for_run(
    snap: Any,
    path: str | os.PathLike[str] | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    *,
    scan: bool = True,
    window: bool = False,
) -> list[Advice]:
    """Advice for a run snapshot: its facts plus the run_start config and the memory trend.

    Both come from the snapshot when the monitor provides them (``config`` / ``mem_trend``
    fields); else the config is read from the run's first line (cached) and, when ``scan``,
    the trend from one pass over its files (``tui summary``; never on the screen's thread).
    ``window``: judge the recent window's statistics instead of the whole run's (use the span
    the figures next to the advice are of; :func:`span_label` names it).
    """
    where = path if path is not None else getattr(snap, "path", None)
    config = getattr(snap, "config", None)
    if config is None and where:
        config = cached_run_config(where)
    trend = getattr(snap, "mem_trend", None)
    if trend is None and scan and where and not hasattr(snap, "mem_trend"):
        trend = scan_memory_trend(where)
    return diagnose(
        facts_from_snapshot(snap, config, trend, window=window, thresholds=thresholds), thresholds
    )
