"""Known GPUs: memory and dense peak throughput, for ``trainer plan`` and the monitor's MFU.

Torch-free (the monitor imports it). Peaks are the vendors' dense (no sparsity) figures in
TFLOP/s: ``bf16`` on tensor cores, ``fp32`` on CUDA cores (TF32 off), ``tf32`` fp32
matmuls on tensor cores (when the run allowed TF32). Override with
``STAGEWATCH_PEAK_TFLOPS`` (one number, or ``bf16=…,fp32=…,tf32=…``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

GIB = 1024**3
ENV_PEAK = "STAGEWATCH_PEAK_TFLOPS"


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory: int  # bytes the driver reports as total
    bf16: float  # dense TFLOP/s
    fp32: float  # dense TFLOP/s without TF32
    arch: str  # "sm80" or "sm90": the SDPA kernel-choice rules that apply
    tf32: float = 0.0  # dense TFLOP/s of fp32 matmuls on TF32 tensor cores

    def peak(self, precision: str) -> float:
        """Dense peak in TFLOP/s for ``bf16``, ``fp32`` or ``tf32``."""
        if precision == "tf32":
            return self.tf32 or self.fp32
        return self.bf16 if precision == "bf16" else self.fp32


MIB = 1024**2
#: key (upper case, what ``--gpu`` accepts) -> spec; memory as nvidia-smi reports it
GPUS: dict[str, GpuSpec] = {
    "H200": GpuSpec("NVIDIA H200", 143771 * MIB, 989.4, 66.9, "sm90", 494.7),
    "H100": GpuSpec("NVIDIA H100 80GB (SXM)", 81559 * MIB, 989.4, 66.9, "sm90", 494.7),
    "H100-PCIE": GpuSpec("NVIDIA H100 PCIe", 81559 * MIB, 756.0, 51.2, "sm90", 378.0),
    "A100": GpuSpec("NVIDIA A100 80GB", 81920 * MIB, 312.0, 19.5, "sm80", 156.0),
    "A100-40": GpuSpec("NVIDIA A100 40GB", 40960 * MIB, 312.0, 19.5, "sm80", 156.0),
    "L40S": GpuSpec("NVIDIA L40S", 46068 * MIB, 362.1, 91.6, "sm80", 183.0),
    "RTX4090": GpuSpec("NVIDIA GeForce RTX 4090", 24564 * MIB, 165.2, 82.6, "sm80", 82.6),
}


def _norm(s: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", s.upper())


def lookup(name: str | None) -> GpuSpec | None:
    """The spec for a ``--gpu`` key or a device name such as ``NVIDIA H200``; else None."""
    if not name:
        return None
    n = _norm(name)
    if n in {_norm(k) for k in GPUS}:
        return next(v for k, v in GPUS.items() if _norm(k) == n)
    # device names from torch: longest key that appears in the name wins
    best = None
    for k, v in GPUS.items():
        if _norm(k) in n and (best is None or len(_norm(k)) > len(_norm(best[0]))):
            best = (k, v)
    if best is None:
        return None
    if best[0] == "A100" and "40GB" in n:
        return GPUS["A100-40"]
    if best[0] == "H100" and "PCIE" in n:
        return GPUS["H100-PCIE"]
    return best[1]


def parse_gpu(text: str) -> GpuSpec:
    """``--gpu`` value: a known name (H200, H100, A100...) or a memory size in GiB (``80``).

    Raises ValueError with a one-line message for anything else. A bare size assumes the
    sm90 kernel rules and H100/H200 peaks.
    """
    spec = lookup(text)
    if spec is not None:
        return spec
    try:
        gib = float(text.strip().upper().removesuffix("GIB").removesuffix("GB"))
    except ValueError:
        raise ValueError(
            f"unknown GPU {text!r}: expected one of {', '.join(GPUS)} or a memory "
            "size in GiB such as 80"
        ) from None
    if not 0 < gib < 100000:
        raise ValueError(f"GPU memory must be a positive number of GiB, got {text!r}")
    h = GPUS["H100"]
    return GpuSpec(f"{gib:g} GiB GPU", int(gib * GIB), h.bf16, h.fp32, "sm90", h.tf32)


def peak_override(precision: str, env: dict[str, str] | None = None) -> float | None:
    """The peak from ``STAGEWATCH_PEAK_TFLOPS`` for ``precision``, if set and valid."""
    raw = (os.environ if env is None else env).get(ENV_PEAK, "").strip()
    if not raw:
        return None
    try:
        if "=" not in raw:
            v = float(raw)
            return v if v > 0 else None
        for part in raw.split(","):
            k, _, val = part.partition("=")
            if k.strip().lower() == precision:
                v = float(val)
                return v if v > 0 else None
    except ValueError:
        return None
    return None
