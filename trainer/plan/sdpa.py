"""SDPA kernel rules: which aten kernel ``F.scaled_dot_product_attention`` takes for given
inputs on a GPU (or the CPU), and calling that kernel the way SDPA's dispatcher does."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

KERNELS = ("cudnn", "flash", "efficient", "math", "flash_cpu")
#: the half-precision dtypes (the fused kernels' inputs, autocast's lower precision)
HALF = (torch.float16, torch.bfloat16)


@dataclass
class SdpaCall:
    """One distinct SDPA call shape and the kernel chosen for it."""

    kernel: str
    q: tuple[int, ...]
    dtype: str
    mask: tuple[int, ...] | None
    mask_requires_grad: bool
    count: int = 0


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
    half = dtype in HALF

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
