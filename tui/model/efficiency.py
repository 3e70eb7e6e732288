"""Achieved TFLOP/s per region and the step's MFU, from run_start FLOPs and measured times.

The trainer writes the FLOPs of one optimizer step per region into ``run_start``
(``config.FLOPS``, docs/record-format.md). Divided by a region's measured mean time per
step it gives the region's achieved TFLOP/s; the whole step's FLOPs over the mean step
wall time, against the GPU's dense peak for the run's precision, give the MFU. Regions
that take a visible share of the step at far less than the step's own average TFLOP/s are
marked: that is where the time goes without matrix work to show for it. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from stagewatch.gpus import ENV_PEAK, lookup, peak_override
from tui.model.snapshot import RunSnapshot, Stats

#: a region is "low" below this fraction of the step's average TFLOP/s ...
LOW_RATIO = 0.5
#: ... when it takes at least this share of the step
LOW_MIN_SHARE = 0.02


@dataclass(frozen=True, slots=True)
class RegionEfficiency:
    name: str
    flops: int  # per step
    ms: float  # mean measured ms per step
    tflops: float  # achieved
    mfu: float | None  # of the peak, when known
    share: float  # of the step wall time
    low: bool  # far below the step's average efficiency


@dataclass(frozen=True, slots=True)
class Efficiency:
    precision: str
    peak_tflops: float | None
    peak_source: str | None  # e.g. "NVIDIA H200 bf16", "STAGEWATCH_PEAK_TFLOPS", "--peak-tflops"
    step_flops: int
    step_ms: float
    step_tflops: float
    mfu: float | None
    regions: tuple[RegionEfficiency, ...]

    def region(self, name: str) -> RegionEfficiency | None:
        for r in self.regions:
            if r.name == name:
                return r
        return None


def _int(x: Any) -> int | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
        return None
    return int(x)


def resolve_peak(
    snap: RunSnapshot, precision: str, override: float | None = None
) -> tuple[float | None, str | None]:
    """(peak TFLOP/s, where it came from): the override, ``STAGEWATCH_PEAK_TFLOPS``, or
    the table of known GPUs by the run's GPU name; None on CPU or an unknown GPU."""
    if override is not None and override > 0:
        return override, "--peak-tflops"
    env = peak_override(precision)
    if env is not None:
        return env, ENV_PEAK
    spec = lookup(snap.gpu_name)
    if spec is None:
        return None, None
    return spec.peak(precision), f"{spec.name} {precision}"


def efficiency(
    snap: RunSnapshot, *, window: bool = False, peak_tflops: float | None = None
) -> Efficiency | None:
    """Achieved TFLOP/s and MFU of ``snap`` (whole run, or its window); None without
    ``config.FLOPS`` in the run's ``run_start`` or without a measured step."""
    cfg = snap.config if isinstance(snap.config, dict) else None
    info = cfg.get("FLOPS") if cfg else None
    if not isinstance(info, dict):
        return None
    regions = info.get("REGIONS")
    step_flops = _int(info.get("STEP"))
    if not isinstance(regions, dict) or step_flops is None:
        return None
    wall: Stats = snap.wall_window if window else snap.wall
    if not (math.isfinite(wall.avg) and wall.avg > 0):
        return None
    precision = info.get("PRECISION") if info.get("PRECISION") in ("bf16", "fp32") else "fp32"
    if precision == "fp32" and info.get("TF32") is True:
        precision = "tf32"  # fp32 matmuls on TF32 tensor cores: that peak
    peak, source = resolve_peak(snap, precision, peak_tflops)
    step_tf = step_flops / (wall.avg / 1000.0) / 1e12
    rows = []
    for r in snap.regions:
        n = _int(regions.get(r.name))
        s = r.window if window else r.whole
        if not n or not (math.isfinite(s.avg) and s.avg > 0):
            continue
        tf = n / (s.avg / 1000.0) / 1e12
        share = s.share if math.isfinite(s.share) else 0.0
        low = tf < LOW_RATIO * step_tf and share >= LOW_MIN_SHARE
        rows.append(RegionEfficiency(r.name, n, s.avg, tf, tf / peak if peak else None, share, low))
    return Efficiency(
        precision,
        peak,
        source,
        step_flops,
        wall.avg,
        step_tf,
        step_tf / peak if peak else None,
        tuple(rows),
    )


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, nd)


def efficiency_dict(eff: Efficiency | None) -> dict[str, Any] | None:
    """The ``efficiency`` key of ``tui summary --json`` (None when the run has no FLOPs)."""
    if eff is None:
        return None
    return {
        "precision": eff.precision,
        "peak_tflops": _r(eff.peak_tflops),
        "peak_source": eff.peak_source,
        "step_flops": eff.step_flops,
        "step_tflops": _r(eff.step_tflops),
        "mfu": _r(eff.mfu, 6),
        "regions": {
            r.name: {"flops": r.flops, "tflops": _r(r.tflops), "mfu": _r(r.mfu, 6), "low": r.low}
            for r in eff.regions
        },
    }


def fmt_tflops(x: float) -> str:
    if not math.isfinite(x):
        return "—"
    return f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def efficiency_lines(
    eff: Efficiency | None, only: Container[str] | None = None
) -> list[tuple[str, str]]:
    """(text, style) lines for ``tui summary``: the step's figures, then each region (of
    ``only``, when given: the regions the summary shows)."""
    if eff is None:
        return []
    head = (
        f"efficiency: step {fmt_tflops(eff.step_tflops)} TFLOP/s ({eff.step_flops / 1e12:.4g} TFLOP"
    )
    head += " per step, matmul/conv/attention only)"
    if eff.mfu is not None:
        head += f", MFU {eff.mfu:.2%} of {eff.peak_tflops:g} TFLOP/s ({eff.peak_source})"
    else:
        head += f", MFU unknown (no peak for this device: set {ENV_PEAK} or --peak-tflops)"
    lines = [(head, "bold")]
    for r in eff.regions:
        if only is not None and r.name not in only:
            continue
        mfu = f"  MFU {r.mfu:.2%}" if r.mfu is not None else ""
        mark = "  far below the step's average" if r.low else ""
        lines.append(
            (
                f"  {r.name:<40} {fmt_tflops(r.tflops):>8} TFLOP/s{mfu}{mark}",
                "yellow" if r.low else "",
            )
        )
    return lines


def region_line(eff: Efficiency | None, region: str | None) -> tuple[str, str] | None:
    """One line for the monitor's panel: the selected region's TFLOP/s (or the step's)."""
    if eff is None:
        return None
    mfu = f" · MFU {eff.mfu:.2%}" if eff.mfu is not None else ""
    step = f"step {fmt_tflops(eff.step_tflops)} TFLOP/s{mfu}"
    r = eff.region(region) if region else None
    if r is None:
        return step, ""
    rm = f" (MFU {r.mfu:.2%})" if r.mfu is not None else ""
    low = " · far below the step's average" if r.low else ""
    return f"{fmt_tflops(r.tflops)} TFLOP/s{rm}{low} · {step}", "yellow" if r.low else ""
