"""``trainer plan --cfg FILE [--set K=V ...] [--json] [--gpu NAME_OR_GIB] [--device cuda|cpu]``.

Predicts FLOPs and memory of one training step per region of the model, without a GPU and
without real tensors (the meta device); see ``trainer.plan`` and docs/plan.md.
"""

from __future__ import annotations

import argparse
import json

from stagewatch.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cfg", required=True, metavar="FILE", help="training config (YAML)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        dest="overrides",
        help="override a setting (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--gpu",
        metavar="NAME_OR_GIB",
        default=None,
        help="say whether the step fits this GPU (H200, H100, A100, A100-40, "
        "L40S, RTX4090, or a memory size in GiB such as 80) and the largest "
        "batch per checkpointing setting",
    )
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="whose kernels and autocast rules to simulate (default cuda; cpu predicts a CPU run)",
    )


def run(args: argparse.Namespace) -> int:
    from stagewatch.gpus import GPUS, parse_gpu
    from trainer.config import load_config

    gpu = None
    if args.gpu is not None:
        try:
            gpu = parse_gpu(args.gpu)
        except ValueError as e:
            raise UsageError(f"--gpu: {e}") from None
    cfg = load_config(args.cfg, args.overrides)
    from trainer.plan import fit, format_plan, simulate

    arch = gpu.arch if gpu is not None else GPUS["H200"].arch
    plan = simulate(cfg, device=args.device, arch=arch)
    if gpu is not None:
        plan.fits = fit(cfg, gpu, plan, device=args.device)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        print(format_plan(plan))
    return 0
