"""``trainer bench``'s outputs: the Markdown table, the JSON report, and the files they go to."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from typing import Any

from trainer.bench_results import OK, OOM, BenchReport


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit, div in (("GiB", 1024**3), ("MiB", 1024**2)):
        if n >= div:
            return f"{n / div:.2f} {unit}" if unit == "GiB" else f"{n / div:.0f} {unit}"
    return f"{n / 1024:.0f} KiB"


def fmt_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "—"
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


def fmt_step(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


def markdown(report: BenchReport) -> str:
    """The table, like the original document's, with measured figures only."""
    first = next((r for r in report.results if r.device), None)
    dev = (first.gpu_name or first.device) if first else "?"
    epochs = next((r.epochs for r in report.results if r.epochs), None)
    lines = [
        f"`trainer bench --cfg {report.cfg}`: {report.steps} measured step(s) after "
        f"{report.warmup} warm-up step(s) per row, each row its own process on {dev}. "
        "Step = median step wall time "
        f"(validation/checkpoint excluded); samples/s = samples per step / step; epoch and total "
        f"times project the step time over the configured dataset ({report.plan_source}"
        + (
            f", {report.world_size} ranks assumed to scale linearly"
            if report.world_size > 1
            else ""
        )
        + "). Ratios are vs the first row. Predicted = `trainer plan`'s simulated peak of the "
        "row's step (on CPU tensors only; the measured CPU figure is the process's resident set).",
        "",
        "| # | config | peak memory | predicted | step | samples/s | epoch | "
        f"{epochs or 'all'} epochs | vs baseline | run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.results:
        if r.status == OK:
            vs = (
                f"{r.step_ratio:.2f}× time, {r.throughput_ratio:.2f}× throughput"
                if r.step_ratio is not None and r.throughput_ratio is not None
                else "—"
            )
            cells = [
                fmt_bytes(r.mem_peak),
                fmt_step(r.step_ms),
                f"{r.samples_per_s:.3g}" if r.samples_per_s else "—",
                fmt_seconds(r.epoch_s),
                fmt_seconds(r.total_s),
                vs,
            ]
        else:
            out = r.outcome.replace("|", "\\|")
            cells = [fmt_bytes(r.mem_peak) if r.status == OOM else "—", out, "—", "—", "—", "—"]
        cells.insert(1, fmt_bytes(r.mem_predicted))
        cfg_cell = r.label.replace("|", "\\|")
        lines.append(
            f"| {r.index + 1} | {cfg_cell} | " + " | ".join(cells) + f" | {r.run_id or '—'} |"
        )
    if report.interrupted:
        lines += ["", "Interrupted: rows after the last one were not run."]
    return "\n".join(lines) + "\n"


def report_dict(report: BenchReport) -> dict[str, Any]:
    rows = []
    for r in report.results:
        d = asdict(r)
        d["settings"] = {k: v for k, v in r.settings}
        d["label"] = r.label
        d["outcome"] = r.outcome
        rows.append(d)
    return {
        "schema": 1,
        "cfg": report.cfg,
        "steps": report.steps,
        "warmup": report.warmup,
        "world_size": report.world_size,
        "log_dir": report.log_dir,
        "samples_source": report.plan_source,
        "started": report.started,
        "interrupted": report.interrupted,
        "rows": rows,
    }


def write_outputs(report: BenchReport) -> tuple[str, str] | None:
    """``bench.md`` and ``bench.json`` in ``report.out`` (None when there is no --out)."""
    if not report.out:
        return None
    os.makedirs(report.out, exist_ok=True)
    md, js = os.path.join(report.out, "bench.md"), os.path.join(report.out, "bench.json")
    with open(md, "w", encoding="utf-8") as f:
        f.write(markdown(report))
    with open(js, "w", encoding="utf-8") as f:
        json.dump(report_dict(report), f, indent=2, allow_nan=False)
        f.write("\n")
    return md, js
