"""``trainer synth --out DIR``: a synthetic dataset in the GoPro-spike folder layout.

Writes ``DIR/{train,val}/seqNNNN/{blur,sharp}/NNNNNN.png`` and ``spike/NNNNNN.dat`` (one
spike stream per frame, ``TICKS_PER_FRAME`` spike frames each), so that the folder loader
(``DATA.TYPE: gopro_spike``, ``DATA.ROOT: DIR``) can be exercised end to end.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--cfg",
        metavar="FILE",
        default=None,
        help="take DATA.SYNTHETIC settings (size, ticks, motion, seed) from this config",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        dest="overrides",
        help="override a config value (with --cfg)",
    )
    parser.add_argument("--sequences", type=int, default=4, help="training sequences (default 4)")
    parser.add_argument(
        "--val-sequences", type=int, default=1, help="validation sequences (default 1)"
    )
    parser.add_argument("--frames", type=int, default=12, help="frames per sequence (default 12)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty folder")


def write_dataset(
    out: str, params: object, sequences: int, val_sequences: int, frames: int, echo: bool = False
) -> int:
    """Render and write the dataset; returns the number of frames written."""
    from trainer.data.dat import write_dat
    from trainer.data.png import write_png
    from trainer.data.synthetic import SceneClip, to_uint8

    n = 0
    for split, count in (("train", sequences), ("val", val_sequences)):
        for i in range(count):
            seq = os.path.join(out, split, f"seq{i:04d}")
            for sub in ("blur", "sharp", "spike"):
                os.makedirs(os.path.join(seq, sub), exist_ok=True)
            clip = SceneClip(params, split, i, frames).render()  # type: ignore[arg-type]
            for f in range(frames):
                name = f"{f:06d}"
                write_png(os.path.join(seq, "blur", name + ".png"), to_uint8(clip.blurry[f]))
                write_png(os.path.join(seq, "sharp", name + ".png"), to_uint8(clip.sharp[f]))
                write_dat(os.path.join(seq, "spike", name + ".dat"), clip.spikes[f])
                n += 1
            if echo:
                print(f"{seq}: {frames} frames", flush=True)
    return n


def run(args: argparse.Namespace) -> int:
    from stagewatch.errors import UsageError
    from trainer.config import Config, load_config
    from trainer.data import synth_params

    for name in ("sequences", "frames"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.val_sequences < 0:
        raise UsageError("--val-sequences must be >= 0")
    if args.overrides and not args.cfg:
        raise UsageError("--set needs --cfg")
    cfg = load_config(args.cfg, args.overrides) if args.cfg else Config()
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.force:
        raise UsageError(f"{args.out}: folder is not empty (use --force to write into it)")
    p = synth_params(cfg.DATA)
    n = write_dataset(args.out, p, args.sequences, args.val_sequences, args.frames, echo=True)
    print(
        f"wrote {n} frames ({p.height}x{p.width}, {p.ticks_per_frame} spike ticks per frame) "
        f"to {args.out}; train on it with --set DATA.TYPE=gopro_spike --set DATA.ROOT={args.out}"
    )
    return 0
