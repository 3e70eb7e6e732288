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
from tui.model.nesting import timed_only
from tui.model.phases import BUFFERS_REGION, find_phase
from tui.model.rankstats import (
    H2D_REGIONS,
    INPUT_REGIONS,
    SYNC_REGION,
    WAIT_ESTIMATED,
    WAIT_REGIONS,
    StragglerVerdict,
    TrendFacts,
    judge_stragglers,
)
from tui.model.snapshot import UNACCOUNTED
from tui.model.units import median, ok
from tui.model.units import ms as _ms


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
    # a phase the rules read (``data``, ``data/h2d``, ...) that a loop nests under a region of
    # its own (``train/data``): phase name -> the region holding it, whose figures are in
    # region_ms and region_share too
    phases: Mapping[str, str] = field(default_factory=dict)
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
    # why: the class of its own time (input, h2d, compute, communication) and one line
    # with the figures (and, for compute, the region explaining most of it)
    straggler_cause: str | None = None
    straggler_cause_line: str = ""
    # exposed gradient all-reduce (ms per step): the least any rank shows (what is left
    # when nobody waits for a straggler), and whether it was measured (comm/exposed or the
    # trainer's allreduce region)
    exposed_ms: float = math.nan
    span: str = "whole run"  # which steps the times and shares are of
    # a classic text log: step_ms is the timed total (the original logger timed the forward
    # pass), not a step wall time
    timed_only: bool = False
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

    def region(self, name: str) -> str:
        """The region that holds phase ``name``: itself, or where the loop nests it."""
        return self.phases.get(name, name)

    def ms(self, name: str) -> float:
        """Mean ms of a top-level region or phase (NaN when not timed)."""
        return float(self.region_ms.get(self.region(name), math.nan))

    def share(self, name: str) -> float:
        """Share of the step of a top-level region or phase (NaN when not timed)."""
        return float(self.region_share.get(self.region(name), math.nan))


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


def _wait_in_backward(snap: Any, v: StragglerVerdict | None, rank: int) -> float:
    """ms by which ``rank``'s ``backward`` region holds less waiting than the other ranks'
    (median): their wait at the all-reduce is inside ``backward`` when it is estimated from
    there, or measured by ``comm/exposed`` (no separate ``allreduce`` region). 0 otherwise."""
    if v is None or (not v.measured and v.wait_source != WAIT_ESTIMATED):
        return 0.0
    if v.measured and any(r.name == "allreduce" for r in getattr(snap, "regions", ())):
        return 0.0
    me = v.rank(rank)
    others = [x for x in v.ranks if x.rank != rank]
    if me is None or not others:
        return 0.0
    key = "exposed_ms" if v.measured else "allreduce_ms"
    d = median([getattr(x, key) for x in others]) - getattr(me, key)
    return d if ok(d) else 0.0


def _under(name: str, region: str) -> bool:
    """``name`` is ``region`` or a region inside it."""
    return name == region or name.startswith(region + "/")


def _path(name: str) -> list[str]:
    """``name`` and every region above it: ``a/b/c`` -> ``a``, ``a/b``, ``a/b/c``."""
    segs = name.split("/")
    return ["/".join(segs[: i + 1]) for i in range(len(segs))]


def straggler_region(
    snap: Any, rank: int, verdict: StragglerVerdict | None = None
) -> tuple[str, float, str, float] | None:
    """Where ``rank`` spends compute time the other ranks do not (recent window means,
    ms): (top-level region, its excess, the deepest region under it explaining most of it,
    excess). Wait regions (the symptom, not the cause) and the input and copy regions (their
    own classes) are left out; the wait the other ranks spend inside ``backward`` is taken
    out of its excess."""
    rows = [r for r in getattr(snap, "regions", ()) if r.name.split("/", 1)[0] not in WAIT_REGIONS]
    un = getattr(snap, "unaccounted", None)
    if un is not None and getattr(un, "ranks", ()):
        rows.append(un)  # time outside every region is a candidate too
    ex = {r.name: e for r in rows if ok(e := _excess_of(r, rank))}
    # a correction of a region holds for every region above it too
    sync = find_phase(ex, (SYNC_REGION,))
    fixes = [(sync, _wait_in_backward(snap, verdict, rank))] if sync is not None else []
    # backward in no region: the measured wait (comm/exposed) covers its part of the step
    # (tui.model.readout.top_regions), so the unaccounted time holds none of it
    # the others' wait in DDP's buffer broadcast is inside their forward (the model's call)
    fwd = find_phase(ex, ("forward",))
    buf = next((r for r in getattr(snap, "regions", ()) if r.name == BUFFERS_REGION), None)
    if fwd is not None and buf is not None and ok(b := _excess_of(buf, rank)):
        fixes.append((fwd, -b))
    # the input and copy phases are their own classes, as named or nested in the loop's region
    phases = [p for w in (INPUT_REGIONS, H2D_REGIONS) if (p := find_phase(ex, w))]
    fixes += [(p, -ex[p]) for p in phases if not any(p != q and _under(p, q) for q in phases)]
    for where, fix in fixes:
        for n in _path(where):
            if n in ex:
                ex[n] += fix
    ex = {n: e for n, e in ex.items() if not any(_under(n, p) for p in phases)}
    # the shallowest regions timed (``forward/enc`` when ``forward`` is not timed itself)
    top = [(n, e) for n, e in ex.items() if not any(p in ex for p in _path(n)[:-1])]
    if not top:
        return None
    name, e = max(top, key=lambda kv: kv[1])
    # a region is named only when it explains most of the compute excess, never a sliver
    least = 0.5 * verdict.cause_ms if verdict is not None and ok(verdict.cause_ms) else 0.0
    if e <= 0 or e < least:
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


def cause_line(verdict: StragglerVerdict | None, loc: tuple[str, float, str, float] | None) -> str:
    """``rank 1: compute +50.4 ms per step (94% of the step; …), mostly `backward/block2`
    +50.1 ms``; empty when no rank is named."""
    if verdict is None or verdict.straggler is None:
        return ""
    if verdict.cause is None:
        parts = ", ".join(f"{k} {'+' if ms >= 0 else '-'}{_ms(abs(ms))}" for k, ms in verdict.parts)
        return (
            f"rank {verdict.straggler}: own time +{_ms(verdict.excess_ms)} per step, "
            f"no single class explains it ({parts})"
        )
    line = verdict.cause_text()
    if verdict.cause == "compute" and loc is None:
        line += "; no single timed region explains most of it"
    elif verdict.cause == "compute" and loc is not None:
        if loc[2] == UNACCOUNTED:
            line += f", mostly outside every timed region (unaccounted +{_ms(loc[3])})"
        else:
            line += f", mostly `{loc[2]}` +{_ms(loc[3])}"
    return line


def exposed_of(verdict: StragglerVerdict | None) -> float:
    """The exposed all-reduce no straggler explains: the least any rank measured (NaN when
    not measured)."""
    if verdict is None:
        return math.nan
    vals = [x.exposed_ms for x in verdict.ranks if ok(x.exposed_ms)]
    return min(vals) if vals else math.nan


def straggler_cause(snap: Any, verdict: StragglerVerdict | None = None) -> str:
    """The one line naming why the snapshot's straggler is slow (:func:`cause_line`); empty
    when no rank is named."""
    v = verdict if verdict is not None else verdict_of(snap)
    if v is None or v.straggler is None:
        return ""
    return cause_line(v, straggler_region(snap, v.straggler, v))


def comm_line(verdict: StragglerVerdict | None, most: int = 8) -> str:
    """``exposed comm per step: rank 0 51.4 ms, rank 1 0.89 ms`` (min/median/max beyond
    ``most`` ranks); empty when not measured."""
    if verdict is None:
        return ""
    vals = [(x.rank, x.exposed_ms) for x in verdict.ranks if ok(x.exposed_ms)]
    if not vals:
        return ""
    if len(vals) <= most:
        return "exposed comm per step: " + ", ".join(f"rank {r} {_ms(v)}" for r, v in vals)
    srt = sorted(v for _, v in vals)
    return (
        f"exposed comm per step over {len(srt)} ranks: min {_ms(srt[0])}, "
        f"median {_ms(median(srt))}, max {_ms(srt[-1])}"
    )


def _straggler_facts(snap: Any, verdict: StragglerVerdict | None) -> dict[str, Any]:
    """The RunFacts fields saying why the named straggler is slow and where it loses time."""
    out: dict[str, Any] = {"exposed_ms": exposed_of(verdict)}
    if verdict is None or verdict.straggler is None:
        return out
    loc = straggler_region(snap, verdict.straggler, verdict)
    out["straggler_cause"] = verdict.cause
    out["straggler_cause_line"] = cause_line(verdict, loc)
    if loc is None:
        return out
    out.update(
        straggler_region=loc[0],
        straggler_region_ms=loc[1],
        straggler_leaf=loc[2],
        straggler_leaf_ms=loc[3],
    )
    return out


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
#: the phases rules read by name; a loop may nest them under its own region (``train/data``)
RULE_PHASES = ("data", "h2d", "data/wait", "data/h2d", "forward", "backward", "allreduce")


def _region_facts(
    snap: Any, window: bool
) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """(mean ms, share) of each top-level region, of :data:`SUB_REGIONS` and of the
    :data:`RULE_PHASES` a loop nests under its own region, in the span; and where those
    nested phases are (phase -> region)."""
    ms: dict[str, float] = {}
    share: dict[str, float] = {}
    timed = {r.name: r for r in snap.regions if (r.window if window else r.whole).steps}
    phases = {}
    for p in RULE_PHASES:
        if p not in timed and (where := find_phase(timed, (p,))) is not None:
            phases[p] = where
    keep = SUB_REGIONS.union(phases.values())
    for name, r in timed.items():
        if r.depth == 0 or name in keep:
            st = r.window if window else r.whole
            ms[name] = st.avg
            share[name] = st.share
    return ms, share, phases


def facts_from_snapshot(
    snap: Any, *, window: bool = False, thresholds: Thresholds | None = None
) -> RunFacts:
    """RunFacts of a :class:`~tui.model.snapshot.RunSnapshot`: whole-run statistics, or those
    of the recent window with ``window=True`` (the span the screen or ``tui summary`` shows).

    The ``run_start`` config and the memory trend are the snapshot's ``config`` and
    ``mem_trend``. The straggler verdict is always of the recent steps (it compares ranks
    step by step); with ``thresholds`` other than the defaults it is judged again by them.
    """
    ms, share, phases = _region_facts(snap, window)
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
        phases=phases,
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
        timed_only=timed_only(getattr(snap, "files", ())),
        **_straggler_facts(snap, verdict),
        **config_facts(getattr(snap, "config", None)),
    )
