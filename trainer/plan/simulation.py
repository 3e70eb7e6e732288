"""One training micro-batch of a config simulated on the meta device: its FLOPs per region
and its memory (see :mod:`trainer.plan` for how)."""

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
from trainer.plan.autocast import AutocastSdpa, fp32_regions
from trainer.plan.counting import OpCounter, storage_key
from trainer.plan.optimizer_memory import optimizer_state_bytes, optimizer_transient_bytes
from trainer.plan.regions import Regions, in_backward, inclusive, region_rows
from trainer.plan.report import Plan, RegionPlan
from trainer.plan.sdpa import HALF


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
