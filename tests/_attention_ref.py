"""The explicit-softmax attention the model's SDPA calls are checked against."""

from __future__ import annotations

import torch


def softmax_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if bias is not None:
        s = s + bias
    return s.softmax(-1) @ v
