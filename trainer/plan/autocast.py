"""CUDA autocast emulated on the meta device, with ``F.scaled_dot_product_attention``
replaced by the aten kernel the GPU would pick (:func:`~trainer.plan.sdpa.choose_sdpa_kernel`),
so that autograd saves what that kernel saves."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from trainer.plan.regions import in_backward
from trainer.plan.sdpa import HALF, SdpaCall, choose_sdpa_kernel, run_sdpa_kernel

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


class AutocastSdpa(TorchFunctionMode):
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
        if x.dtype == torch.float64 or (not low and x.dtype not in HALF):
            return x
        cacheable = low and x.is_leaf and x.requires_grad and not in_backward()
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
def fp32_regions(mode: AutocastSdpa) -> Iterator[None]:
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
