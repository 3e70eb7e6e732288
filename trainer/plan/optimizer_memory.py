"""Optimizer memory: the state AdamW (or bitsandbytes' 8-bit AdamW) keeps after the first
step, and the largest temporary of ``optimizer.step()``."""

from __future__ import annotations

import math

from torch import nn

#: 8-bit AdamW (bitsandbytes ``Optimizer2State``): tensors with at least this many
#: elements get uint8 states, smaller ones fp32 states
BNB_MIN_8BIT_SIZE = 4096
#: elements per absmax block of bitsandbytes' blockwise 8-bit states
BNB_BLOCKSIZE = 256


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
