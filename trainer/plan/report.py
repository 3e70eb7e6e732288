"""The plan of one training step as data (:class:`Plan`, a :class:`RegionPlan` per row) and
as the text table ``trainer plan`` prints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stagewatch.gpus import GIB
from trainer.plan.sdpa import SdpaCall


@dataclass
class RegionPlan:
    """Per-micro-batch figures of one region (inclusive of its sub-regions)."""

    name: str
    forward_flops: int = 0
    backward_flops: int = 0  # without the recompute
    recompute_flops: int = 0
    saved_bytes: int = 0


@dataclass
class Plan:
    """FLOPs and memory of one training step of a config (:func:`~trainer.plan.simulate`);
    ``fits``: whether it fits a GPU and the largest batches (:func:`~trainer.plan.fit`)."""

    config: str
    precision: str  # "bf16" or "fp32"
    device: str  # "cuda" (an sm80/sm90 GPU) or "cpu"
    arch: str
    batch: int
    clip: int
    height: int
    width: int
    micro_batches: int
    checkpointing: dict[str, bool]
    optimizer: str
    params: int
    trainable: int
    regions: list[RegionPlan]
    flops: dict[str, int]  # region name (as in step records) -> FLOPs per micro-batch
    memory: dict[str, int]  # bytes: parameters, gradients, optimizer_state, inputs, ...
    peak_region: str
    sdpa: list[SdpaCall]
    ops: int
    seconds: float
    fits: dict[str, Any] | None = None

    @property
    def peak(self) -> int:
        """Predicted peak memory of the step (bytes)."""
        return self.memory["peak"]

    def step_flops(self) -> dict[str, int]:
        """FLOPs per optimizer step (all micro-batches), by region name."""
        return {k: v * self.micro_batches for k, v in self.flops.items()}

    def to_dict(self) -> dict[str, Any]:
        """The plan as ``trainer plan --json`` prints it."""
        d = {
            "config": self.config,
            "precision": self.precision,
            "device": self.device,
            "arch": self.arch,
            "shape": {
                "batch": self.batch,
                "clip": self.clip,
                "height": self.height,
                "width": self.width,
            },
            "micro_batches": self.micro_batches,
            "checkpointing": self.checkpointing,
            "optimizer": self.optimizer,
            "params": self.params,
            "trainable": self.trainable,
            "regions": [r.__dict__ for r in self.regions],
            "totals": self.totals(),
            "flops_by_region": self.flops,
            "memory": self.memory,
            "peak_region": self.peak_region,
            "sdpa": [c.__dict__ for c in self.sdpa],
            "ops": self.ops,
            "seconds": round(self.seconds, 2),
        }
        if self.fits is not None:
            d["gpu"] = self.fits
        return d

    def totals(self) -> dict[str, int]:
        """Forward (loss included), backward and recompute FLOPs of one micro-batch, and the
        FLOPs of the whole optimizer step."""
        f = self.flops
        fwd = f.get("forward", 0) + f.get("loss", 0)
        rec = sum(v for k, v in f.items() if k.endswith("/recompute"))
        bwd = f.get("backward", 0) - rec
        return {
            "forward_flops": fwd,
            "backward_flops": bwd,
            "recompute_flops": rec,
            "step_flops": (fwd + bwd + rec) * self.micro_batches,
        }


def format_plan(plan: Plan) -> str:
    """The plan as a text table."""
    lines = [*_header(plan), "", *_flops_table(plan), "", *_memory_lines(plan)]
    lines += _kernel_lines(plan)
    if plan.fits is not None:
        lines += ["", *_fit_lines(plan.fits)]
    lines.append(f"(simulated {plan.ops} ops in {plan.seconds:.1f} s)")
    return "\n".join(lines)


def _gb(n: int) -> str:
    return f"{n / GIB:.2f}"


def _tf(n: int) -> str:
    return f"{n / 1e12:.3f}" if n >= 1e9 else f"{n / 1e12:.6f}"


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _header(plan: Plan) -> list[str]:
    ck = plan.checkpointing
    rules = "" if plan.device == "cpu" else f" ({plan.arch} kernel rules)"
    return [
        f"config: {plan.config}",
        f"shape: batch {plan.batch} × {plan.clip} frames × {plan.height}×{plan.width}, "
        f"{plan.micro_batches} micro-batch(es) per step; {plan.precision} on {plan.device}"
        f"{rules}; checkpointing attention {_on(ck['attention'])}, ffn {_on(ck['ffn'])}, "
        f"alignment {_on(ck['align'])}; optimizer {plan.optimizer}",
    ]


def _flops_table(plan: Plan) -> list[str]:
    """TFLOPs and saved GiB per region, the micro-batch's totals, the step's FLOPs."""
    lines = [f"{'region':<22}{'fwd TF':>10}{'bwd TF':>10}{'recomp TF':>11}{'saved GiB':>10}"]
    for r in plan.regions:
        lines.append(
            f"{r.name:<22}{_tf(r.forward_flops):>10}{_tf(r.backward_flops):>10}"
            f"{_tf(r.recompute_flops):>11}{_gb(r.saved_bytes):>10}"
        )
    tot = plan.totals()
    lines.append(
        f"{'total (micro-batch)':<22}{_tf(tot['forward_flops']):>10}"
        f"{_tf(tot['backward_flops']):>10}{_tf(tot['recompute_flops']):>11}"
        f"{_gb(plan.memory['saved_activations']):>10}"
    )
    lines.append(f"FLOPs per optimizer step: {tot['step_flops'] / 1e12:.3f} TF")
    return lines


#: the memory table's rows: label, key of ``Plan.memory``
_MEMORY_ROWS = (
    ("parameters", "parameters"),
    ("gradients", "gradients"),
    ("optimizer state", "optimizer_state"),
    ("input batch", "inputs"),
    ("activations at end of forward", "activations_end_forward"),
    ("  of which saved for backward", "saved_activations"),
    ("largest transient (backward)", "transient"),
)


def _memory_lines(plan: Plan) -> list[str]:
    m = plan.memory
    lines = ["memory of one training step (GiB)"]
    for label, key in _MEMORY_ROWS:
        lines.append(f"  {label:<32}{_gb(m[key]):>9}")
    if m["grads_from_earlier_micro_batches"]:
        lines.append(
            f"  {'grads held across micro-batches':<32}"
            f"{_gb(m['grads_from_earlier_micro_batches']):>9}"
        )
    lines.append(
        f"  {'predicted peak':<32}{_gb(m['peak']):>9}   (at {plan.peak_region}; "
        f"optimizer step {_gb(m['peak_optimizer'])})"
    )
    return lines


def _kernel_lines(plan: Plan) -> list[str]:
    """How many attention calls took each SDPA kernel (none without attention)."""
    kinds: dict[str, int] = {}
    for c in plan.sdpa:
        kinds[c.kernel] = kinds.get(c.kernel, 0) + c.count
    if not kinds:
        return []
    return ["attention kernels: " + ", ".join(f"{k} ×{n}" for k, n in kinds.items())]


def _fit_lines(f: dict[str, Any]) -> list[str]:
    """Whether the step fits the GPU, and the largest batch per checkpointing setting."""
    verdict = "fits" if f["fits"] else "does NOT fit"
    lines = [
        f"{f['gpu']}: {_gb(f['memory'])} GiB, {_gb(f['usable'])} GiB usable "
        f"(keeping {_gb(f['reserve'])} GiB for context and fragmentation): {verdict}, "
        f"headroom {_gb(f['headroom'])} GiB",
    ]
    for r in f["max_batch"]:
        lines.append(_largest_batch_line(r))
    return lines


def _largest_batch_line(r: dict[str, Any]) -> str:
    """One checkpointing setting's row: the attention + FFN checkpointing it tries, the
    alignment's as configured (USE_CHECKPOINT_ALIGN), and the largest batch that fits."""
    setting = "on " if r["checkpointing"] else "off"
    align = "on" if r.get("align") else "off"
    at_least = "≥ " if r["at_least"] else ""
    note = f" ({', '.join(r['notes'])})" if r["notes"] else ""
    at = "" if r["peak_at_max"] is None else f", peak there {_gb(r['peak_at_max'])} GiB"
    simulated = ", ".join(map(str, r["simulated"]))
    verdict = (
        f"largest batch {at_least}{r['max_batch']}{note}"
        if r["max_batch"] > 0
        else "does not fit, even at batch 1"
    )
    return (
        f"  checkpointing attention+FFN {setting}, alignment {align} (as configured): {verdict} "
        f"(batch 1 {_gb(r['peak_batch1'])} GiB, +{_gb(r['per_sample'])} GiB per sample{at}; "
        f"simulated batches {simulated})"
    )
