"""What the framework callbacks cost a CPU training step, interleaved against no callback.

For Lightning (the tests' tiny LightningModule) and the Hugging Face Trainer (the tests'
random GPT-2), each round fits every variant once, in rotating order:

- ``none``: no stagewatch callback;
- ``empty``: a callback that does nothing (what the framework itself costs per callback);
- ``phases``: ``StagewatchCallback(depth=0)``: the phases and one record per step;
- ``modules``: ``StagewatchCallback(depth=2)`` (HF: ``depth=3``, GPT-2's blocks): phases
  and ``instrument``'s module regions.

Every variant carries the same tiny clock callback that reads the clock (``--clock wall``:
``perf_counter``; ``cpu``: the training thread's CPU time) at each optimizer step's end;
a step's time is the difference between two of those, the first ``--skip`` steps of each
fit left out. Reported: the median step per variant over all
rounds, and its ratio to ``none``. The records go to JSONL and the classic text log, as
by default (``--no-text-log``: JSONL only).

    python benchmarks/bench_callbacks.py [--rounds 5 --steps 40 --threads 1 --clock cpu]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = ("none", "empty", "phases", "modules")
CLOCK = {"name": "wall"}


def _clock() -> float:
    """The step clock: wall time, or the training thread's CPU time (``--clock cpu``: what
    the step costs the loop's thread, not the waits for a busy machine's cores)."""
    return time.perf_counter() if CLOCK["name"] == "wall" else time.thread_time()


LOGGER_KWARGS: dict[str, Any] = {"enable_console": False}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per fit")
    p.add_argument("--skip", type=int, default=3, help="first steps of each fit left out")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", choices=("lightning", "hf"), default=None)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument(
        "--no-text-log", action="store_true", help="JSONL records only (enable_file=False)"
    )
    return p.parse_args(argv)


def _lightning_fit(variant: str, steps: int, root: str) -> list[float]:
    import lightning as L

    from stagewatch.integrations.lightning import StagewatchCallback

    marks: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_end(self, *a: Any) -> None:
            marks.append(_clock())

    cbs: list[Any] = [Clock()]
    if variant == "empty":
        cbs.insert(0, L.Callback())
    elif variant != "none":
        depth = 0 if variant == "phases" else 2
        cbs.insert(0, StagewatchCallback(root, depth=depth, **LOGGER_KWARGS))
    _fit_with(cbs, steps)
    return marks


def _fit_with(callbacks: list[Any], steps: int) -> None:
    import lightning as L
    import torch
    from _lightning_job import TinyModule, loader

    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    torch.manual_seed(0)
    trainer.fit(TinyModule(), loader(64 * 4))


def _hf_fit(variant: str, steps: int, root: str) -> list[float]:
    from _hf_job import IdsDataset, tiny_gpt2
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from stagewatch.integrations.hf import StagewatchCallback

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a: Any, **k: Any) -> None:
            marks.append(_clock())

    cbs: list[Any] = [Clock()]
    if variant == "empty":
        cbs.insert(0, TrainerCallback())
    elif variant != "none":
        depth = 0 if variant == "phases" else 3
        cbs.insert(0, StagewatchCallback(root, depth=depth, **LOGGER_KWARGS))
    args = TrainingArguments(
        output_dir=os.path.join(root, "out"),
        max_steps=steps,
        per_device_train_batch_size=4,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=10**6,
        dataloader_num_workers=0,
    )
    Trainer(
        model=tiny_gpt2(), args=args, train_dataset=IdsDataset(n=4 * steps), callbacks=cbs
    ).train()
    return marks


def measure(
    fit: Callable[[str, int, str], list[float]], rounds: int, steps: int, skip: int
) -> dict[str, list[float]]:
    """Per-step ms of every variant, fits interleaved round by round (rotating order)."""
    out: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            k = r % len(VARIANTS)
            order = VARIANTS[k:] + VARIANTS[:k]
            for v in order:
                marks = fit(v, steps, os.path.join(tmp, f"{v}{r}"))
                d = [(b - a) * 1000.0 for a, b in itertools.pairwise(marks)]
                out[v].extend(d[skip:])
    return out


def table(name: str, per_step: dict[str, list[float]]) -> str:
    base = statistics.median(per_step["none"])
    rows = [
        f"| {name} ({CLOCK['name']}) | median step (ms) | vs none | added (µs/step) | steps |",
        "|---|---|---|---|---|",
    ]
    for v in VARIANTS:
        med = statistics.median(per_step[v])
        added = (med - base) * 1000.0
        rows.append(f"| {v} | {med:.3f} | {med / base:.3f} | {added:+.0f} | {len(per_step[v])} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    import logging
    import warnings

    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    LOGGER_KWARGS["enable_file"] = not args.no_text_log
    CLOCK["name"] = args.clock
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    cpu = platform.processor() or platform.machine()
    print(
        f"# bench_callbacks {time.strftime('%Y-%m-%d')} {cpu}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{args.threads} torch threads, load {os.getloadavg()[0]:.1f}, clock {args.clock}, "
        f"text log {'off' if args.no_text_log else 'on'}"
    )
    for name, fit in (("lightning", _lightning_fit), ("hf", _hf_fit)):
        if args.only and name != args.only:
            continue
        print(table(name, measure(fit, args.rounds, args.steps, args.skip)))
    print(f"# load after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
