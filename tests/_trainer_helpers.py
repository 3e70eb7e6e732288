"""Shared settings for the trainer tests: a micro model on tiny synthetic clips."""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "deblur" / "vrt_spike_tiny.yaml")

# a model and data small enough for a step well under a second on one CPU core
MICRO = [
    "DATA.CLIP_LEN=2",
    "DATA.CROP_SIZE=16",
    "DATA.SYNTHETIC.HEIGHT=24",
    "DATA.SYNTHETIC.WIDTH=24",
    "DATA.SYNTHETIC.TRAIN_CLIPS=8",
    "DATA.SYNTHETIC.VAL_CLIPS=2",
    "DATA.SYNTHETIC.TICKS_PER_FRAME=4",
    "MODEL.VRT.EMBED_DIMS=[8,8,8,8,8,8,8,8,8]",
    "MODEL.VRT.DEPTHS=[1,1,1,1,1,1,1,1,1]",
    "MODEL.VRT.NUM_HEADS=[1,1,1,1,1,1,1,1,1]",
    "MODEL.VRT.DEFORMABLE_GROUPS=2",
    "MODEL.SPIKE.WIDTH=8",
    "MODEL.SPIKE.TSA_HEADS=1",
    "MODEL.SPIKE.FUSION_HEADS=1",
    "MODEL.SPIKE.RES_BLOCKS=0",
    "MODEL.SPIKE.BINS=2",
    "TRAIN.BATCH_SIZE=1",
    "TRAIN.VAL.EVERY=0",
    "TRAIN.CHECKPOINT.EVERY=0",
    "LOG.TIMING_CONSOLE=false",
]


def records(path: str | os.PathLike[str]) -> list[dict]:
    from stagewatch.records import decode, encode

    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = decode(line)  # validates every line
            assert rec is not None
            assert encode(rec)  # and it re-encodes
            out.append(json.loads(line))
    return out


def env_for_subprocess() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("STAGEWATCH_RUN_ID", None)
    return env
