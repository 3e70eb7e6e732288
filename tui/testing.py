"""Deterministic generators of stagewatch runs for tests, benchmarks and demos (torch-free).

Records are written with :func:`stagewatch.records.encode`, so they are exactly what the
timing core writes. Values come from a seeded RNG: the same arguments give the same bytes.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

from stagewatch.records import (
    Eval,
    RunEnd,
    RunStart,
    Step,
    encode,
    rank_file_name,
)

# A VRT + spike-like tree: (name, typical ms). Children are included in their parents.
BASE_REGIONS: tuple[tuple[str, float], ...] = (
    ("data", 0.2),
    ("forward", 1850.0),
    ("forward/spike", 5.0),
    ("forward/vrt", 1795.0),
    ("forward/vrt/stage1", 60.0),
    ("forward/vrt/stage2", 269.0),
    ("forward/vrt/stage3", 95.0),
    ("forward/vrt/stage7", 137.0),
    ("forward/vrt/stage8", 965.0),
    ("forward/loss", 50.0),
    ("backward", 4200.0),
    ("allreduce", 150.0),
    ("optimizer", 75.0),
)


def region_names(n: int) -> list[tuple[str, float]]:
    """``n`` region names with typical times: the base tree, then more VRT/backward stages."""
    out = list(BASE_REGIONS[:n])
    i = 0
    while len(out) < n:
        parent = "forward/vrt" if i % 2 == 0 else "backward"
        out.append((f"{parent}/block{i // 2:02d}", 3.0 + (i % 7)))
        i += 1
    return out


def step_records(
    steps: int,
    *,
    rank: int = 0,
    n_regions: int = 13,
    seed: int = 0,
    t0: float = 1_764_160_000.0,
    slow_factor: float = 1.0,
    samples: int = 1,
    start_step: int = 1,
    jitter: float = 0.05,
) -> Iterator[Step]:
    """``steps`` Step records of one rank; ``slow_factor`` > 1 makes a straggler."""
    rng = random.Random(seed * 1000 + rank)
    names = region_names(n_regions)
    t = t0
    for s in range(start_step, start_step + steps):
        regions: dict[str, tuple[float, int]] = {}
        for name, ms in names:
            v = ms * slow_factor * (1.0 + rng.uniform(-jitter, jitter))
            regions[name] = (round(v, 4), 1 if "block" not in name else 2)
        top = sum(v for k, (v, _) in regions.items() if "/" not in k)
        wall = top * (1.0 + rng.uniform(0.01, 0.03))
        t += wall / 1000.0
        yield Step(
            step=s,
            time=t,
            wall_ms=wall,
            regions=regions,
            samples=samples,
            memory={
                "allocated": 20_000_000_000 + s,
                "reserved": 30_000_000_000,
                "peak": 32_000_000_000 + rank,
            },
            scalars={"loss": 1.0 / (1.0 + s * 0.01), "lr": 1e-4},
        )


def write_run(
    root: str | os.PathLike[str],
    run_id: str = "20261126-120000-demo-0001",
    *,
    steps: int = 20,
    ranks: int = 1,
    n_regions: int = 13,
    total_steps: int | None = 100,
    status: str | None = "completed",
    seed: int = 0,
    t0: float = 1_764_160_000.0,
    straggler: int | None = None,
    eval_every: int = 0,
) -> Path:
    """Write a whole run folder (``run_start``, steps, optional evals and ``run_end``)."""
    run = Path(root) / run_id
    run.mkdir(parents=True, exist_ok=True)
    for r in range(ranks):
        with open(run / rank_file_name(r), "w", encoding="utf-8") as f:
            f.write(start_line(run_id, rank=r, world_size=ranks, total_steps=total_steps, t0=t0))
            last = None
            for rec in step_records(
                steps,
                rank=r,
                n_regions=n_regions,
                seed=seed,
                t0=t0,
                slow_factor=1.3 if straggler == r else 1.0,
            ):
                f.write(encode(rec))
                last = rec
                if eval_every and rec.step % eval_every == 0:
                    f.write(
                        encode(
                            Eval(
                                step=rec.step,
                                time=rec.time,
                                metrics={"psnr": 28.0 + rec.step * 0.001},
                            )
                        )
                    )
            if status is not None:
                f.write(
                    encode(RunEnd(time=(last.time if last else t0) + 1, status=status, steps=steps))
                )
    return run


def start_line(
    run_id: str,
    *,
    rank: int = 0,
    world_size: int = 1,
    total_steps: int | None = 100,
    t0: float = 1_764_160_000.0,
    samples_per_step: int | None = 1,
) -> str:
    """The ``run_start`` line of one rank file."""
    return encode(
        RunStart(
            run_id=run_id,
            rank=rank,
            world_size=world_size,
            time=t0,
            host="node1",
            pid=1000 + rank,
            device=f"cuda:{rank}",
            gpu_name="NVIDIA H200",
            torch_version="2.13.0",
            config={"TRAIN": {"BATCH_SIZE": 1}},
            total_steps=total_steps,
            samples_per_step=samples_per_step,
            device_memory_total=48 * 2**30,
        )
    )


def text_log_block(
    step: int, regions: list[tuple[str, float, list[tuple[str, float]]]], total: float
) -> str:
    """One step block of the original system's text log (BRIEF format)."""
    lines = ["=" * 80, f"Step {step}", "=" * 80]
    for name, ms, subs in regions:
        lines.append(f"{name:<41}: {ms:>8.2f}ms ({ms / total * 100:5.1f}%) [avg: {ms:>8.2f}ms]")
        for sub, sms in subs:
            lines.append(f"  - {sub:<36}: {sms:>8.2f}ms [avg: {sms:>8.2f}ms]")
    lines.append(f"{'Total':-<40}: {total:>8.2f}ms")
    return "\n".join(lines) + "\n"
