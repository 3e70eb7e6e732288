"""``trainer profile --cfg FILE [--steps N]``: the model's debug pass and the step breakdown.

Replaces the original ``test_timing_debug.py``: one forward pass with each region's time and
output shape (spike encoder and temporal attention per scale, VRT stages, fusions), then a
few real training steps with every phase timed (data, h2d, forward, loss, backward,
allreduce, optimizer), printed as the region tree with avg/min/max and shares of the step.
The steps are logged like a run (``--log-dir``), so ``tui replay`` can show them too.
"""

from __future__ import annotations

import argparse

from trainer.commands.train import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--steps", type=int, default=3, help="training steps to time (default 3)")
    parser.add_argument("--no-debug", action="store_true", help="skip the debug forward pass")


def run(args: argparse.Namespace) -> int:
    from stagewatch.errors import UsageError
    from trainer.config import load_config

    if args.steps < 1:
        raise UsageError("--steps must be at least 1")
    cfg = load_config(
        args.cfg,
        [
            *args.overrides,
            f"TRAIN.MAX_STEPS={args.steps}",
            "TRAIN.RESUME=null",
            "LOG.TIMING_CONSOLE=false",
            "LOG.ENABLE_TIMING_LOG=true",
        ],
    )
    import torch

    from trainer.data import build_datasets
    from trainer.distributed import init_distributed
    from trainer.models import build_model
    from trainer.models.debug import debug_forward, format_debug
    from trainer.train import train

    info = init_distributed(cfg.TRAIN.DEVICE)
    if not args.no_debug and info.is_main:
        torch.manual_seed(cfg.TRAIN.SEED)
        model = build_model(cfg.MODEL).to(info.device)
        train_ds, _ = build_datasets(cfg.DATA, cfg.MODEL.SPIKE.BINS)
        item = train_ds[0]
        rgb = item["blurry"][None].repeat(cfg.TRAIN.BATCH_SIZE, 1, 1, 1, 1).to(info.device)
        spikes = (
            item["spikes"][None].repeat(cfg.TRAIN.BATCH_SIZE, 1, 1, 1, 1).to(info.device)
            if cfg.MODEL.USE_SPIKE
            else None
        )
        debug_forward(model, rgb, spikes)  # warm-up: first-call allocations and kernels
        rows = debug_forward(model, rgb, spikes)
        print(
            f"Model debug forward ({cfg.file}, input {list(rgb.shape)}, one pass, "
            "synchronised per region, no gradients):"
        )
        print(format_debug(rows))
        print()
        del model
    result = train(
        cfg, log_dir=args.log_dir, write_checkpoints=False, validate_at_end=False, console=False
    )
    if info.is_main:
        print(
            f"\nTraining step breakdown over {result.steps} step(s), "
            f"rank 0 (shares of the measured step wall time):"
        )
        print(result.summary, end="")
        print(f"\nrecords: {result.run_dir}  (tui replay {result.run_dir})")
    return result.exit_code
