"""The user's what-if table, measured: five cumulative rows at full model size on one CUDA GPU.

    python benchmarks/gpu_whatif_check.py            # on a CUDA machine, ~5 minutes
    python benchmarks/gpu_whatif_check.py --dry-run  # CPU, tiny model: checks the machinery

Rows (each adds to the previous one, as in the user's document): baseline (fp32 AdamW,
batch 1, checkpointing of attention and FFN on); + 8-bit AdamW; + batch 2; + batch 3; + no
checkpointing. Each row is a ``trainer bench`` row (its own process, synthetic data, the
``configs/deblur/vrt_spike_baseline.yaml`` model), with one micro-batch per optimizer step
(``GRADIENT_ACCUMULATION_STEPS=1``) so that a step is one forward/backward, as in the user's
"whole step ~6 s".

The projection matches the user's table: 3 GPUs (each assumed to keep the measured speed)
and 50 epochs of 3,186 samples. The user's figures imply that size: 88.5 h for 50 epochs at
0.5 samples/s is 88.5 × 3600 × 0.5 / 50 = 3,186 samples per epoch. The measured table goes to
``docs/benchmarks.md`` (section ``gpu_whatif``) beside the user's predicted figures.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine, today, write_section  # noqa: E402
from trainer.bench import run_bench, train_command  # noqa: E402
from trainer.bench_report import (  # noqa: E402
    fmt_bytes,
    fmt_seconds,
    fmt_step,
    markdown,
    write_outputs,
)
from trainer.bench_results import OK, BenchReport  # noqa: E402

#: (row name, settings added by this row), cumulative
ROWS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "baseline",
        (
            ("TRAIN.OPTIM.TYPE", "adamw"),
            ("TRAIN.BATCH_SIZE", "1"),
            ("MODEL.VRT.USE_CHECKPOINT_ATTN", "true"),
            ("MODEL.VRT.USE_CHECKPOINT_FFN", "true"),
        ),
    ),
    ("+ 8-bit AdamW", (("TRAIN.OPTIM.TYPE", "adamw8bit"),)),
    ("+ batch 2", (("TRAIN.BATCH_SIZE", "2"),)),
    ("+ batch 3", (("TRAIN.BATCH_SIZE", "3"),)),
    (
        "+ no checkpointing",
        (("MODEL.VRT.USE_CHECKPOINT_ATTN", "false"), ("MODEL.VRT.USE_CHECKPOINT_FFN", "false")),
    ),
)

#: one shipped config per row (configs/deblur/), each equal to the baseline + that row's
#: cumulative settings (tests/test_config_errors.py checks it)
ROW_CONFIGS = tuple(
    f"configs/deblur/vrt_spike_{n}.yaml"
    for n in (
        "whatif1_baseline",
        "whatif2_adamw8bit",
        "whatif3_batch2",
        "whatif4_batch3",
        "whatif5_no_ckpt",
    )
)

#: the user's predicted figures (BRIEF.md): memory GB, step s, samples/s (3 GPUs), 50 epochs h
PREDICTED: tuple[tuple[float, float, float, float], ...] = (
    (32, 6.0, 0.5, 88.5),
    (23, 4.0, 1.5, 29.5),
    (26, 4.0, 1.5, 15.0),
    (29, 3.5, 2.6, 10.0),
    (34, 2.5, 3.6, 7.0),
)
WORLD = 3
EPOCHS = 50
EPOCH_SAMPLES = 3186  # 88.5 h × 3600 s × 0.5 samples/s / 50 epochs
FULL_CFG = "configs/deblur/vrt_spike_baseline.yaml"
TINY_CFG = "configs/deblur/vrt_spike_tiny.yaml"
COMMON = ("TRAIN.GRADIENT_ACCUMULATION_STEPS=1", "DATALOADER.NUM_WORKERS=2")
# the tiny model made smaller still, so the CPU dry run takes seconds per row
DRY = (
    "DATA.CROP_SIZE=16",
    "DATA.SYNTHETIC.HEIGHT=16",
    "DATA.SYNTHETIC.WIDTH=16",
    "DATA.SYNTHETIC.TRAIN_CLIPS=8",
    "DATA.SYNTHETIC.VAL_CLIPS=1",
    "DATA.CLIP_LEN=2",
    "MODEL.USE_SPIKE=false",
    "MODEL.VRT.DEPTHS=[1,1,1,1,1,1,1,1,1]",
    "MODEL.VRT.EMBED_DIMS=[8,8,8,8,8,8,8,8,8]",
    "MODEL.VRT.NUM_HEADS=[1,1,1,1,1,1,1,1,1]",
    "DATALOADER.NUM_WORKERS=0",
)


def cumulative_cases() -> list[tuple[tuple[str, str], ...]]:
    """Each row's full settings (the previous rows' plus its own; later values win)."""
    cases, acc = [], {}
    for _, adds in ROWS:
        acc.update(dict(adds))
        cases.append(tuple(acc.items()))
    return cases


def select_rows(rows: Sequence[int] | None) -> list[tuple[tuple[str, str], ...]]:
    """The cumulative cases of the given 1-based rows (all when None)."""
    cases = cumulative_cases()
    if rows is None:
        return cases
    bad = [r for r in rows if not 1 <= r <= len(cases)]
    if bad:
        raise SystemExit(f"gpu_whatif_check: --rows: expected 1..{len(cases)}, got {bad[0]}")
    return [cases[r - 1] for r in rows]


def side_by_side(report: BenchReport, rows: Sequence[int] | None = None) -> str:
    """Predicted vs measured, one line per row."""
    lines = [
        "| config | memory predicted | peak measured (alloc / reserved) | step predicted "
        "| step measured | samples/s predicted (3 GPUs) | samples/s measured ×3 "
        "| 50 epochs predicted | 50 epochs measured |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    idx = [r - 1 for r in rows] if rows else list(range(len(ROWS)))
    for i, r in zip(idx, report.results, strict=False):
        (name, _), pred = ROWS[i], PREDICTED[i]
        mem_p, step_p, sps_p, h_p = pred
        if r.status == OK:
            measured = [
                f"{fmt_bytes(r.mem_peak)} / {fmt_bytes(r.mem_reserved)}",
                fmt_step(r.step_ms),
                f"{r.samples_per_s * WORLD:.2f}" if r.samples_per_s else "—",
                fmt_seconds(r.total_s),
            ]
        else:
            measured = [
                fmt_bytes(r.mem_peak) if r.mem_peak else "—",
                r.outcome.replace("|", "\\|"),
                "—",
                "—",
            ]
        lines.append(
            f"| {name} | {mem_p:g} GB | {measured[0]} | {step_p:g} s | {measured[1]} | {sps_p:g} "
            f"| {measured[2]} | {h_p:g} h | {measured[3]} |"
        )
    return "\n".join(lines) + "\n"


def main(
    argv: Sequence[str] | None = None,
    command: Callable[[str, Sequence[str], str], list[str]] = train_command,
) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU, tiny model, 1+1 steps: check the machinery only",
    )
    p.add_argument(
        "--cfg", default=None, help=f"base config (default {FULL_CFG}; {TINY_CFG} with --dry-run)"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="measured steps per row (default 3; 1 dry)"
    )
    p.add_argument(
        "--warmup", type=int, default=None, help="warm-up steps per row (default 2; 1 dry)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=100.0,
        help="seconds per row before it is stopped (default 100)",
    )
    p.add_argument(
        "--out", default=None, help="bench.md/bench.json and logs (default runs/bench/gpu_whatif)"
    )
    p.add_argument(
        "--log-dir", default="runs/logs", help="log root of the runs (default runs/logs)"
    )
    p.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="run only these rows (1-based, each still cumulative; default all)",
    )
    p.add_argument(
        "--no-write",
        action="store_true",
        help="do not write docs/benchmarks.md (a dry run never does)",
    )
    args = p.parse_args(argv)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print(
                "gpu_whatif_check: no CUDA device (use --dry-run on a CPU machine)", file=sys.stderr
            )
            return 2
    dry = args.dry_run
    cfg = args.cfg or (TINY_CFG if dry else FULL_CFG)
    extra = [*COMMON, *(DRY if dry else ())]
    report = run_bench(
        cfg,
        select_rows(args.rows),
        steps=args.steps if args.steps is not None else (1 if dry else 3),
        warmup=args.warmup if args.warmup is not None else (1 if dry else 2),
        log_dir=args.log_dir,
        out=args.out or str(ROOT / "runs" / "bench" / ("gpu_whatif_dry" if dry else "gpu_whatif")),
        extra=extra,
        world_size=WORLD,
        epoch_samples=EPOCH_SAMPLES,
        epochs=EPOCHS,
        timeout=args.timeout,
        command=command,
        echo=lambda s: print(s, file=sys.stderr, flush=True),
    )
    write_outputs(report)
    dev = next((r.gpu_name or r.device for r in report.results if r.device), "?")
    text = (
        f"## The user's what-if table, measured "
        f"({'DRY RUN, tiny model on CPU' if dry else 'full model'})\n\n"
        f"{today()}, {dev}; host {machine()}. `benchmarks/gpu_whatif_check.py`: each row adds to "
        f"the one above; each is its own `trainer bench` process on `{cfg}` with synthetic data, "
        f"one micro-batch per step, {report.warmup} warm-up + {report.steps} measured steps. "
        f"Measured samples/s and 50-epoch times assume {WORLD} GPUs that each keep the measured "
        f"single-GPU speed, and {EPOCH_SAMPLES:,} samples per epoch (what the user's own figures "
        "imply). Predicted figures are the user's, never measured (their GB are probably what "
        "nvidia-smi showed, closer to our *reserved* than to peak *allocated*; ours are GiB).\n\n"
        + side_by_side(report, args.rows)
        + "\nThe bench table itself:\n\n"
        + markdown(report)
    )
    print(text)
    if not args.no_write and not dry:  # a dry run checks the machinery; its figures mean nothing
        write_section("gpu_whatif", text)
    return 0 if any(r.status == OK for r in report.results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
