"""The training loop: one CPU, one GPU, or many through ``torchrun``.

:func:`train` sets everything up (:mod:`trainer.train_setup`, resuming through
:mod:`trainer.train_checkpoint`) and runs :func:`~trainer.train_step.train_step` until the
planned number of optimizer steps, validating (:mod:`trainer.train_eval`) and checkpointing
between steps. Every part of a step is a timed region of the timing core (``data``, ``h2d``,
``forward``, ``loss``, ``backward``, ``allreduce``, ``optimizer``), and so are
``validation`` and ``checkpoint`` when they happen.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from stagewatch.records import make_run_id
from stagewatch.timing import TimingLogger, set_global_timing_logger, timed
from trainer import train_checkpoint
from trainer.config import Config, check_log_dir
from trainer.distributed import (
    DistInfo,
    GradSyncTimer,
    all_reduce_sum,
    broadcast_object,
    cleanup,
    init_distributed,
)
from trainer.models import set_flow_and_deform_trainable
from trainer.optim import optimizer_state_bytes
from trainer.progress import Progress
from trainer.train_eval import validate
from trainer.train_setup import (
    autocast_dtype,
    build_data,
    build_training,
    open_timing_log,
    seed_all,
    write_config,
)
from trainer.train_step import BatchStream, StepContext, train_step


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
    seed_all(tcfg.SEED)  # same initial weights on every rank
    data = build_data(cfg, info)
    model, optimizer, scheduler, perceptual = build_training(cfg, info, data.total_steps)
    start = train_checkpoint.restore(
        cfg, resume, log_dir, model, optimizer, scheduler, info, data.total_steps
    )
    run_id = start.run_id
    if run_id is None:
        run_id = broadcast_object(make_run_id(cfg.name) if info.is_main else None, info)
    run_dir = os.path.join(log_dir, run_id)
    ckpt_dir = tcfg.CHECKPOINT.DIR or os.path.join(run_dir, "checkpoints")
    log = open_timing_log(cfg, info, log_dir, run_id, model, data.total_steps, start.step, console)
    set_global_timing_logger(log)
    progress = Progress(
        data.total_steps,
        start.step,
        cfg.LOG.PROGRESS_INTERVAL,
        enabled=info.is_main,
        world_size=info.world_size,
        max_minutes=tcfg.MAX_MINUTES,
    )
    try:  # from here on, any exception ends the run with a run_end record
        if info.is_main:
            write_config(cfg, run_dir)
        grad_sync = GradSyncTimer(log, info.world_size, device.type == "cuda")
        # flow + deformable alignment frozen early (VRT recipe): no gradients at all, so their
        # backward is skipped too
        flow_frozen = start.step < tcfg.FREEZE_FLOW_STEPS
        if flow_frozen:
            set_flow_and_deform_trainable(model, False)
        ctx = StepContext(
            _wrap(model, info, grad_sync),
            optimizer,
            scheduler,
            cfg,
            device,
            autocast_dtype(cfg, device),
            perceptual,
            grad_sync,
            BatchStream(data.loader, data.sampler, start.epoch, start.consumed),
            cfg.MODEL.USE_SPIKE,
        )
        result = TrainResult("completed", start.step, run_id, run_dir, [], [])
        loop = _Loop(
            ctx, model, info, data.val_loader, log, progress, stop, result, ckpt_dir, flow_frozen
        )
        result.steps = loop.run(start.step, data.total_steps, write_checkpoints, validate_at_end)
    except BaseException as e:
        progress.finish()
        # SystemExit: e.g. a SIGTERM handler of the program calling sys.exit; the run did not finish
        status = "interrupted" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "failed"
        log.close(status, None if status == "interrupted" else e)
        raise
    progress.finish()
    log.close(result.status)
    result.summary = log.format_summary() if log.enabled else ""
    result.optimizer_state_bytes = optimizer_state_bytes(optimizer)
    return result


def _wrap(model: nn.Module, info: DistInfo, grad_sync: GradSyncTimer) -> nn.Module:
    """DDP over the parameters that currently train (re-done when the flow unfreezes)."""
    if not info.distributed:
        return model
    device = info.device
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    grad_sync.attach(ddp)
    return ddp


@dataclass
class _Loop:
    """The optimizer steps of a run and what happens between them: the mean loss and the stop
    request across ranks, validation, checkpoints, the step record, the flow unfreeze."""

    ctx: StepContext
    model: nn.Module  # unwrapped; ctx.model is the DDP wrapper when distributed
    info: DistInfo
    val_loader: DataLoader
    log: TimingLogger
    progress: Progress
    stop: StopFlag
    result: TrainResult
    ckpt_dir: str
    flow_frozen: bool

    def run(
        self, step: int, total_steps: int, write_checkpoints: bool, validate_at_end: bool
    ) -> int:
        """Steps after ``step`` up to ``total_steps``, fewer when stopped; the last one done."""
        tcfg = self.ctx.cfg.TRAIN
        v_every, c_every = tcfg.VAL.EVERY, tcfg.CHECKPOINT.EVERY
        minutes = tcfg.MAX_MINUTES
        deadline = None if minutes is None else time.monotonic() + 60.0 * minutes
        self.model.train()
        self.log.mark_step_start()
        while step < total_steps:
            loss, grad_norm = train_step(self.ctx)
            step += 1
            time_up = deadline is not None and time.monotonic() >= deadline
            loss_v, stopping, time_up = self._mean_loss_and_stop(loss, time_up)
            self.result.losses.append(loss_v)
            if len(self.result.losses) > LOSS_HISTORY:
                del self.result.losses[0]
            comm_ms = self.ctx.grad_sync.collect()
            last = step == total_steps or (time_up and not stopping)  # TRAIN.MAX_MINUTES
            if (v_every and step % v_every == 0) or (last and validate_at_end):
                with timed("validation"):
                    self._validate(step)
            if write_checkpoints and (stopping or last or (c_every and step % c_every == 0)):
                with timed("checkpoint"):
                    self._save(step)
            self._record(step, loss_v, grad_norm, comm_ms)
            if self.flow_frozen and step >= tcfg.FREEZE_FLOW_STEPS:
                self.flow_frozen = False
                set_flow_and_deform_trainable(self.model, True)
                self.ctx.model = _wrap(self.model, self.info, self.ctx.grad_sync)
            if not math.isfinite(loss_v):
                raise FloatingPointError(f"loss is {loss_v} at step {step}")
            if stopping:
                self.result.status = "interrupted"
                sig = self.stop.signum or signal.SIGTERM
                self.result.exit_code = 128 + int(sig)
                break
            if last:
                break  # the time limit: the run is complete (its planned steps not all done)
        return step

    def _mean_loss_and_stop(
        self, loss: torch.Tensor, time_up: bool = False
    ) -> tuple[float, bool, bool]:
        # one small collective per step: mean loss over ranks, the stop request and the time
        # limit (any rank's clock ends it for all, so no rank waits in a collective alone)
        dev = self.info.device
        stopping = torch.tensor(float(self.stop.signum is not None), device=dev)
        flags = torch.stack([loss.float(), stopping, torch.tensor(float(time_up), device=dev)])
        all_reduce_sum(flags, self.info)
        return flags[0].item() / self.info.world_size, flags[1].item() > 0, flags[2].item() > 0

    def _validate(self, at: int) -> None:
        ctx, info = self.ctx, self.info
        metrics = validate(
            self.model, self.val_loader, info.device, ctx.autocast_dtype, ctx.use_spike, info
        )
        self.result.evals.append({"step": at, **metrics})
        if info.is_main:
            self.log.log_eval(at, metrics)
            self.progress.message(
                f"eval step {at}: PSNR {metrics['psnr']:.2f} dB (blurry input "
                f"{metrics['psnr_blurry']:.2f}), SSIM {metrics['ssim']:.4f}"
            )

    def _save(self, at: int) -> None:
        path = train_checkpoint.save(
            self.ctx, self.model, at, self.result.run_id, self.info, self.ckpt_dir
        )
        if path is not None:
            self.result.checkpoint = path

    def _record(self, step: int, loss_v: float, grad_norm: float | None, comm_ms: float) -> None:
        """The step record of the timing log (with its scalars) and the progress line."""
        tcfg = self.ctx.cfg.TRAIN
        samples_per_step = tcfg.BATCH_SIZE * tcfg.GRADIENT_ACCUMULATION_STEPS
        scalars = {"loss": loss_v, "lr": self.ctx.scheduler.lr_at(step - 1)}
        if grad_norm is not None:
            scalars["grad_norm"] = float(grad_norm)
        if self.info.distributed:
            scalars["comm_ms"] = comm_ms
        self.progress.clear()  # the timing panel may draw now
        self.log.step(samples=samples_per_step, epoch=self.ctx.batches.epoch, scalars=scalars)
        self.progress.update(step, samples_per_step, loss_v, scalars["lr"])
