"""``trainer train --cfg FILE [--set KEY.PATH=VALUE ...] [--log-dir DIR] [--resume CKPT]``."""

from __future__ import annotations

import argparse
import os


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--cfg``, ``--set`` and ``--log-dir``, shared by train, profile and the benchmarks."""
    parser.add_argument("--cfg", required=True, metavar="FILE", help="YAML config file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        dest="overrides",
        help="override a config value (repeatable), e.g. --set TRAIN.BATCH_SIZE=3",
    )
    parser.add_argument(
        "--log-dir",
        metavar="DIR",
        default=None,
        help="log root for the timing files (default: LOG.LOG_DIR, runs/logs)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--resume",
        metavar="CKPT",
        default=None,
        help="checkpoint file, checkpoint or run folder, or 'auto' (the newest "
        "checkpoint of this config's newest run); overrides TRAIN.RESUME",
    )


def run(args: argparse.Namespace) -> int:
    from stagewatch.errors import ConfigError
    from trainer.config import apply_thread_default, check_log_dir, load_config, override_for

    overrides = list(args.overrides)
    resume_item = f"TRAIN.RESUME={args.resume}" if args.resume else None
    if resume_item:
        overrides.append(resume_item)

    def named(e: ConfigError) -> ConfigError:
        """The error naming the command-line option that set its key, if one did."""
        item = override_for(e.key, overrides)
        if item is None:
            return e
        where = "--resume" if item == resume_item else f"--set {item}"
        return ConfigError(e.key, e.detail, where)

    try:
        cfg = load_config(args.cfg, overrides)
    except ConfigError as e:
        raise named(e) from None
    if args.log_dir:
        check_log_dir(args.log_dir, "--log-dir")
    else:
        item = override_for("LOG.LOG_DIR", overrides)
        check_log_dir(cfg.LOG.LOG_DIR, f"--set {item}" if item else f"{cfg.file}: LOG.LOG_DIR")
    apply_thread_default(cfg)

    from trainer.train import train

    try:
        result = train(cfg, log_dir=args.log_dir)
    except ConfigError as e:  # a check that needs the data (e.g. the batch size)
        raise named(e) from None
    if result.exit_code == 0 and result.evals and os.environ.get("RANK", "0") == "0":
        last = result.evals[-1]
        print(
            f"done: {result.steps} steps, PSNR {last['psnr']:.2f} dB "
            f"(blurry input {last['psnr_blurry']:.2f}); logs in {result.run_dir}"
        )
    return result.exit_code
