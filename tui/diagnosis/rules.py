"""The rules: what dominates a run's steps and what to try, each with its evidence.

Each rule reads :class:`~tui.diagnosis.facts.RunFacts` and the
:class:`~tui.diagnosis.thresholds.Thresholds` and returns an :class:`Advice` (rule id,
severity, a plain-words title, what to try, and the figures it is based on) or nothing.
:func:`diagnose` runs them all and sorts the result by severity (``warn`` before ``suggest``
before ``info``). ``docs/advice.md`` is the prose twin of this module (rules, thresholds,
evidence, what each estimate assumes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from tui.diagnosis.facts import RunFacts
from tui.diagnosis.thresholds import DEFAULT_THRESHOLDS, INFO, SEVERITIES, SUGGEST, WARN, Thresholds
from tui.model.units import gb as _gb
from tui.model.units import json_num as _json_num
from tui.model.units import median as _median
from tui.model.units import ms as _ms
from tui.model.units import ok as _ok
from tui.model.units import pct as _pct


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
        """JSON-ready (evidence floats to 6 significant figures, non-finite ones to None)."""
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
    if f.timed_only and len(f.region_share) == 1:
        return None  # a text log's one outermost time is its whole timed total: nothing learnt
    step = "timed total" if f.timed_only else "step"  # a text log holds no step wall time
    return Advice(
        "dominant",
        INFO,
        f"{name} dominates the {step} ({_pct(share)})",
        f"speed-ups elsewhere are capped at {_pct(1 - share)} of the {step}; start with {name}",
        {"region": name, "share": share, "region_ms": f.ms(name), "step_ms": f.step_ms},
        f"{name} {_ms(f.ms(name))} of a {_ms(f.step_ms)} {step}",
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
    """Waiting for data above ~10% of the step (``data/wait`` when the copy is timed apart)."""
    phase = "data/wait" if _ok(f.share("data/wait")) else "data"
    share = f.share(phase)
    region = f.region(phase)
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
            "data_ms": f.ms(phase),
            "share": share,
            "region": region,
            "h2d_ms": f.ms("data/h2d") if _ok(f.ms("data/h2d")) else f.ms("h2d"),
            "num_workers": f.num_workers,
            "pin_memory": f.pin_memory,
        },
        f"{region} {_ms(f.ms(phase))} per step" + (f"; now {', '.join(now)}" if now else ""),
    )


def rule_h2d(f: RunFacts, t: Thresholds) -> Advice | None:
    """The host-to-device copy of the batch exposed above ~5% of the step."""
    phase = "data/h2d" if _ok(f.share("data/h2d")) else "h2d"
    share = f.share(phase)
    name = f.region(phase)
    if f.steps < t.min_steps or not _ok(share) or share < t.h2d_share:
        return None
    return Advice(
        "h2d_copy",
        SUGGEST,
        f"copying each batch to the device takes {_pct(share)} of the step",
        "put batches in pinned memory (DataLoader(pin_memory=True)) and copy them with "
        "non_blocking=True (stagewatch.timed_loader does for pinned tensors), so the copy "
        "overlaps compute; or move less (smaller dtypes, build masks on the device)",
        {"h2d_ms": f.ms(phase), "share": share, "region": name, "pin_memory": f.pin_memory},
        f"{name} {_ms(f.ms(phase))} per step"
        + (f"; now PIN_MEMORY={str(f.pin_memory).lower()}" if f.pin_memory is not None else ""),
    )


def _exposed(f: RunFacts) -> tuple[float, str]:
    """Exposed all-reduce ms per step no straggler explains, and where it was measured."""
    v = f.stragglers
    me = v.rank(v.straggler) if v is not None and v.straggler is not None else None
    if _ok(f.exposed_ms):
        return f.exposed_ms, "the least any rank shows, comm/exposed"
    if me is not None:
        # the others' wait is the straggler's own time (rule_straggler); what the straggler
        # itself waits is the communication really left exposed
        return me.allreduce_ms, f"rank {me.rank}'s own wait, the straggler's"
    return f.ms("allreduce"), ""


def rule_allreduce(f: RunFacts, t: Thresholds) -> Advice | None:
    """Exposed gradient all-reduce above ~10% of the step."""
    if f.straggler_cause == "communication":
        return None  # one rank's own comm hook: rule_straggler says so
    ms, where = _exposed(f)
    v = f.stragglers
    step = v.step_ms if v is not None and _ok(v.step_ms) and v.step_ms > 0 else f.step_ms
    share = ms / step if _ok(ms) and _ok(step) and step > 0 else math.nan
    if f.steps < t.min_steps or f.world_size < 2 or not _ok(share) or share < t.allreduce_share:
        return None
    accum = f.grad_accum or 1
    return Advice(
        "allreduce",
        SUGGEST,
        f"gradient all-reduce left exposed takes {_pct(share)} of the step",
        f"accumulate gradients over more micro-batches (TRAIN.GRADIENT_ACCUMULATION_STEPS, now "
        f"{accum}: one all-reduce per optimizer step); tune DDP's buckets: a smaller "
        "bucket_cap_mb (default 25) starts communication earlier in backward and leaves a "
        "smaller last bucket exposed; gradient_as_bucket_view=True saves the copy of each "
        "gradient into its bucket; static_graph=True when the graph and the used parameters "
        "are the same every step; then check the interconnect",
        {"allreduce_ms": ms, "share": share, "world_size": f.world_size, "grad_accum": accum},
        f"exposed all-reduce {_ms(ms)} per step on {f.world_size} ranks"
        + (f" ({where})" if where else ""),
    )


#: what to look at for each cause class of a straggler
_LOOK = {
    "input": (
        "speed up rank {r}'s input: its DataLoader workers, storage and decoding on its host "
        "(more workers, caching, uneven clip sizes)"
    ),
    "h2d": (
        "speed up rank {r}'s host-to-device copy: pinned memory (PIN_MEMORY=true) and "
        "non_blocking copies, the PCIe/NUMA placement of its device"
    ),
    "compute": (
        "{where} device (clocks, temperature, other processes), host and inputs (uneven clip sizes)"
    ),
    "communication": (
        "look at rank {r}'s own communication: its comm hook's work before the collective "
        "(compression, copies), its network interface"
    ),
}


def rule_straggler(f: RunFacts, t: Thresholds) -> Advice | None:
    """One rank's own time consistently longer than the others': they wait for it."""
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
    rel = v.excess_ms / _median([x.own_ms for x in others]) if others else math.nan
    if f.straggler_region:
        where = (
            f"rank {v.straggler}'s {f.straggler_region} first "
            f"(+{_ms(f.straggler_region_ms)} per step"
        )
        if f.straggler_leaf and f.straggler_leaf != f.straggler_region:
            where += f", most of it in {f.straggler_leaf} +{_ms(f.straggler_leaf_ms)}"
        look = f"look at {where}), then at that rank's"
    else:
        look = f"look at rank {v.straggler}'s"
    action = _LOOK.get(f.straggler_cause or "compute", _LOOK["compute"])
    action = action.format(r=v.straggler, where=look)
    # named by its input, the others waiting in a collective outside the all-reduce
    outside = getattr(v, "waits_outside", False)
    at = "" if outside else " at the all-reduce"
    if f.straggler_cause != "communication":
        whose = "the others wait" if outside else "the all-reduce wait is the others waiting"
        action += f"; not the interconnect: {whose} for this rank"
    cause = f"{f.straggler_cause_line}; " if f.straggler_cause_line else ""
    what = (f.straggler_cause or "own time") if outside else "own time"
    # (named from the window's means, tui.diagnosis.hidden: no per-step count)
    per_step = not outside or _ok(v.recurrence)
    slowest = round(v.recurrence * v.compared_steps) if outside and per_step else me.slowest
    return Advice(
        "straggler",
        WARN,
        f"rank {v.straggler}{on} is a straggler: the other ranks wait for it{at}",
        action,
        {
            "rank": v.straggler,
            "host": host,
            "cause": f.straggler_cause,
            "cause_ms": v.cause_ms,
            "excess_ms": v.excess_ms,
            "excess_share": share,
            "compute_excess_ratio": rel,
            "region": f.straggler_region,
            "region_excess_ms": f.straggler_region_ms,
            "leaf": f.straggler_leaf,
            "leaf_excess_ms": f.straggler_leaf_ms,
            "slowest_steps": slowest,
            "compared_steps": v.compared_steps,
            "noise_ms": v.noise_ms,
            "rank_compute_ms": me.compute_ms,
            "step_ms": v.step_ms,
            "wait_source": v.wait_source,
            "waits": {str(r): ms for r, ms in v.waits()},
            "span": v.span,
        },
        f"{cause}{what} +{_ms(v.excess_ms)} per step over the other ranks ({_pct(share)} "
        f"of the step)"
        + (f", slowest in {slowest} of {v.compared_steps} steps" if per_step else "")
        + f", {v.span}; "
        f"{v.who_waits()}",
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
        f"{_ms(s * f.step_ms) if _ok(f.step_ms) else '?'} of a "
        f"{_ms(f.step_ms) if _ok(f.step_ms) else '?'} step",
    )


RULES: tuple[Rule, ...] = (
    rule_memory_near_limit,
    rule_memory_creep,
    rule_straggler,
    rule_checkpointing,
    rule_adamw8bit,
    rule_larger_batch,
    rule_data_wait,
    rule_h2d,
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
