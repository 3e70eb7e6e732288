"""``trainer bench --cfg BASE --sweep "KEY=v1,v2" ... [--case "K=V K2=V2"] [--steps N]``."""

from __future__ import annotations

import argparse
import os

from stagewatch.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cfg", required=True, metavar="FILE", help="base YAML config")
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=v1,v2",
        help="values of one key (repeatable); every combination of all sweeps is run, "
        "e.g. --sweep TRAIN.OPTIM.TYPE=adamw,adamw8bit --sweep TRAIN.BATCH_SIZE=1,2,3",
    )
    parser.add_argument(
        "--case",
        action="append",
        default=[],
        metavar='"K=V K2=V2"',
        help="an explicit row of space-separated settings (repeatable, in order; '' = "
        "the base config); crossed with the sweeps when both are given",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        dest="overrides",
        help="a setting for every row (repeatable)",
    )
    parser.add_argument(
        "--steps", type=int, default=5, help="measured steps per row after the warm-up (default 5)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="warm-up steps per row, not measured (default 2)"
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default="runs/bench",
        help="where bench.md, bench.json and each row's process log go (default runs/bench)",
    )
    parser.add_argument(
        "--log-dir",
        metavar="DIR",
        default=None,
        help="log root of the runs (default: the config's LOG.LOG_DIR, runs/logs)",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=1,
        metavar="N",
        help="ranks assumed in the epoch-time projection (default 1)",
    )
    parser.add_argument(
        "--epoch-samples",
        type=int,
        default=None,
        metavar="N",
        help="training clips per epoch for the projection (default: from the config's data)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        metavar="N",
        help="epochs for the total-time projection (default TRAIN.EPOCHS)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop a row that runs longer (it is reported as failed)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the JSON instead of the Markdown table"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="run rows that trainer plan predicts will not fit in memory",
    )
    parser.add_argument(
        "--no-predict",
        action="store_true",
        help="skip the predicted peak per row (trainer plan's simulation)",
    )


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from trainer.bench import run_bench
    from trainer.bench_report import markdown, report_dict, write_outputs
    from trainer.bench_sweeps import check_keys, combinations, parse_case, parse_sweep

    if not os.path.isfile(args.cfg):
        raise UsageError(f"--cfg: config file not found: {args.cfg}")
    for name in ("world_size", "epoch_samples", "epochs"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    sweeps = [parse_sweep(s) for s in args.sweep]
    cases = [parse_case(c) for c in args.case]
    check_keys(sweeps, list(zip(args.case, cases, strict=True)))
    combos = combinations(sweeps, cases)
    log_dir = args.log_dir
    if log_dir is None:
        from trainer.config import load_config

        log_dir = load_config(args.cfg).LOG.LOG_DIR
    report = run_bench(
        args.cfg,
        combos,
        steps=args.steps,
        warmup=args.warmup,
        log_dir=log_dir,
        out=args.out,
        extra=args.overrides,
        world_size=args.world_size,
        epoch_samples=args.epoch_samples,
        epochs=args.epochs,
        timeout=args.timeout,
        echo=lambda s: print(s, file=sys.stderr, flush=True),
        predict=not args.no_predict,
        force=args.force,
    )
    paths = write_outputs(report)
    if args.json:
        json.dump(report_dict(report), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(markdown(report))
    if paths:
        print(
            f"wrote {paths[0]} and {paths[1]}; open a row's run with `tui replay {log_dir}/<run>`",
            file=sys.stderr,
        )
    if report.interrupted:
        return 130
    return 0 if any(r.status == "ok" for r in report.results) else 1
