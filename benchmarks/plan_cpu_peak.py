"""Measure the CPU memory peak of one real training step and compare with ``trainer plan``.

How the peak is measured (CPU has no allocator statistics): the process runs with
``MALLOC_MMAP_THRESHOLD_=65536``, so glibc serves every allocation of 64 KiB or more with
its own ``mmap`` and returns it to the system at ``free``; the resident set then follows the
live tensors. One warm-up step creates the optimizer state; the resident set is read, the
kernel's high-water mark is reset (``/proc/self/clear_refs``, value 5) and a second step
(forward, loss, backward, optimizer step, ``zero_grad``) runs; the growth of ``VmHWM`` over
the resident set before the step is the measured peak of what the step allocates.

The prediction compared with it is the same quantity: the plan's peak minus what exists
before the step (parameters, optimizer state and the input batch).

    MALLOC_MMAP_THRESHOLD_=65536 OMP_NUM_THREADS=1 python benchmarks/plan_cpu_peak.py \\
        --cfg configs/deblur/vrt_spike_tiny.yaml --set DATA.CROP_SIZE=64 ...

Prints one JSON object. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure(cfg_path: str, overrides: list[str]) -> dict[str, float]:
    import torch

    from trainer.config import load_config
    from trainer.losses import charbonnier
    from trainer.models import build_model
    from trainer.optim import build_optimizer
    from trainer.plan import config_shape, simulate

    torch.manual_seed(0)
    cfg = load_config(cfg_path, overrides)
    plan = simulate(cfg, device="cpu")
    shape = config_shape(cfg)
    model = build_model(cfg.MODEL)
    model.train()
    opt = build_optimizer(model, cfg.TRAIN)
    b, t, h, w = shape.batch, shape.clip, shape.height, shape.width
    rgb = torch.rand(b, t, 3, h, w)
    sharp = torch.rand(b, t, 3, h, w)
    spikes = torch.rand(b, t, cfg.MODEL.SPIKE.BINS, h, w) if cfg.MODEL.USE_SPIKE else None
    eps = cfg.LOSS.CHARBONNIER.EPS

    def step() -> None:
        out = model(rgb, spikes)
        loss = charbonnier(out, sharp, eps)
        del out
        loss.backward()
        del loss
        if cfg.TRAIN.MAX_GRAD_NORM > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.TRAIN.MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: optimizer state, lazily built caches
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    step()
    hwm = _status("VmHWM")
    m = plan.memory
    predicted = m["peak"] - m["parameters"] - m["optimizer_state"] - m["inputs"]
    return {
        "measured_step_bytes": hwm - before,
        "predicted_step_bytes": predicted,
        "predicted_peak": m["peak"],
        "rss_before": before,
        "saved_activations": m["saved_activations"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", required=True)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args(argv)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        print(
            "warning: MALLOC_MMAP_THRESHOLD_ is not set; freed memory may stay resident",
            file=sys.stderr,
        )
    print(json.dumps(measure(args.cfg, args.overrides)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
