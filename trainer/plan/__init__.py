"""Capacity planning: FLOPs and memory of one training step, simulated on the meta device.

:func:`simulate` builds the configured model on PyTorch's ``meta`` device (shapes, no
data) and runs one micro-batch forward, loss and backward under three interceptors:

- a ``TorchFunctionMode`` that emulates CUDA autocast (Linear, conv, matmul and SDPA in
  bf16; LayerNorm, softmax, interpolation and the other fp32-listed ops in fp32; the
  model's ``fp32_region`` switches it off) and replaces ``F.scaled_dot_product_attention``
  by the aten kernel the GPU would pick (:func:`choose_sdpa_kernel`), so autograd saves what
  that kernel saves;
- a ``TorchDispatchMode`` that counts FLOPs (``torch.utils.flop_counter``'s formulas) and
  tracks every storage an op creates until it dies: the live-bytes curve and its peak;
- ``saved_tensors_hooks`` that count the bytes autograd keeps for backward, once per storage.

Work is charged to the region names the trainer's timing produces (``forward/vrt/stage1``,
``backward/vrt/stage1``, ``backward/vrt/stage1/recompute``...): the model's own backward
instrumentation (:mod:`trainer.models.instrument`) opens and closes the backward regions,
so a region here is the same span as a measured one.

The step's peak = parameters + optimizer state + gradients held from earlier micro-batches
+ the simulated peak of live tensors (activations, transients and the gradients as they
appear) + the input batch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.config import Config
from trainer.gpus import GIB, GpuSpec
from trainer.plan.autocast import AutocastSdpa, fp32_regions
from trainer.plan.counting import OpCounter, count_flops, storage_key
from trainer.plan.optimizer_memory import (
    BNB_BLOCKSIZE,
    BNB_MIN_8BIT_SIZE,
    optimizer_state_bytes,
    optimizer_transient_bytes,
)
from trainer.plan.regions import Regions, in_backward, inclusive, region_rows
from trainer.plan.report import Plan, RegionPlan, format_plan
from trainer.plan.sdpa import (
    HALF,
    KERNELS,
    SdpaCall,
    choose_sdpa_kernel,
    run_sdpa_kernel,
)

__all__ = [
    "BNB_BLOCKSIZE",
    "BNB_MIN_8BIT_SIZE",
    "KERNELS",
    "MAX_SEARCH_BATCH",
    "RESERVE_BYTES",
    "Plan",
    "RegionPlan",
    "SdpaCall",
    "Shape",
    "choose_sdpa_kernel",
    "config_shape",
    "count_flops",
    "fit",
    "format_plan",
    "optimizer_state_bytes",
    "optimizer_transient_bytes",
    "precision_of",
    "region_flops_for_run_start",
    "run_sdpa_kernel",
    "simulate",
]

#: device memory the plan keeps free for the CUDA context, cuBLAS/cuDNN workspaces and
#: allocator fragmentation when it says whether a step fits
RESERVE_BYTES = 2 * GIB

#: the largest batch the fit search simulates (the per-sample loops of shifted-window
#: attention make bigger batches slow to simulate; beyond it the answer is extrapolated)
MAX_SEARCH_BATCH = 64


# --------------------------------------------------------------------------- simulate


@dataclass
class Shape:
    batch: int
    clip: int
    height: int
    width: int


def _clear_device_caches() -> None:
    """Forget the model's per-device cached masks and indices, so that each simulation
    counts them (on a GPU they are made at the first step and then stay)."""
    from trainer.models import vrt

    for name in dir(vrt):
        fn = getattr(vrt, name)
        if callable(getattr(fn, "cache_clear", None)) and name != "_shift_mask":
            fn.cache_clear()  # _shift_mask: the CPU-side dense mask, not a device tensor


@contextlib.contextmanager
def _as_on_cuda(device: str) -> Iterator[None]:
    """Let the model take its CUDA-only code paths on meta tensors when simulating a GPU:
    today the zero-padding of head sizes that no fused kernel takes (``vrt._pad_heads``,
    which asks ``q.is_cuda``)."""
    from trainer.models import vrt

    orig = getattr(vrt, "_pad_heads", None)
    if device != "cuda" or orig is None:
        yield
        return

    def pad_heads(q: Tensor) -> bool:
        if not q.is_meta:
            return orig(q)
        align = getattr(vrt, "_HEAD_ALIGN", 8)
        forced = getattr(vrt, "PAD_HEADS", None)
        if q.shape[-1] % align == 0:
            return False
        return forced if forced is not None else q.dtype in HALF

    vrt._pad_heads = pad_heads
    try:
        yield
    finally:
        vrt._pad_heads = orig


def config_shape(cfg: Config) -> Shape:
    """Batch, clip length and crop of one micro-batch as the config trains it."""
    d = cfg.DATA
    crop = d.CROP_SIZE
    if not crop:
        if d.TYPE == "synthetic":
            h, w = d.SYNTHETIC.HEIGHT, d.SYNTHETIC.WIDTH
        else:
            from trainer.errors import ConfigError

            raise ConfigError(
                "DATA.CROP_SIZE",
                "0 (whole frames) has no size to plan for: set "
                "a crop, e.g. --set DATA.CROP_SIZE=256",
                cfg.file,
            )
    else:
        h = w = crop
    return Shape(cfg.TRAIN.BATCH_SIZE, d.CLIP_LEN, h, w)


def precision_of(cfg: Config, device: str) -> str:
    amp = cfg.TRAIN.AMP
    return "bf16" if amp == "bf16" or (amp == "auto" and device == "cuda") else "fp32"


def simulate(
    cfg: Config,
    *,
    device: str = "cuda",
    arch: str = "sm90",
    batch: int | None = None,
    checkpointing: bool | None = None,
    count_saved: bool = True,
    flow_frozen: bool = False,
) -> Plan:
    """One training micro-batch of ``cfg`` on the meta device: FLOPs and memory.

    ``device`` is whose rules apply (``cuda``: autocast per TRAIN.AMP, ``auto`` = bf16, and
    the ``arch`` SDPA rules; ``cpu``: no autocast unless AMP is bf16, CPU kernels).
    ``batch``/``checkpointing`` override the config (both attention and FFN for the latter).
    ``flow_frozen`` simulates the early steps of TRAIN.FREEZE_FLOW_STEPS (no flow or
    deformable-alignment gradients); by default every parameter trains.
    """
    import dataclasses

    from trainer.losses import VGGFeatures, charbonnier
    from trainer.models import build_model, set_flow_and_deform_trainable

    t0 = time.perf_counter()
    _clear_device_caches()
    mcfg = cfg.MODEL
    if checkpointing is not None:
        mcfg = dataclasses.replace(
            mcfg,
            VRT=dataclasses.replace(
                mcfg.VRT, USE_CHECKPOINT_ATTN=checkpointing, USE_CHECKPOINT_FFN=checkpointing
            ),
        )
    shape = config_shape(cfg)
    if batch is not None:
        shape.batch = batch
    precision = precision_of(cfg, device)
    amp = torch.bfloat16 if precision == "bf16" else None
    if device == "cpu":
        arch = "cpu"
    tcfg = cfg.TRAIN
    accum = tcfg.GRADIENT_ACCUMULATION_STEPS

    with torch.device("meta"):
        model = build_model(mcfg)
        vgg = None
        if cfg.LOSS.VGG_PERCEPTUAL.WEIGHT > 0:
            vgg = VGGFeatures(cfg.LOSS.VGG_PERCEPTUAL.NETWORK, cfg.LOSS.VGG_PERCEPTUAL.LAYER)
            vgg.requires_grad_(False)
    model.train()
    if flow_frozen:
        set_flow_and_deform_trainable(model, False)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    b, t, h, w = shape.batch, shape.clip, shape.height, shape.width
    rgb = torch.empty(b, t, 3, h, w, device="meta")
    sharp = torch.empty(b, t, 3, h, w, device="meta")
    spikes = torch.empty(b, t, mcfg.SPIKE.BINS, h, w, device="meta") if mcfg.USE_SPIKE else None
    inputs = [x for x in (rgb, sharp, spikes) if x is not None]
    frozen = {storage_key(p) for p in params} | {storage_key(x) for x in inputs}
    if vgg is not None:
        frozen |= {storage_key(p) for p in vgg.parameters()}

    regions = Regions()
    from trainer.models.instrument import Instrumentation

    recompute = {}  # as the model's own instrumentation charges checkpoint re-runs
    for i, st in enumerate(model.vrt.stages):
        blocks: list[nn.Module] = [bl for g in st.groups for bl in g.blocks]
        if getattr(st, "ckpt_align", False):
            blocks.append(st)  # its checkpointed alignment recomputes too
        recompute[f"vrt/stage{i + 1}"] = blocks
    instr = Instrumentation(model.region_modules(), recompute, regions)
    fwd_hooks = []
    for name, mod in model.region_modules().items():
        full = f"forward/{name}"

        def pre(_m: nn.Module, _a: Any, full: str = full) -> None:
            if not in_backward():
                regions.begin(full)

        def post(_m: nn.Module, _a: Any, _o: Any, full: str = full) -> None:
            if not in_backward():
                regions.end(full)

        fwd_hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]

    saved: dict[str, int] = {}
    seen_saved: set[int] = set()

    def pack(x: Tensor) -> Tensor:
        if x.device.type == "meta":
            key = storage_key(x)
            if key not in seen_saved and key not in frozen:
                seen_saved.add(key)
                r = regions.current
                saved[r] = saved.get(r, 0) + x.untyped_storage().nbytes()
        return x

    counter = OpCounter(regions)
    ac = AutocastSdpa(amp, arch)
    regions.recompute_mode = ac
    grads_before = 4 * sum(p.numel() for p in trainable) if accum > 1 else 0
    end_forward = 0
    try:
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x)
        with fp32_regions(ac), _as_on_cuda(device), ac, counter:
            with hooks if count_saved else contextlib.nullcontext():
                regions.phase = "forward"
                out = model(rgb, spikes)
                regions.phase = "loss"
                lw = cfg.LOSS
                loss = out.new_zeros((), dtype=torch.float32)
                if lw.CHARBONNIER.WEIGHT > 0:
                    loss = loss + lw.CHARBONNIER.WEIGHT * charbonnier(
                        out, sharp, lw.CHARBONNIER.EPS
                    )
                if vgg is not None:
                    loss = loss + lw.VGG_PERCEPTUAL.WEIGHT * F.l1_loss(vgg(out), vgg(sharp))
                loss = loss / accum
            ac.cache.clear()
            del out
            counter.sweep()
            end_forward = counter.live_bytes
            regions.phase = "backward"
            regions.open.clear()
            loss.backward()
            del loss
            counter.sweep()
    finally:
        for hk in fwd_hooks:
            hk.remove()
        instr.remove()

    incl = inclusive(counter.flops)
    saved_incl = inclusive(saved)
    rows = []
    for r in region_rows(model.region_tree()):
        bwd = incl.get(f"backward/{r}", 0)
        rec = incl.get(f"backward/{r}/recompute", 0)
        rows.append(
            RegionPlan(
                r, incl.get(f"forward/{r}", 0), bwd - rec, rec, saved_incl.get(f"forward/{r}", 0)
            )
        )
    loss_f = incl.get("loss", 0)
    rows.append(RegionPlan("loss", loss_f, 0, 0, saved_incl.get("loss", 0)))
    kind = tcfg.OPTIM.TYPE
    state = optimizer_state_bytes(trainable, kind)
    pbytes = sum(p.numel() * p.element_size() for p in params)
    if vgg is not None:
        pbytes += sum(p.numel() * p.element_size() for p in vgg.parameters())
    gbytes = 4 * sum(p.numel() for p in trainable)
    in_bytes = sum(x.numel() * x.element_size() for x in inputs)
    fb_peak = counter.peak
    opt_peak = gbytes + optimizer_transient_bytes(trainable, kind, device)
    base = pbytes + state + in_bytes
    peak = base + max(grads_before + fb_peak, opt_peak)
    memory = {
        "parameters": pbytes,
        "gradients": gbytes,
        "optimizer_state": state,
        "inputs": in_bytes,
        "saved_activations": sum(saved.values()),
        "activations_end_forward": end_forward,
        "grads_from_earlier_micro_batches": grads_before,
        "transient": max(0, fb_peak - end_forward),
        "peak_forward_backward": base + grads_before + fb_peak,
        "peak_optimizer": base + opt_peak,
        "peak": peak,
    }
    return Plan(
        config=cfg.file or "",
        precision=precision,
        device=device,
        arch=arch,
        batch=b,
        clip=t,
        height=h,
        width=w,
        micro_batches=accum,
        checkpointing={
            "attention": mcfg.VRT.USE_CHECKPOINT_ATTN,
            "ffn": mcfg.VRT.USE_CHECKPOINT_FFN,
            "align": bool(getattr(mcfg.VRT, "USE_CHECKPOINT_ALIGN", False)),
        },
        optimizer=kind,
        params=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in trainable),
        regions=rows,
        flops={k: v for k, v in sorted(incl.items())},
        memory=memory,
        peak_region=counter.peak_at,
        sdpa=list(ac.sdpa_calls.values()),
        ops=counter.ops,
        seconds=time.perf_counter() - t0,
    )


def region_flops_for_run_start(
    cfg: Config, device: str, flow_frozen: bool = False
) -> dict[str, Any]:
    """The ``config.FLOPS`` entry of ``run_start``: FLOPs per optimizer step by region name
    (inclusive, as the step records' times are), counted once on the meta device, for the
    state the run starts in (``flow_frozen``: TRAIN.FREEZE_FLOW_STEPS not yet over)."""
    arch = "cpu" if device == "cpu" else "sm90"
    if device == "cuda":
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
        from trainer.gpus import lookup

        spec = lookup(name)
        arch = spec.arch if spec is not None else arch
    from trainer.timing import get_global_timing_logger, set_global_timing_logger

    prev = get_global_timing_logger()
    set_global_timing_logger(None)  # the meta model must not time itself into the run's log
    try:
        with torch.random.fork_rng(devices=[]):  # leave the run's random stream alone
            p = simulate(
                cfg,
                device="cpu" if device == "cpu" else "cuda",
                arch=arch,
                count_saved=False,
                flow_frozen=flow_frozen,
            )
    finally:
        set_global_timing_logger(prev)
    tf32 = (
        device == "cuda" and p.precision == "fp32" and bool(torch.backends.cuda.matmul.allow_tf32)
    )
    # floats: a step's count passes the record format's integer limit (1e12) at full size
    return {
        "PRECISION": p.precision,
        "TF32": tf32,
        "MICRO_BATCHES": p.micro_batches,
        "BATCH": p.batch,
        "FLOW_FROZEN": flow_frozen,
        "STEP": float(p.totals()["step_flops"]),
        "REGIONS": {k: float(v) for k, v in p.step_flops().items()},
    }


# --------------------------------------------------------------------------- fitting


def fit(
    cfg: Config,
    gpu: GpuSpec,
    plan: Plan,
    device: str = "cuda",
    settings: tuple[bool, ...] = (False, True),
) -> dict[str, Any]:
    """Does ``plan`` fit ``gpu``; the largest batch per checkpointing setting.

    "Checkpointing" here is the TMSA attention and FFN paths together; the alignment's
    (``USE_CHECKPOINT_ALIGN``) stays as configured. Memory is close to linear in the batch: the batch-independent part (parameters,
    gradients, optimizer state) is known, so one simulation at batch 1 gives the per-sample
    slope. The largest batch under ``gpu.memory - RESERVE_BYTES`` is extrapolated and
    simulated once to confirm; when that misses, the line through the two simulated
    batches gives the next guess (at most three simulations per setting).
    """
    cap = gpu.memory - RESERVE_BYTES
    rows = []
    for ck in settings:
        cache: dict[int, int] = {}
        if plan.checkpointing["attention"] == ck and plan.checkpointing["ffn"] == ck:
            cache[plan.batch] = plan.peak

        def peak_at(bs: int, ck: bool = ck, cache: dict[int, int] = cache) -> int:
            if bs not in cache:
                cache[bs] = simulate(
                    cfg, device=device, arch=gpu.arch, batch=bs, checkpointing=ck, count_saved=False
                ).peak
            return cache[bs]

        fixed = (
            plan.memory["parameters"] + plan.memory["optimizer_state"] + plan.memory["gradients"]
        )
        p1 = peak_at(1)
        slope = float(max(p1 - fixed, 1))
        best, notes, capped = 0, [], False
        if p1 <= cap:
            guess = 1 + int((cap - p1) // slope)
            if guess > MAX_SEARCH_BATCH:
                notes.append(f"extrapolated {guess}; simulated up to {MAX_SEARCH_BATCH}")
                guess, capped = MAX_SEARCH_BATCH, True
            for _ in range(2):
                if guess in cache:
                    break
                pk = peak_at(guess)
                if pk <= cap and (guess + 1) in cache:
                    break
                slope = max((pk - p1) / (guess - 1), 1.0) if guess > 1 else slope
                nxt = min(1 + int((cap - p1) // slope), MAX_SEARCH_BATCH)
                if nxt == guess:
                    break
                guess = nxt
            best = max(b for b, q in cache.items() if q <= cap)
            if best + 1 not in cache and best < MAX_SEARCH_BATCH:
                notes.append(f"batch {best + 1} extrapolated, not simulated")
        rows.append(
            {
                "checkpointing": ck,
                "max_batch": best,
                "at_least": capped and best == MAX_SEARCH_BATCH,
                "peak_batch1": p1,
                "per_sample": int(slope),
                "peak_at_max": cache.get(best),
                "simulated": sorted(cache),
                "notes": notes,
            }
        )
    return {
        "gpu": gpu.name,
        "memory": gpu.memory,
        "reserve": RESERVE_BYTES,
        "usable": cap,
        "fits": plan.peak <= cap,
        "headroom": cap - plan.peak,
        "max_batch": rows,
    }
