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
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import flop_registry

from stagewatch.gpus import GIB, GpuSpec
from trainer.config import Config

#: device memory the plan keeps free for the CUDA context, cuBLAS/cuDNN workspaces and
#: allocator fragmentation when it says whether a step fits
RESERVE_BYTES = 2 * GIB

#: the largest batch the fit search simulates (the per-sample loops of shifted-window
#: attention make bigger batches slow to simulate; beyond it the answer is extrapolated)
MAX_SEARCH_BATCH = 64

#: 8-bit AdamW (bitsandbytes ``Optimizer2State``): tensors with at least this many
#: elements get uint8 states, smaller ones fp32 states
BNB_MIN_8BIT_SIZE = 4096
#: elements per absmax block of bitsandbytes' blockwise 8-bit states
BNB_BLOCKSIZE = 256

# --------------------------------------------------------------------------- SDPA kernels

KERNELS = ("cudnn", "flash", "efficient", "math", "flash_cpu")
_HALF = (torch.float16, torch.bfloat16)


def choose_sdpa_kernel(
    *,
    dtype: torch.dtype,
    head_dim: int,
    head_dim_v: int | None = None,
    has_mask: bool = False,
    mask_requires_grad: bool = False,
    dropout: float = 0.0,
    arch: str = "sm90",
) -> str:
    """The kernel ``F.scaled_dot_product_attention`` takes for these inputs.

    Rules of PyTorch's ``sdp_utils.cpp`` as read in design/GPU-NOTES.md §1: ``sm90`` tries
    cuDNN, flash, memory-efficient, math in that order; ``sm80`` flash, memory-efficient,
    math (cuDNN comes after math there, so never). Flash takes no mask and only fp16/bf16,
    head size ≤ 256 (padded to a multiple of 8). cuDNN takes fp16/bf16, head size a
    multiple of 8 and ≤ 128, and refuses a mask that requires grad. The memory-efficient
    kernel takes fp32 too, needs head sizes that are multiples of 8 (fp16/bf16) or 4
    (fp32), and takes any float mask. ``cpu`` is the CPU build: its flash kernel unless
    the mask requires grad (or dropout), else math.
    """
    dv = head_dim if head_dim_v is None else head_dim_v
    if arch == "cpu":
        if mask_requires_grad or dropout > 0 or dv != head_dim:
            return "math"
        return "flash_cpu"
    half = dtype in _HALF

    def flash() -> bool:
        return half and not has_mask and head_dim == dv and head_dim <= 256

    def cudnn() -> bool:
        return (
            half
            and head_dim == dv
            and head_dim % 8 == 0
            and head_dim <= 128
            and not mask_requires_grad
        )

    def efficient() -> bool:
        align = 8 if half else 4
        return (half or dtype == torch.float32) and head_dim % align == 0 and dv % align == 0

    order = [cudnn, flash, efficient] if arch == "sm90" else [flash, efficient]
    names = {cudnn: "cudnn", flash: "flash", efficient: "efficient"}
    for check in order:
        if check():
            return names[check]
    return "math"


def _pad_last(t: Tensor, mult: int) -> Tensor:
    d = t.shape[-1]
    return t if d % mult == 0 else F.pad(t, (0, mult - d % mult))


def run_sdpa_kernel(
    kernel: str,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    dropout: float,
    causal: bool,
    scale: float | None,
) -> Tensor:
    """Call the aten op of ``kernel`` the way SDPA's dispatcher does (mask padded to a
    multiple of 16 and expanded for the memory-efficient kernel, head size padded to 8 for
    flash), so that its backward allocates and saves what the GPU's does."""
    aten = torch.ops.aten
    need_lse = q.requires_grad or k.requires_grad or v.requires_grad
    if kernel == "math":
        return aten._scaled_dot_product_attention_math(
            q, k, v, mask, dropout, causal, None, scale=scale
        )[0]
    if kernel == "flash_cpu":
        return aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, dropout, causal, attn_mask=mask, scale=scale
        )[0]
    if kernel == "flash":
        d = q.shape[-1]
        sc = d**-0.5 if scale is None else scale
        qp, kp, vp = (_pad_last(t, 8) for t in (q, k, v))
        out = aten._scaled_dot_product_flash_attention(
            qp, kp, vp, dropout, causal, False, scale=sc
        )[0]
        return out[..., :d] if out.shape[-1] != d else out
    b, h, nq, _ = q.shape
    nk = k.shape[-2]
    bias = None
    if mask is not None:
        bias = mask
        if kernel == "efficient" and nk % 16:
            bias = F.pad(bias, (0, 16 - nk % 16))[..., :nk]
        bias = bias.expand(b, h, nq, nk)
    if kernel == "efficient":
        return aten._scaled_dot_product_efficient_attention(
            q, k, v, bias, need_lse, dropout, causal, scale=scale
        )[0]
    if kernel == "cudnn":
        return aten._scaled_dot_product_cudnn_attention(
            q, k, v, bias, need_lse, dropout, causal, False, scale=scale
        )[0]
    raise ValueError(f"unknown SDPA kernel {kernel!r}")


# --------------------------------------------------------------------------- autocast

#: CUDA autocast's lower-precision list (the ops the model uses, by function name)
_LOW_OPS = frozenset(
    {
        "linear",
        "conv1d",
        "conv2d",
        "conv3d",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
        "matmul",
        "__matmul__",
        "__rmatmul__",
        "mm",
        "bmm",
        "addmm",
        "addbmm",
        "baddbmm",
        "addmv",
        "addr",
        "mv",
        "einsum",
        "prelu",
        "chain_matmul",
    }
)
#: CUDA autocast's fp32 list (and the fp32-output reductions)
_FP32_OPS = frozenset(
    {
        "layer_norm",
        "group_norm",
        "softmax",
        "log_softmax",
        "exp",
        "expm1",
        "log",
        "log10",
        "log2",
        "log1p",
        "reciprocal",
        "rsqrt",
        "pow",
        "__pow__",
        "__rpow__",
        "softplus",
        "cosine_similarity",
        "l1_loss",
        "mse_loss",
        "smooth_l1_loss",
        "huber_loss",
        "sum",
        "cumsum",
        "cumprod",
        "prod",
        "logsumexp",
        "interpolate",
        "upsample",
        "erfinv",
        "acos",
        "asin",
        "cosh",
        "sinh",
        "tan",
        "norm",
        "dist",
        "cdist",
        "renorm",
        "binary_cross_entropy_with_logits",
        "kl_div",
        "nll_loss",
        "cross_entropy",
    }
)


@dataclass
class SdpaCall:
    """One distinct SDPA call shape and the kernel chosen for it."""

    kernel: str
    q: tuple[int, ...]
    dtype: str
    mask: tuple[int, ...] | None
    mask_requires_grad: bool
    count: int = 0


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


class _AutocastSdpa(TorchFunctionMode):
    """CUDA autocast emulated on the meta device, plus SDPA kernel selection."""

    def __init__(self, dtype: torch.dtype | None, arch: str) -> None:
        super().__init__()
        self.dtype, self.arch = dtype, arch
        self.off = 0  # > 0 inside fp32_region
        self.cache: dict[int, Tensor] = {}  # autocast's weight-cast cache (forward only)
        self.sdpa_calls: dict[tuple[Any, ...], SdpaCall] = {}

    def _cast(self, x: Any, to: torch.dtype, low: bool) -> Any:
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dtype == to:
            return x
        if x.dtype == torch.float64 or (not low and x.dtype not in _HALF):
            return x
        cacheable = low and x.is_leaf and x.requires_grad and not _in_backward()
        if cacheable:
            hit = self.cache.get(id(x))
            if hit is not None:
                return hit
        y = x.to(to)
        if cacheable:
            self.cache[id(x)] = y
        return y

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        active = self.dtype is not None and not self.off
        if name == "scaled_dot_product_attention":
            return self._sdpa(active, *args, **kwargs)
        if active:
            if name in _LOW_OPS:
                args, kwargs = tree_map(lambda x: self._cast(x, self.dtype, True), (args, kwargs))
            elif name in _FP32_OPS or name.startswith("upsample"):
                args, kwargs = tree_map(
                    lambda x: self._cast(x, torch.float32, False), (args, kwargs)
                )
        return func(*args, **kwargs)

    def _sdpa(
        self,
        active: bool,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> Tensor:
        if active:
            q, k, v = (self._cast(t, self.dtype, True) for t in (q, k, v))
            if attn_mask is not None and attn_mask.is_floating_point():
                attn_mask = self._cast(attn_mask, self.dtype, True)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(
                attn_mask.logical_not(), float("-inf")
            )
        mrg = attn_mask is not None and attn_mask.requires_grad
        kernel = choose_sdpa_kernel(
            dtype=q.dtype,
            head_dim=q.shape[-1],
            head_dim_v=v.shape[-1],
            has_mask=attn_mask is not None,
            mask_requires_grad=mrg,
            dropout=dropout_p,
            arch=self.arch,
        )
        key = (
            kernel,
            tuple(q.shape),
            str(q.dtype).removeprefix("torch."),
            None if attn_mask is None else tuple(attn_mask.shape),
            mrg,
        )
        call = self.sdpa_calls.get(key)
        if call is None:
            call = self.sdpa_calls[key] = SdpaCall(*key)
        call.count += 1
        return run_sdpa_kernel(kernel, q, k, v, attn_mask, dropout_p, is_causal, scale)


@contextlib.contextmanager
def _fp32_regions(mode: _AutocastSdpa) -> Iterator[None]:
    """Make the model's ``fp32_region`` switch the emulated autocast off (on meta it is a
    no-op otherwise)."""
    from trainer.models import ops, vrt

    @contextlib.contextmanager
    def region(_t: Tensor) -> Iterator[None]:
        mode.off += 1
        try:
            yield
        finally:
            mode.off -= 1

    saved = ops.fp32_region, vrt.fp32_region
    ops.fp32_region = vrt.fp32_region = region  # type: ignore[assignment]
    try:
        yield
    finally:
        ops.fp32_region, vrt.fp32_region = saved


# --------------------------------------------------------------------------- accounting


class _Regions:
    """The open regions (innermost last), fed by forward hooks and by the model's backward
    instrumentation, which calls :meth:`begin`/:meth:`end` like a timing logger."""

    enabled = True
    _closed = False

    def __init__(self) -> None:
        self.open: list[str] = []
        self.phase = "forward"
        # the autograd engine runs a checkpoint's recompute without the Python function
        # modes of the caller: the autocast emulation is re-entered around it
        self.recompute_mode: TorchFunctionMode | None = None
        self._entered: list[TorchFunctionMode] = []

    def begin(self, name: str) -> str:
        self.open.append(name)
        if name.endswith("/recompute") and self.recompute_mode is not None:
            if torch._C._len_torch_function_stack() == 0:
                self.recompute_mode.__enter__()
                self._entered.append(self.recompute_mode)
            else:
                self._entered.append(None)  # type: ignore[arg-type]
        return name

    def end(self, handle: Any) -> None:
        if isinstance(handle, str) and handle.endswith("/recompute") and self._entered:
            mode = self._entered.pop()
            if mode is not None:
                mode.__exit__(None, None, None)
        for i in range(len(self.open) - 1, -1, -1):
            if self.open[i] == handle:
                del self.open[i]
                return

    @property
    def current(self) -> str:
        return self.open[-1] if self.open else self.phase


def _storage_key(t: Tensor) -> int:
    return t.untyped_storage()._cdata


class _Counter(TorchDispatchMode):
    """FLOPs per region and the live bytes of every storage created on the meta device.

    Liveness is polled (a storage's weak reference expires when it is freed): storages
    born in the last ``YOUNG_OPS`` ops at every op, all of them every few ops and before
    a new peak is recorded (at most every ``MIN_FULL_GAP`` ops), so that a peak is not
    inflated by temporaries that are already gone.
    """

    YOUNG_OPS = 32
    MIN_FULL_GAP = 16

    def __init__(self, regions: _Regions) -> None:
        super().__init__()
        self.regions = regions
        self.flops: dict[str, int] = {}
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.young: list[tuple[int, int]] = []  # (birth op, key)
        self.live_bytes = 0
        self.peak = 0
        self.peak_at = ""
        self.ops = 0
        self.last_full = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        fn = flop_registry.get(func._overloadpacket)
        if fn is not None:
            n = int(fn(*args, **kwargs, out_val=out))
            if n:
                r = self.regions.current
                self.flops[r] = self.flops.get(r, 0) + n
        grew = False
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.device.type == "meta":
                st = t.untyped_storage()
                key = st._cdata
                if key not in self.live:
                    nb = st.nbytes()
                    self.live[key] = (StorageWeakRef(st), nb)
                    self.young.append((self.ops, key))
                    self.live_bytes += nb
                    grew = True
        self._sweep_young()
        gap = self.ops - self.last_full
        if gap >= max(self.MIN_FULL_GAP, len(self.live) // 16):
            self.sweep()
        if grew and self.live_bytes > self.peak:
            if gap >= self.MIN_FULL_GAP:
                self.sweep()
            if self.live_bytes > self.peak:
                self.peak, self.peak_at = self.live_bytes, self.regions.current
        return out

    def _sweep_young(self) -> None:
        expired = _EXPIRED
        keep = []
        old = self.ops - self.YOUNG_OPS
        for born, key in self.young:
            ent = self.live.get(key)
            if ent is None:
                continue
            if expired(ent[0].cdata):
                del self.live[key]
                self.live_bytes -= ent[1]
            elif born > old:
                keep.append((born, key))
        self.young = keep

    def sweep(self) -> None:
        expired = _EXPIRED
        dead = [k for k, (ref, _nb) in self.live.items() if expired(ref.cdata)]
        for k in dead:
            self.live_bytes -= self.live.pop(k)[1]
        self.last_full = self.ops


_EXPIRED = torch.UntypedStorage._expired


def count_flops(
    fn: Callable[..., Tensor], *args: Tensor, amp: torch.dtype | None = None, arch: str = "sm90"
) -> dict[str, int]:
    """FLOPs of ``fn(*args)`` (meta tensors) and of the backward of its sum, under the same
    autocast emulation and SDPA kernel choice as :func:`simulate`:
    ``{"forward": n, "backward": m}``."""
    regions = _Regions()
    counter = _Counter(regions)
    ac = _AutocastSdpa(amp, arch)
    with _fp32_regions(ac), ac, counter:
        out = fn(*args)
        regions.phase = "backward"
        if out.requires_grad:
            out.float().sum().backward()
    return {
        "forward": counter.flops.get("forward", 0),
        "backward": counter.flops.get("backward", 0),
    }


# --------------------------------------------------------------------------- results

REGION_ORDER_TOP = ("spike_encoder", "spike_tsa", "vrt/flow", "vrt/prealign")


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
        return self.memory["peak"]

    def step_flops(self) -> dict[str, int]:
        """FLOPs per optimizer step (all micro-batches), by region name."""
        return {k: v * self.micro_batches for k, v in self.flops.items()}

    def to_dict(self) -> dict[str, Any]:
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


def _inclusive(excl: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, v in excl.items():
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            key = "/".join(parts[:i])
            out[key] = out.get(key, 0) + v
    return out


def _region_list(names: list[str]) -> list[str]:
    """The plan's rows: each module region below the trainer's forward/backward."""
    rows = []
    for n in names:
        if n.startswith("forward/") and not n.endswith("/chunk"):
            r = n.removeprefix("forward/")
            if r != "vrt" and r.count("/") <= 1:
                rows.append(r)
    return rows


# --------------------------------------------------------------------------- optimizer


def optimizer_state_bytes(params: list[nn.Parameter], kind: str) -> int:
    """Bytes of optimizer state after the first step.

    ``adamw``: two fp32 moments per element. ``adamw8bit`` as bitsandbytes stores it:
    tensors with ≥ 4096 elements two uint8 states and two fp32 absmax values per block of
    256 elements; smaller tensors two fp32 states; plus the two 256-entry fp32 quantisation
    maps, shared by all tensors.
    """
    total = 0
    any8 = False
    for p in params:
        n = p.numel()
        if kind == "adamw8bit" and n >= BNB_MIN_8BIT_SIZE:
            total += 2 * n + 2 * 4 * math.ceil(n / BNB_BLOCKSIZE)
            any8 = True
        else:
            total += 2 * 4 * n
    if any8:
        total += 2 * 256 * 4
    return total


def optimizer_transient_bytes(params: list[nn.Parameter], kind: str, device: str) -> int:
    """Largest temporary of ``optimizer.step()``: torch's foreach AdamW (CUDA) computes
    ``sqrt(exp_avg_sq)`` for all tensors at once; the for-loop (CPU) and bitsandbytes
    kernels one tensor at a time."""
    sizes = [4 * p.numel() for p in params]
    if not sizes:
        return 0
    if kind == "adamw" and device == "cuda":
        return sum(sizes)
    if kind == "adamw":
        return max(sizes)
    return 0


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
    from trainer.models import attention

    for name in dir(attention):
        fn = getattr(attention, name)
        if callable(getattr(fn, "cache_clear", None)) and name != "_shift_mask":
            fn.cache_clear()  # _shift_mask: the CPU-side dense mask, not a device tensor


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
        return forced if forced is not None else q.dtype in _HALF

    attention._pad_heads = pad_heads
    try:
        yield
    finally:
        attention._pad_heads = orig


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
    frozen = {_storage_key(p) for p in params} | {_storage_key(x) for x in inputs}
    if vgg is not None:
        frozen |= {_storage_key(p) for p in vgg.parameters()}

    regions = _Regions()
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
            if not _in_backward():
                regions.begin(full)

        def post(_m: nn.Module, _a: Any, _o: Any, full: str = full) -> None:
            if not _in_backward():
                regions.end(full)

        fwd_hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]

    saved: dict[str, int] = {}
    seen_saved: set[int] = set()

    def pack(x: Tensor) -> Tensor:
        if x.device.type == "meta":
            key = _storage_key(x)
            if key not in seen_saved and key not in frozen:
                seen_saved.add(key)
                r = regions.current
                saved[r] = saved.get(r, 0) + x.untyped_storage().nbytes()
        return x

    counter = _Counter(regions)
    ac = _AutocastSdpa(amp, arch)
    regions.recompute_mode = ac
    grads_before = 4 * sum(p.numel() for p in trainable) if accum > 1 else 0
    end_forward = 0
    try:
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x)
        with _fp32_regions(ac), _as_on_cuda(device), ac, counter:
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

    incl = _inclusive(counter.flops)
    saved_incl = _inclusive(saved)
    rows = []
    for r in _region_list(model.region_tree()):
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
        from stagewatch.gpus import lookup

        spec = lookup(name)
        arch = spec.arch if spec is not None else arch
    from stagewatch.timing import get_global_timing_logger, set_global_timing_logger

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


# --------------------------------------------------------------------------- text


def _gb(n: int) -> str:
    return f"{n / GIB:.2f}"


def _tf(n: int) -> str:
    return f"{n / 1e12:.3f}" if n >= 1e9 else f"{n / 1e12:.6f}"


def format_plan(plan: Plan) -> str:
    """The plan as a text table."""
    ck = plan.checkpointing
    lines = [
        f"config: {plan.config}",
        f"shape: batch {plan.batch} × {plan.clip} frames × {plan.height}×{plan.width}, "
        f"{plan.micro_batches} micro-batch(es) per step; {plan.precision} on {plan.device}"
        f"{'' if plan.device == 'cpu' else ' (' + plan.arch + ' kernel rules)'}; "
        f"checkpointing attention {'on' if ck['attention'] else 'off'}, "
        f"ffn {'on' if ck['ffn'] else 'off'}, alignment {'on' if ck['align'] else 'off'}; "
        f"optimizer {plan.optimizer}",
        "",
        f"{'region':<22}{'fwd TF':>10}{'bwd TF':>10}{'recomp TF':>11}{'saved GiB':>10}",
    ]
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
    m = plan.memory
    lines += ["", "memory of one training step (GiB)"]
    for label, key in (
        ("parameters", "parameters"),
        ("gradients", "gradients"),
        ("optimizer state", "optimizer_state"),
        ("input batch", "inputs"),
        ("activations at end of forward", "activations_end_forward"),
        ("  of which saved for backward", "saved_activations"),
        ("largest transient (backward)", "transient"),
    ):
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
    kinds: dict[str, int] = {}
    for c in plan.sdpa:
        kinds[c.kernel] = kinds.get(c.kernel, 0) + c.count
    if kinds:
        lines.append("attention kernels: " + ", ".join(f"{k} ×{n}" for k, n in kinds.items()))
    if plan.fits is not None:
        f = plan.fits
        verdict = "fits" if f["fits"] else "does NOT fit"
        lines += [
            "",
            f"{f['gpu']}: {_gb(f['memory'])} GiB, {_gb(f['usable'])} GiB usable "
            f"(keeping {_gb(f['reserve'])} GiB for context and fragmentation): {verdict}, "
            f"headroom {_gb(f['headroom'])} GiB",
        ]
        for r in f["max_batch"]:
            note = f" ({', '.join(r['notes'])})" if r["notes"] else ""
            at = "" if r["peak_at_max"] is None else f", peak there {_gb(r['peak_at_max'])} GiB"
            lines.append(
                f"  checkpointing {'on ' if r['checkpointing'] else 'off'}: largest "
                f"batch {'≥ ' if r['at_least'] else ''}{r['max_batch']}{note} (batch 1 {_gb(r['peak_batch1'])} GiB, "
                f"+{_gb(r['per_sample'])} GiB per sample{at}; simulated batches "
                f"{', '.join(map(str, r['simulated']))})"
            )
    lines.append(f"(simulated {plan.ops} ops in {plan.seconds:.1f} s)")
    return "\n".join(lines)
