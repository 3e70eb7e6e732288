"""``trainer``: train, profile and benchmark the VRT + spike deblurring model."""

from __future__ import annotations

from stagewatch.cli import run_cli

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("trainer.commands.train", "train a model (also under torchrun)"),
    "profile": ("trainer.commands.profile", "run a few steps and print the full breakdown"),
    "info": ("trainer.commands.info", "parameter counts, shapes and region tree of a config"),
    "synth": ("trainer.commands.synth", "write a synthetic dataset in the GoPro-spike layout"),
    "bench": ("trainer.commands.bench", "measured what-if table over config sweeps"),
    "plan": ("trainer.commands.plan", "predicted FLOPs and memory per region, before a run"),
    "demo": ("trainer.commands.demo", "CPU demo: tiny training with the monitor on it"),
}


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        "trainer",
        __doc__.splitlines()[0],
        COMMANDS,
        argv,
        install_hint="install the trainer's extra: pip install 'stagewatch[train]'",
    )
