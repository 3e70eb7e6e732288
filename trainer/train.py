"""The training loop: one CPU, one GPU, or many through ``torchrun``.

:func:`train` sets everything up and runs :func:`train_step` until the planned number of
optimizer steps; the step is written to be read top to bottom. Every part of it is a timed
region of the timing core (``data``, ``h2d``, ``forward``, ``loss``, ``backward``,
``allreduce``, ``optimizer``, and ``validation``/``checkpoint`` when they happen).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from stagewatch.errors import ConfigError, UsageError
from stagewatch.records import make_run_id
from stagewatch.timing import TimingLogger, set_global_timing_logger, timed
from trainer import checkpoint as ckpt
from trainer.config import Config, check_log_dir
from trainer.data import build_datasets
from trainer.distributed import (
    DistInfo,
    GradSyncTimer,
    all_reduce_sum,
    broadcast_object,
    cleanup,
    gather_objects,
    init_distributed,
)
from trainer.losses import build_perceptual, charbonnier
from trainer.metrics import psnr, ssim
from trainer.models import build_model, set_flow_and_deform_trainable
from trainer.optim import build_optimizer, build_scheduler, optimizer_state_bytes
from trainer.progress import Progress


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start an epoch part-way (resume at a data position)."""

    def __init__(self, dataset: Dataset, *args: Any, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        """Epoch ``epoch``, without its first ``skip`` samples of this rank."""
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


@dataclass
class StopFlag:
    """Set by SIGINT/SIGTERM: the loop finishes the step, checkpoints and stops."""

    signum: int | None = None
    _old: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:  # asked twice: stop now
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: finishing this step, then checkpoint and stop "
            "(again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def restore(self) -> None:
        for s, old in self._old.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(s, old)
        self._old.clear()


#: step losses kept in :class:`TrainResult` (the newest; memory stays bounded on long runs)
LOSS_HISTORY = 4096


@dataclass
class TrainResult:
    status: str
    steps: int
    run_id: str
    run_dir: str
    losses: list[float]  # mean loss of the last LOSS_HISTORY steps of this process
    evals: list[dict[str, float]]
    checkpoint: str | None = None
    exit_code: int = 0
    summary: str = ""  # the timing logger's region table (avg/min/max, shares)
    optimizer_state_bytes: int = 0


@dataclass
class StepContext:
    """Everything one training step needs."""

    model: nn.Module  # the DDP wrapper when distributed
    optimizer: torch.optim.Optimizer
    scheduler: Any
    cfg: Config
    device: torch.device
    autocast_dtype: torch.dtype | None
    perceptual: nn.Module | None
    grad_sync: GradSyncTimer
    batches: BatchStream
    use_spike: bool


class BatchStream:
    """Micro-batches across epoch boundaries, remembering the data position for resume."""

    def __init__(
        self, loader: DataLoader, sampler: ResumableSampler, epoch: int, consumed: int
    ) -> None:
        self.loader, self.sampler = loader, sampler
        self.epoch, self.consumed = epoch, consumed  # consumed: batches of this epoch
        self.batch_size = loader.batch_size or 1
        self._it: Iterator[dict[str, torch.Tensor]] | None = None

    def next(self) -> dict[str, torch.Tensor]:
        while True:
            if self._it is None:
                self.sampler.set_position(self.epoch, self.consumed * self.batch_size)
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                self.epoch, self.consumed = self.epoch + 1, 0
                continue
            self.consumed += 1
            return batch

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}


# ----------------------------------------------------------------------------- the step


def compute_loss(ctx: StepContext, out: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    lcfg = ctx.cfg.LOSS
    loss = out.new_zeros((), dtype=torch.float32)
    if lcfg.CHARBONNIER.WEIGHT > 0:
        with timed("charbonnier"):
            loss = loss + lcfg.CHARBONNIER.WEIGHT * charbonnier(out, sharp, lcfg.CHARBONNIER.EPS)
    if ctx.perceptual is not None:
        with timed("perceptual"):
            loss = loss + lcfg.VGG_PERCEPTUAL.WEIGHT * ctx.perceptual(out, sharp).float()
    return loss


def train_step(ctx: StepContext) -> tuple[torch.Tensor, float | None]:
    """One optimizer step over ``GRADIENT_ACCUMULATION_STEPS`` micro-batches.

    Returns the mean loss (a device tensor, not synchronised) and the gradient norm.
    """
    tcfg = ctx.cfg.TRAIN
    accum = tcfg.GRADIENT_ACCUMULATION_STEPS
    amp = torch.autocast(
        ctx.device.type,
        dtype=ctx.autocast_dtype or torch.float32,
        enabled=ctx.autocast_dtype is not None,
    )
    total = torch.zeros((), device=ctx.device)
    for micro in range(accum):
        with timed("data"):
            batch = ctx.batches.next()
        with timed("h2d"):
            blurry = batch["blurry"].to(ctx.device, non_blocking=True)
            sharp = batch["sharp"].to(ctx.device, non_blocking=True)
            spikes = batch["spikes"].to(ctx.device, non_blocking=True) if ctx.use_spike else None
        # DDP: only the last micro-batch synchronises gradients
        last = micro == accum - 1
        no_sync = (
            ctx.model.no_sync()
            if isinstance(ctx.model, DDP) and not last
            else contextlib.nullcontext()
        )
        with no_sync:
            with timed("forward"), amp:
                out = ctx.model(blurry, spikes)
            with timed("loss"), amp:
                loss = compute_loss(ctx, out, sharp) / accum
            ctx.grad_sync.begin()  # "backward", then "allreduce" for what stays exposed
            loss.backward()
            ctx.grad_sync.end()
        total += loss.detach()
    with timed("optimizer"):
        grad_norm = None
        if tcfg.MAX_GRAD_NORM > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), tcfg.MAX_GRAD_NORM)
        ctx.optimizer.step()
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.scheduler.step()
    return total, grad_norm


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    use_spike: bool,
    info: DistInfo,
) -> dict[str, float]:
    """PSNR/SSIM of the model output and of the blurry input, over this rank's share,
    summed across ranks (each clip counted once)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    amp = torch.autocast(
        device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
    )
    for batch in loader:
        blurry = batch["blurry"].to(device)
        sharp = batch["sharp"].to(device)
        spikes = batch["spikes"].to(device) if use_spike else None
        with amp:
            out = model(blurry, spikes)
        out = out.float().clamp(0, 1)
        n = blurry.shape[0] * blurry.shape[1]  # frames
        sums += torch.stack(
            [
                psnr(out, sharp).sum(),
                ssim(out, sharp).sum(),
                psnr(blurry, sharp).sum(),
                ssim(blurry, sharp).sum(),
                torch.tensor(float(n), device=device),
            ]
        ).double()
    all_reduce_sum(sums, info)
    model.train(was_training)
    n = max(sums[4].item(), 1.0)
    m = (sums[:4] / n).tolist()
    return {
        "psnr": m[0],
        "ssim": m[1],
        "psnr_blurry": m[2],
        "ssim_blurry": m[3],
        "psnr_gain": m[0] - m[2],
    }


# ----------------------------------------------------------------------------- setup


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


def _seed_all(seed: int) -> None:
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


def _autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    amp = cfg.TRAIN.AMP
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


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


def _write_config(cfg: Config, run_dir: str) -> None:
    os.makedirs(run_dir, exist_ok=True)
    tmp = os.path.join(run_dir, f".config.yaml.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg.raw, f, sort_keys=False)
    os.replace(tmp, os.path.join(run_dir, "config.yaml"))


def train(
    cfg: Config,
    *,
    log_dir: str | None = None,
    resume: str | None = None,
    write_checkpoints: bool = True,
    validate_at_end: bool = True,
    console: bool | None = None,
) -> TrainResult:
    """Train as configured. ``resume`` overrides ``TRAIN.RESUME``; ``log_dir`` ``LOG.LOG_DIR``.

    On SIGINT/SIGTERM the current step finishes, a checkpoint is written and the run ends
    ``interrupted``; an exception ends it ``failed`` (with type and message) and is re-raised.
    """
    tcfg = cfg.TRAIN
    # a log root that is a file (or below one) would end in a traceback at the first write
    check_log_dir(
        log_dir or cfg.LOG.LOG_DIR, "--log-dir" if log_dir else f"{cfg.file}: LOG.LOG_DIR"
    )
    log_dir = log_dir or cfg.LOG.LOG_DIR
    stop = StopFlag()
    stop.install()  # before the timing logger, which then defers SIGTERM to us
    info = init_distributed(tcfg.DEVICE)
    try:
        return _run(cfg, info, log_dir, resume, stop, write_checkpoints, validate_at_end, console)
    finally:
        stop.restore()
        set_global_timing_logger(None)
        cleanup()


def _run(
    cfg: Config,
    info: DistInfo,
    log_dir: str,
    resume: str | None,
    stop: StopFlag,
    write_checkpoints: bool,
    validate_at_end: bool,
    console: bool | None,
) -> TrainResult:
    tcfg, device = cfg.TRAIN, info.device
    if tcfg.THREADS is not None:
        torch.set_num_threads(tcfg.THREADS)
    _seed_all(tcfg.SEED)  # same initial weights on every rank

    # --- data
    train_ds, val_ds = build_datasets(cfg.DATA, cfg.MODEL.SPIKE.BINS)
    sampler = ResumableSampler(
        train_ds,
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=cfg.DATALOADER.SHUFFLE,
        seed=tcfg.SEED,
        drop_last=True,
    )
    lkw = _loader_kwargs(cfg, device)
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

    # --- model, optimizer, schedule
    apply_tf32(tcfg.TF32, device)
    model = build_model(cfg.MODEL).to(device)
    if info.is_main and model.pretrained_report is not None:
        print(model.pretrained_report.format(), file=sys.stderr, flush=True)
    optimizer = build_optimizer(model, tcfg)
    scheduler = build_scheduler(optimizer, tcfg, total_steps)
    perceptual = build_perceptual(cfg.LOSS.VGG_PERCEPTUAL)
    if perceptual is not None:
        perceptual = perceptual.to(device)

    # --- resume
    step, epoch, consumed, run_id = 0, 0, 0, None
    path = ckpt.resolve_resume(resume or tcfg.RESUME, log_dir, cfg.name, tcfg.CHECKPOINT.DIR)
    if path is not None:
        state = ckpt.load_checkpoint(path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, run_id = int(state["step"]), state["run_id"]
        epoch, consumed = state["data"]["epoch"], state["data"]["consumed"]
        rngs = state.get("rng") or []
        if len(rngs) == info.world_size:
            ckpt.set_rng_state(rngs[info.rank])
        if step >= total_steps:
            raise UsageError(
                f"{path}: already at step {step} of {total_steps}; nothing to resume "
                "(raise TRAIN.MAX_STEPS or TRAIN.EPOCHS)"
            )
    else:
        _seed_all(tcfg.SEED * 1009 + info.rank)  # ranks differ in augmentation from here
    if run_id is None:
        run_id = broadcast_object(make_run_id(cfg.name) if info.is_main else None, info)
    run_dir = os.path.join(log_dir, run_id)
    ckpt_dir = tcfg.CHECKPOINT.DIR or os.path.join(run_dir, "checkpoints")

    # --- timing log (every rank writes its own file) and progress line
    samples_per_step = tcfg.BATCH_SIZE * tcfg.GRADIENT_ACCUMULATION_STEPS
    log_kwargs: dict[str, Any] = {}
    if console is not None:
        log_kwargs["enable_console"] = console
    log = TimingLogger.from_config(
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
            **(_flops_entry(cfg, device, step) if info.is_main else {}),
        },
        total_steps=total_steps,
        samples_per_step=samples_per_step,
        device=device,
        start_step=step,
        **log_kwargs,
    )
    set_global_timing_logger(log)
    progress = Progress(
        total_steps,
        step,
        cfg.LOG.PROGRESS_INTERVAL,
        enabled=info.is_main,
        world_size=info.world_size,
    )
    try:  # from here on, any exception ends the run with a run_end record
        if info.is_main:
            _write_config(cfg, run_dir)

        grad_sync = GradSyncTimer(log, info.world_size, device.type == "cuda")

        def wrap() -> nn.Module:
            """DDP over the parameters that currently train (re-done when the flow unfreezes)."""
            if not info.distributed:
                return model
            ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
            grad_sync.attach(ddp)
            return ddp

        # flow + deformable alignment frozen early (VRT recipe): no gradients at all, so their
        # backward is skipped too
        flow_frozen = step < tcfg.FREEZE_FLOW_STEPS
        if flow_frozen:
            set_flow_and_deform_trainable(model, False)
        ddp_model = wrap()
        ctx = StepContext(
            ddp_model,
            optimizer,
            scheduler,
            cfg,
            device,
            _autocast_dtype(cfg, device),
            perceptual,
            grad_sync,
            BatchStream(loader, sampler, epoch, consumed),
            cfg.MODEL.USE_SPIKE,
        )

        result = TrainResult("completed", step, run_id, run_dir, [], [])

        def save(at: int) -> None:
            rngs = gather_objects(ckpt.rng_state(), info)
            if info.is_main and write_checkpoints:
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": at,
                    "run_id": run_id,
                    "data": ctx.batches.position(),
                    "rng": rngs,
                    "config": cfg.raw,
                    "world_size": info.world_size,
                }
                result.checkpoint = ckpt.save_checkpoint(
                    ckpt_dir, at, state, tcfg.CHECKPOINT.KEEP_LAST
                )

        def run_validation(at: int) -> None:
            metrics = validate(model, val_loader, device, ctx.autocast_dtype, ctx.use_spike, info)
            result.evals.append({"step": at, **metrics})
            if info.is_main:
                log.log_eval(at, metrics)
                progress.message(
                    f"eval step {at}: PSNR {metrics['psnr']:.2f} dB (blurry input "
                    f"{metrics['psnr_blurry']:.2f}), SSIM {metrics['ssim']:.4f}"
                )

        model.train()
        log.mark_step_start()
        while step < total_steps:
            loss, grad_norm = train_step(ctx)
            step += 1
            # one small collective per step: mean loss over ranks and the stop request
            flags = torch.stack(
                [loss.float(), torch.tensor(float(stop.signum is not None), device=device)]
            )
            all_reduce_sum(flags, info)
            loss_v, stopping = flags[0].item() / info.world_size, flags[1].item() > 0
            result.losses.append(loss_v)
            if len(result.losses) > LOSS_HISTORY:
                del result.losses[0]
            comm_ms = grad_sync.collect()
            v_every, c_every = tcfg.VAL.EVERY, tcfg.CHECKPOINT.EVERY
            if (v_every and step % v_every == 0) or (step == total_steps and validate_at_end):
                with timed("validation"):
                    run_validation(step)
            if write_checkpoints and (
                stopping or step == total_steps or (c_every and step % c_every == 0)
            ):
                with timed("checkpoint"):
                    save(step)
            scalars = {"loss": loss_v, "lr": scheduler.lr_at(step - 1)}
            if grad_norm is not None:
                scalars["grad_norm"] = float(grad_norm)
            if info.distributed:
                scalars["comm_ms"] = comm_ms
            progress.clear()  # the timing panel may draw now
            log.step(samples=samples_per_step, epoch=ctx.batches.epoch, scalars=scalars)
            progress.update(step, samples_per_step, loss_v, scalars["lr"])
            if flow_frozen and step >= tcfg.FREEZE_FLOW_STEPS:
                flow_frozen = False
                set_flow_and_deform_trainable(model, True)
                ctx.model = ddp_model = wrap()
            if not math.isfinite(loss_v):
                raise FloatingPointError(f"loss is {loss_v} at step {step}")
            if stopping:
                result.status = "interrupted"
                sig = stop.signum or signal.SIGTERM
                result.exit_code = 128 + int(sig)
                break
    except BaseException as e:
        progress.finish()
        # SystemExit: e.g. a SIGTERM handler of the program calling sys.exit; the run did not finish
        status = "interrupted" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "failed"
        log.close(status, None if status == "interrupted" else e)
        raise
    progress.finish()
    log.close(result.status)
    result.steps = step
    result.summary = log.format_summary() if log.enabled else ""
    result.optimizer_state_bytes = optimizer_state_bytes(optimizer)
    return result
