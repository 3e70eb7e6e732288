"""One training micro-batch of a config simulated on the meta device: its FLOPs per region
and its memory (see :mod:`trainer.plan` for how)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from trainer.config import Config
from trainer.plan.autocast import AutocastSdpa, fp32_regions
from trainer.plan.counting import OpCounter, storage_key
from trainer.plan.optimizer_memory import optimizer_state_bytes, optimizer_transient_bytes
from trainer.plan.regions import Regions, in_backward, inclusive, region_rows
from trainer.plan.report import Plan, RegionPlan
from trainer.plan.sdpa import HALF


@dataclass
class Shape:
    """Batch size, clip length and crop of one micro-batch."""

    batch: int
    clip: int
    height: int
    width: int


def config_shape(cfg: Config) -> Shape:
    """Batch, clip length and crop of one micro-batch as the config trains it."""
    d = cfg.DATA
    crop = d.CROP_SIZE
    if not crop:
        if d.TYPE == "synthetic":
            h, w = d.SYNTHETIC.HEIGHT, d.SYNTHETIC.WIDTH
        else:
            from stagewatch.errors import ConfigError

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
    """``bf16`` or ``fp32``: the precision a run of ``cfg`` on ``device`` computes in."""
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
    t0 = time.perf_counter()
    _clear_device_caches()
    mcfg = _model_config(cfg.MODEL, checkpointing)
    shape = config_shape(cfg)
    if batch is not None:
        shape.batch = batch
    precision = precision_of(cfg, device)
    if device == "cpu":
        arch = "cpu"
    step = _build_step(cfg, mcfg, shape, flow_frozen)

    regions = Regions()
    saved = _SavedBytes(regions, step.frozen_storages())
    saved_hooks = saved.hooks() if count_saved else contextlib.nullcontext()
    counter = OpCounter(regions)
    autocast = AutocastSdpa(torch.bfloat16 if precision == "bf16" else None, arch)
    regions.recompute_mode = autocast
    with (
        _charged_to_regions(step.model, regions),
        fp32_regions(autocast),
        _as_on_cuda(device),
        autocast,
        counter,
    ):
        end_forward = _forward_backward(cfg, step, regions, counter, autocast, saved_hooks)

    flops = inclusive(counter.flops)
    return Plan(
        config=cfg.file or "",
        precision=precision,
        device=device,
        arch=arch,
        batch=shape.batch,
        clip=shape.clip,
        height=shape.height,
        width=shape.width,
        micro_batches=cfg.TRAIN.GRADIENT_ACCUMULATION_STEPS,
        checkpointing=_checkpointing(mcfg),
        optimizer=cfg.TRAIN.OPTIM.TYPE,
        params=sum(p.numel() for p in step.params),
        trainable=sum(p.numel() for p in step.trainable),
        regions=_region_plans(step.model, flops, inclusive(saved.by_region)),
        flops=dict(sorted(flops.items())),
        memory=_memory(cfg, device, step, counter, end_forward, sum(saved.by_region.values())),
        peak_region=counter.peak_at,
        sdpa=list(autocast.sdpa_calls.values()),
        ops=counter.ops,
        seconds=time.perf_counter() - t0,
    )


# ------------------------------------------------------------- the steps of simulate, in order


def _clear_device_caches() -> None:
    """Forget the model's per-device cached masks and indices, so that each simulation
    counts them (on a GPU they are made at the first step and then stay)."""
    from trainer.models import attention

    for name in dir(attention):
        fn = getattr(attention, name)
        if callable(getattr(fn, "cache_clear", None)) and name != "_shift_mask":
            fn.cache_clear()  # _shift_mask: the CPU-side dense mask, not a device tensor


def _model_config(mcfg: Any, checkpointing: bool | None) -> Any:
    """``cfg.MODEL``, with attention and FFN checkpointing set to ``checkpointing`` if given."""
    if checkpointing is None:
        return mcfg
    vrt = dataclasses.replace(
        mcfg.VRT, USE_CHECKPOINT_ATTN=checkpointing, USE_CHECKPOINT_FFN=checkpointing
    )
    return dataclasses.replace(mcfg, VRT=vrt)


@dataclass
class _MetaStep:
    """The model (and the perceptual loss's VGG) on the meta device, and one micro-batch."""

    model: nn.Module
    vgg: nn.Module | None
    params: list[nn.Parameter]
    trainable: list[nn.Parameter]
    rgb: Tensor
    sharp: Tensor
    spikes: Tensor | None

    @property
    def inputs(self) -> list[Tensor]:
        return [x for x in (self.rgb, self.sharp, self.spikes) if x is not None]

    def frozen_storages(self) -> set[int]:
        """The storages that live throughout (parameters, inputs): never counted as saved."""
        frozen = {storage_key(p) for p in self.params} | {storage_key(x) for x in self.inputs}
        if self.vgg is not None:
            frozen |= {storage_key(p) for p in self.vgg.parameters()}
        return frozen


def _build_step(cfg: Config, mcfg: Any, shape: Shape, flow_frozen: bool) -> _MetaStep:
    """The model in training mode, the VGG if the loss has a perceptual term, the batch."""
    from trainer.losses import VGGFeatures
    from trainer.models import build_model, set_flow_and_deform_trainable

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
    return _MetaStep(model, vgg, params, trainable, rgb, sharp, spikes)


class _SavedBytes:
    """The bytes autograd saves for backward, by the region that saves them, once per
    storage (``frozen`` storages excepted)."""

    def __init__(self, regions: Regions, frozen: set[int]) -> None:
        self.regions, self.frozen = regions, frozen
        self.by_region: dict[str, int] = {}
        self.seen: set[int] = set()

    def pack(self, x: Tensor) -> Tensor:
        if x.device.type == "meta":
            key = storage_key(x)
            if key not in self.seen and key not in self.frozen:
                self.seen.add(key)
                r = self.regions.current
                self.by_region[r] = self.by_region.get(r, 0) + x.untyped_storage().nbytes()
        return x

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda x: x)


@contextlib.contextmanager
def _charged_to_regions(model: nn.Module, regions: Regions) -> Iterator[None]:
    """Open and close the trainer's regions as the step runs: forward hooks for the forward
    regions, the model's own backward instrumentation for the backward and recompute ones."""
    from trainer.models.instrument import Instrumentation

    instr = Instrumentation(model.region_modules(), _recompute_blocks(model), regions)
    hooks: list[RemovableHandle] = []
    for name, mod in model.region_modules().items():
        hooks += _forward_region_hooks(mod, f"forward/{name}", regions)
    try:
        yield
    finally:
        for hk in hooks:
            hk.remove()
        instr.remove()


def _recompute_blocks(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Per stage, the checkpointed modules whose re-run the model's instrumentation charges
    to the stage's recompute region."""
    recompute = {}
    for i, st in enumerate(model.vrt.stages):
        blocks: list[nn.Module] = [bl for g in st.groups for bl in g.blocks]
        if getattr(st, "ckpt_align", False):
            blocks.append(st)  # its checkpointed alignment recomputes too
        recompute[f"vrt/stage{i + 1}"] = blocks
    return recompute


def _forward_region_hooks(mod: nn.Module, region: str, regions: Regions) -> list[RemovableHandle]:
    """Hooks that open ``region`` around ``mod``'s forward (a recompute in backward is charged
    by the instrumentation instead)."""

    def pre(_m: nn.Module, _a: Any) -> None:
        if not in_backward():
            regions.begin(region)

    def post(_m: nn.Module, _a: Any, _o: Any) -> None:
        if not in_backward():
            regions.end(region)

    return [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]


@contextlib.contextmanager
def _as_on_cuda(device: str) -> Iterator[None]:
    """Let the model take its CUDA-only code paths on meta tensors when simulating a GPU:
    today the zero-padding of head sizes that no fused kernel takes (``attention._pad_heads``,
    which asks ``q.is_cuda``)."""
    from trainer.models import attention

    orig = getattr(attention, "_pad_heads", None)
    if device != "cuda" or orig is None:
        yield
        return

    def pad_heads(q: Tensor) -> bool:
        if not q.is_meta:
            return orig(q)
        align = getattr(attention, "_HEAD_ALIGN", 8)
        forced = getattr(attention, "PAD_HEADS", None)
        if q.shape[-1] % align == 0:
            return False
        return forced if forced is not None else q.dtype in HALF

    attention._pad_heads = pad_heads
    try:
        yield
    finally:
        attention._pad_heads = orig


def _forward_backward(
    cfg: Config,
    step: _MetaStep,
    regions: Regions,
    counter: OpCounter,
    autocast: AutocastSdpa,
    saved_hooks: contextlib.AbstractContextManager[Any],
) -> int:
    """Forward, loss and backward of the micro-batch (under the modes the caller entered);
    the live bytes at the end of forward."""
    with saved_hooks:
        regions.phase = "forward"
        out = step.model(step.rgb, step.spikes)
        regions.phase = "loss"
        loss = _loss(cfg, out, step.sharp, step.vgg)
    autocast.cache.clear()  # the weight casts: autocast drops them when its region ends
    del out
    counter.sweep()
    end_forward = counter.live_bytes
    regions.phase = "backward"
    regions.open.clear()
    loss.backward()
    del loss
    counter.sweep()
    return end_forward


def _loss(cfg: Config, out: Tensor, sharp: Tensor, vgg: nn.Module | None) -> Tensor:
    """The training loss (Charbonnier, perceptual), divided by the micro-batches per step."""
    from trainer.losses import charbonnier  # loaded by _build_step, outside the modes

    lw = cfg.LOSS
    loss = out.new_zeros((), dtype=torch.float32)
    if lw.CHARBONNIER.WEIGHT > 0:
        loss = loss + lw.CHARBONNIER.WEIGHT * charbonnier(out, sharp, lw.CHARBONNIER.EPS)
    if vgg is not None:
        loss = loss + lw.VGG_PERCEPTUAL.WEIGHT * F.l1_loss(vgg(out), vgg(sharp))
    return loss / cfg.TRAIN.GRADIENT_ACCUMULATION_STEPS


def _checkpointing(mcfg: Any) -> dict[str, bool]:
    vrt = mcfg.VRT
    return {
        "attention": vrt.USE_CHECKPOINT_ATTN,
        "ffn": vrt.USE_CHECKPOINT_FFN,
        "align": bool(getattr(vrt, "USE_CHECKPOINT_ALIGN", False)),
    }


def _region_plans(
    model: nn.Module, flops: dict[str, int], saved: dict[str, int]
) -> list[RegionPlan]:
    """The table's rows from inclusive FLOPs and saved bytes: each module region, the loss."""
    rows = []
    for r in region_rows(model.region_tree()):
        bwd = flops.get(f"backward/{r}", 0)
        rec = flops.get(f"backward/{r}/recompute", 0)
        fwd, sv = flops.get(f"forward/{r}", 0), saved.get(f"forward/{r}", 0)
        rows.append(RegionPlan(r, fwd, bwd - rec, rec, sv))
    rows.append(RegionPlan("loss", flops.get("loss", 0), 0, 0, saved.get("loss", 0)))
    return rows


def _nbytes(tensors: Iterable[Tensor]) -> int:
    return sum(x.numel() * x.element_size() for x in tensors)


def _memory(
    cfg: Config,
    device: str,
    step: _MetaStep,
    counter: OpCounter,
    end_forward: int,
    saved_bytes: int,
) -> dict[str, int]:
    """The step's memory (bytes). Parameters, optimizer state and the batch live throughout;
    on top come either the simulated forward/backward (plus, with several micro-batches, the
    gradients of the earlier ones) or the optimizer step: the peak is the larger."""
    kind = cfg.TRAIN.OPTIM.TYPE
    trainable = step.trainable
    gbytes = 4 * sum(p.numel() for p in trainable)
    grads_before = gbytes if cfg.TRAIN.GRADIENT_ACCUMULATION_STEPS > 1 else 0
    state = optimizer_state_bytes(trainable, kind)
    pbytes = _nbytes(step.params)
    if step.vgg is not None:
        pbytes += _nbytes(step.vgg.parameters())
    in_bytes = _nbytes(step.inputs)
    fb_peak = counter.peak
    opt_peak = gbytes + optimizer_transient_bytes(trainable, kind, device)
    base = pbytes + state + in_bytes
    return {
        "parameters": pbytes,
        "gradients": gbytes,
        "optimizer_state": state,
        "inputs": in_bytes,
        "saved_activations": saved_bytes,
        "activations_end_forward": end_forward,
        "grads_from_earlier_micro_batches": grads_before,
        "transient": max(0, fb_peak - end_forward),
        "peak_forward_backward": base + grads_before + fb_peak,
        "peak_optimizer": base + opt_peak,
        "peak": base + max(grads_before + fb_peak, opt_peak),
    }
