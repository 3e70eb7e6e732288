"""Debug view of one forward pass: each region's time and output shape.

Used by ``trainer profile``. It measures independently of the timing core (forward hooks,
``perf_counter`` and, on CUDA, a synchronize around each region: fine for a one-off debug
pass, never used in training). The spike temporal attention rows show how many chunks
("blocks") each scale ran and the average per block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from trainer.models import _unwrap


@dataclass
class DebugRow:
    """One region of one forward pass."""

    name: str  # e.g. "vrt/stage8", "spike_tsa/scale0"
    ms: float
    shape: str  # output shape(s), e.g. "[1, 6, 64, 64, 120]"
    blocks: int | None = None  # chunks run (spike temporal attention)

    @property
    def per_block_ms(self) -> float | None:
        return self.ms / self.blocks if self.blocks else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ms": self.ms,
            "shape": self.shape,
            "blocks": self.blocks,
            "per_block_ms": self.per_block_ms,
        }


def _shape(out: Any) -> str:
    if isinstance(out, Tensor):
        return str(list(out.shape))
    if isinstance(out, (tuple, list)):
        shapes = [_shape(o) for o in out]
        if len(set(shapes)) == 1 and len(shapes) > 1:
            return f"{len(shapes)} × {shapes[0]}"
        return ", ".join(shapes)
    return type(out).__name__


def debug_forward(
    model: nn.Module, rgb: Tensor, spikes: Tensor | None = None, *, grad: bool = False
) -> list[DebugRow]:
    """Run one forward pass of ``model`` and return a row per region, in execution order,
    with a final ``total`` row. Without ``grad`` the pass runs under ``torch.no_grad``."""
    m = _unwrap(model)
    cuda = rgb.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(rgb.device)

    starts: dict[str, float] = {}
    rows: list[DebugRow] = []
    handles = []
    for name, mod in m.region_modules().items():

        def pre(module: nn.Module, args: Any, name: str = name) -> None:
            sync()
            starts[name] = time.perf_counter()

        def post(module: nn.Module, args: Any, out: Any, name: str = name) -> None:
            sync()
            ms = (time.perf_counter() - starts.pop(name)) * 1000.0
            rows.append(DebugRow(name, ms, _shape(out), getattr(module, "last_chunks", None)))

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    try:
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx:
            sync()
            t0 = time.perf_counter()
            out = model(rgb, spikes)
            sync()
            total = (time.perf_counter() - t0) * 1000.0
    finally:
        for h in handles:
            h.remove()
    # parents finish after their children: order rows by start (pre-order) for reading
    order = {n: i for i, n in enumerate(m.region_modules())}
    rows.sort(key=lambda r: order[r.name])
    rows.append(DebugRow("total", total, _shape(out)))
    return rows


def format_debug(rows: list[DebugRow]) -> str:
    """The rows as an indented table (children under their parents)."""
    total = next((r.ms for r in rows if r.name == "total"), None)
    lines = [
        f"{'region':<28}{'ms':>10}{'share':>8}{'blocks':>8}{'ms/block':>10}  output shape",
        "-" * 96,
    ]
    for r in rows:
        depth = r.name.count("/")
        label = ("  " * depth + r.name.rsplit("/", 1)[-1])[:28]
        share = f"{100 * r.ms / total:6.1f}%" if total else ""
        blocks = f"{r.blocks:>8d}" if r.blocks else " " * 8
        per = f"{r.per_block_ms:>10.2f}" if r.per_block_ms is not None else " " * 10
        lines.append(f"{label:<28}{r.ms:>10.2f}{share:>8}{blocks}{per}  {r.shape}")
    return "\n".join(lines)
