"""Setting a training run up: seeds and device options, the data loaders, the model with
its optimizer and schedule, and the timing log with what its run_start record carries."""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Subset

from stagewatch.errors import ConfigError, UsageError
from stagewatch.timing import TimingLogger
from trainer.config import Config
from trainer.data import build_datasets
from trainer.distributed import DistInfo
from trainer.losses import build_perceptual
from trainer.models import VRTWithSpike, build_model
from trainer.optim import build_optimizer, build_scheduler
from trainer.train_step import ResumableSampler

# ----------------------------------------------------------------------------- device


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random number generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def apply_tf32(enabled: bool, device: torch.device) -> None:
    """``TRAIN.TF32`` on CUDA: true puts fp32 matmuls and cuDNN convolutions on TF32 tensor
    cores; false keeps PyTorch's defaults (fp32 matmuls exact, cuDNN's own TF32 choice)."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = enabled
    if enabled:
        torch.backends.cudnn.allow_tf32 = True


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """The autocast dtype that ``TRAIN.AMP`` asks for on ``device`` (None: fp32)."""
    amp = cfg.TRAIN.AMP
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


# ----------------------------------------------------------------------------- data


def _loader_kwargs(cfg: Config, device: torch.device) -> dict[str, Any]:
    d = cfg.DATALOADER
    kw: dict[str, Any] = {
        "num_workers": d.NUM_WORKERS,
        "pin_memory": d.PIN_MEMORY and device.type == "cuda",
    }
    if d.NUM_WORKERS > 0:
        kw["persistent_workers"] = d.PERSISTENT_WORKERS
        kw["prefetch_factor"] = d.PREFETCH_FACTOR
    return kw


def plan_steps(
    cfg: Config, batches_per_epoch: int, clips_per_rank: int | None = None
) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps of the run).

    ``clips_per_rank``: training clips one rank gets per epoch (names the right key when
    not even one batch fits)."""
    t = cfg.TRAIN
    per_epoch = batches_per_epoch // t.GRADIENT_ACCUMULATION_STEPS
    if batches_per_epoch < 1:
        clips = (
            f"the {clips_per_rank} training clip(s)"
            if clips_per_rank is not None
            else "the training clips"
        )
        raise ConfigError(
            "TRAIN.BATCH_SIZE",
            f"{t.BATCH_SIZE} is more than {clips} each rank gets per epoch: not one batch fits "
            "(use a smaller batch, or more clips)",
            cfg.file,
        )
    if per_epoch < 1:
        raise UsageError(
            f"{cfg.file or 'config'}: the training set gives {batches_per_epoch} batch(es) per "
            f"epoch and rank, fewer than TRAIN.GRADIENT_ACCUMULATION_STEPS "
            f"({t.GRADIENT_ACCUMULATION_STEPS}): use more clips or a smaller batch"
        )
    total = per_epoch * t.EPOCHS
    if t.MAX_STEPS is not None:
        total = min(total, t.MAX_STEPS)
    return per_epoch, total


@dataclass
class TrainData:
    """One rank's training and validation loaders, and the length of the run."""

    loader: DataLoader
    sampler: ResumableSampler
    val_loader: DataLoader
    total_steps: int


def build_data(cfg: Config, info: DistInfo) -> TrainData:
    """This rank's share of the training clips (resumable) and of the validation clips."""
    tcfg = cfg.TRAIN
    train_ds, val_ds = build_datasets(cfg.DATA, cfg.MODEL.SPIKE.BINS)
    sampler = ResumableSampler(
        train_ds,
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=cfg.DATALOADER.SHUFFLE,
        seed=tcfg.SEED,
        drop_last=True,
    )
    lkw = _loader_kwargs(cfg, info.device)
    gen = torch.Generator().manual_seed(tcfg.SEED * 1009 + info.rank)
    loader = DataLoader(
        train_ds, batch_size=tcfg.BATCH_SIZE, sampler=sampler, drop_last=True, generator=gen, **lkw
    )
    val_idx = list(range(len(val_ds)))
    if tcfg.VAL.MAX_CLIPS is not None:
        val_idx = val_idx[: tcfg.VAL.MAX_CLIPS]
    val_loader = DataLoader(
        Subset(val_ds, val_idx[info.rank :: info.world_size]),
        batch_size=tcfg.VAL.BATCH_SIZE,
        shuffle=False,
        num_workers=min(cfg.DATALOADER.NUM_WORKERS, 2),
        pin_memory=lkw["pin_memory"],
        generator=torch.Generator(),
    )  # leaves the global RNG alone
    batches_per_epoch = len(sampler) // tcfg.BATCH_SIZE
    _, total_steps = plan_steps(cfg, batches_per_epoch, len(sampler))
    return TrainData(loader, sampler, val_loader, total_steps)


# ----------------------------------------------------------------------------- model


def build_training(
    cfg: Config, info: DistInfo, total_steps: int
) -> tuple[VRTWithSpike, torch.optim.Optimizer, Any, nn.Module | None]:
    """(model, optimizer, LR schedule, perceptual loss or None) on this rank's device."""
    tcfg, device = cfg.TRAIN, info.device
    apply_tf32(tcfg.TF32, device)
    model = build_model(cfg.MODEL).to(device)
    if info.is_main and model.pretrained_report is not None:
        print(model.pretrained_report.format(), file=sys.stderr, flush=True)
    optimizer = build_optimizer(model, tcfg)
    scheduler = build_scheduler(optimizer, tcfg, total_steps)
    perceptual = build_perceptual(cfg.LOSS.VGG_PERCEPTUAL)
    if perceptual is not None:
        perceptual = perceptual.to(device)
    return model, optimizer, scheduler, perceptual


# ----------------------------------------------------------------------------- records


def _param_counts(model: nn.Module) -> dict[str, int]:
    """Parameter counts for the run_start record (the advice estimates optimizer state)."""
    params = list(model.parameters())
    return {
        "TOTAL": sum(p.numel() for p in params),
        "TRAINABLE": sum(p.numel() for p in params if p.requires_grad),
    }


def _flops_entry(cfg: Config, device: torch.device, start_step: int) -> dict[str, Any]:
    """``{"FLOPS": ...}`` for the run_start record: FLOPs per step by region, counted once on
    the meta device (trainer.plan), so the monitor can show achieved TFLOP/s and MFU.
    Empty when timing is off; a failure costs only the figures, never the run."""
    if not cfg.LOG.ENABLE_TIMING_LOG:
        return {}
    try:
        from trainer.plan import region_flops_for_run_start

        frozen = start_step < cfg.TRAIN.FREEZE_FLOW_STEPS
        return {"FLOPS": region_flops_for_run_start(cfg, device.type, flow_frozen=frozen)}
    except Exception as e:  # a planning gap must not stop training
        print(f"warning: FLOPs per region not counted ({type(e).__name__}: {e})", file=sys.stderr)
        return {}


def open_timing_log(
    cfg: Config,
    info: DistInfo,
    log_dir: str,
    run_id: str,
    model: nn.Module,
    total_steps: int,
    start_step: int,
    console: bool | None,
) -> TimingLogger:
    """The run's timing logger (every rank writes its own file); its run_start record carries
    the configuration, the parameter counts and, on rank 0, the FLOPs per region."""
    tcfg = cfg.TRAIN
    log_kwargs: dict[str, Any] = {}
    if console is not None:
        log_kwargs["enable_console"] = console
    return TimingLogger.from_config(
        cfg.raw.get("LOG") or {},
        config_file=cfg.file,
        log_dir=log_dir,
        run_id=run_id,
        run_name=cfg.name,
        rank=info.rank,
        world_size=info.world_size,
        # FLOPs counted on rank 0 only (the monitor reads rank 0's run_start): seconds of CPU
        # per rank for the full model, the same figures on every rank
        config={
            **cfg.raw,
            "PARAMS": _param_counts(model),
            **(_flops_entry(cfg, info.device, start_step) if info.is_main else {}),
        },
        # a time-limited run (TRAIN.MAX_MINUTES) ends before its planned steps: no step count
        # to promise (the monitor would show a wrong ETA)
        total_steps=None if tcfg.MAX_MINUTES is not None else total_steps,
        samples_per_step=tcfg.BATCH_SIZE * tcfg.GRADIENT_ACCUMULATION_STEPS,
        device=info.device,
        start_step=start_step,
        **log_kwargs,
    )


def write_config(cfg: Config, run_dir: str) -> None:
    """The run's configuration as ``config.yaml`` in its folder (temp file, then rename)."""
    os.makedirs(run_dir, exist_ok=True)
    tmp = os.path.join(run_dir, f".config.yaml.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg.raw, f, sort_keys=False)
    os.replace(tmp, os.path.join(run_dir, "config.yaml"))
