"""``StagewatchCallback`` for Lightning: phases, module regions and one record per
optimizer step, with no code in the LightningModule.

    from stagewatch.integrations.lightning import StagewatchCallback
    trainer = L.Trainer(callbacks=[StagewatchCallback("runs/logs", run_name="mine")])

Phases (docs/own-model.md):

- ``data/wait``: the training loop fetching the next batch (Lightning's
  ``train_dataloader_next``);
- ``data/h2d``: the strategy's ``batch_to_device`` (``transfer_batch_to_device`` and
  ``on_after_batch_transfer``);
- ``forward``: ``training_step``; ``backward``: between ``on_before_backward`` and
  ``on_after_backward``; ``optimizer``: from ``on_before_optimizer_step`` to the end of
  the batch (the optimizer's update).

The loop's own timing points are seen through the trainer's profiler, whose ``start`` and
``stop`` this callback wraps for the fit (whatever profiler is configured keeps working).
Validation inside the fit is the region ``eval`` (module regions nest under it);
checkpoint writes and logging fall in no phase (the step's *unaccounted* time).
``step()`` runs at the end of every batch that stepped the optimizer, so with
``accumulate_grad_batches=N`` one record covers N batches. Needs ``pip install
'stagewatch[lightning]'``.
"""

from __future__ import annotations

import os
from typing import Any

from stagewatch.ddp import watch_if_ddp
from stagewatch.integrations._common import (
    BACKWARD,
    DATA_H2D,
    DATA_WAIT,
    FORWARD,
    OPTIMIZER,
    CallbackBase,
    batch_size,
    first_lr,
    require,
    safe,
)
from stagewatch.timing.logger import TimingLogger

_WHO = "stagewatch.integrations.lightning"
try:
    _pl = require("lightning.pytorch", "lightning", _WHO)
except ImportError:  # the older package name: a Callback must subclass the one in use
    try:
        _pl = require("pytorch_lightning", "lightning", _WHO)
    except ImportError:
        raise ImportError(f"{_WHO} needs lightning: pip install 'stagewatch[lightning]'") from None

__all__ = ["StagewatchCallback"]

_UNSEEN = object()  # an action name not looked at yet
_MAX_ACTIONS = 4096  # action names remembered (they are a fixed set; bounded anyway)


def _phase_of(action: str) -> str | None:
    """The phase a Lightning profiler action starts (None: not one of ours)."""
    if action.endswith(".train_dataloader_next"):
        return DATA_WAIT
    if action.startswith("[Strategy]"):
        if action.endswith(".batch_to_device"):
            return DATA_H2D
        if action.endswith(".training_step"):
            return FORWARD
    return None


class StagewatchCallback(_pl.Callback):  # type: ignore[misc,name-defined]
    """Times a Lightning fit: phases, per-module regions, one record per optimizer step.

    ``log_dir``/``run_name`` and ``logger_kwargs`` make a
    :class:`stagewatch.TimingLogger` on every rank at ``setup`` (rank and world size from
    the trainer; all ranks share one run folder), closed at the end of the fit;
    ``logger=`` uses yours instead (then you close it). ``depth``/``include``/``exclude``
    go to :func:`stagewatch.instrument` on the LightningModule (``depth=0``: no module
    regions; ``None``: the whole tree). ``log_loss``: record the step's loss (on a GPU,
    converting it waits for it once per step). Hooks never raise into training: a failure
    warns once.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] = "runs/logs",
        run_name: str = "lightning",
        *,
        depth: int | None = 2,
        include: Any = None,
        exclude: Any = None,
        logger: TimingLogger | None = None,
        log_loss: bool = True,
        **logger_kwargs: Any,
    ) -> None:
        super().__init__()
        self._sw = CallbackBase(
            log_dir, run_name, depth, logger, include, exclude, log_loss, logger_kwargs
        )
        self._profiler: Any = None
        self._action_phase: dict[str, str | None] = {}
        self._trainer: Any = None
        self._stepped = False

    @property
    def logger(self) -> TimingLogger | None:
        """The logger in use (None before ``setup`` and after the fit)."""
        return self._sw.logger

    def _warn(self, key: str, message: str) -> None:
        self._sw._warn(key, message)

    # ------------------------------------------------------------------ profiler actions

    def _wrap_profiler(self, trainer: Any) -> None:
        profiler = trainer.profiler
        start, stop = profiler.start, profiler.stop
        # Lightning profiles ~60 actions a step (every hook of every callback): one dict
        # lookup each, the action's phase worked out once
        phases = self._action_phase

        def timed_start(action_name: str) -> None:
            phase = phases.get(action_name, _UNSEEN)
            if phase is not None:
                self._on_action(action_name, phase, True)
            start(action_name)

        def timed_stop(action_name: str) -> None:
            stop(action_name)
            phase = phases.get(action_name, _UNSEEN)
            if phase is not None:
                self._on_action(action_name, phase, False)

        profiler.start, profiler.stop = timed_start, timed_stop
        self._profiler = profiler

    def _unwrap_profiler(self) -> None:
        profiler, self._profiler = self._profiler, None
        if profiler is not None:
            for name in ("start", "stop"):
                profiler.__dict__.pop(name, None)

    def _on_action(self, action: str, phase: Any, starting: bool) -> None:
        try:
            if phase is _UNSEEN:
                phase = _phase_of(action)
                if len(self._action_phase) < _MAX_ACTIONS:
                    self._action_phase[action] = phase
                if phase is None:
                    return
            if self._trainer is None or not self._trainer.training:
                return
            if starting:
                self._sw._switch(phase)
            elif phase == FORWARD:
                # training_step's end also ends a manual-optimization step's last phase
                self._sw._switch(None)
            elif self._sw._phases is not None:
                self._sw._phases.end(phase)
        except Exception as e:
            self._warn("action", f"timing {action!r} failed ({e}); ignored")

    # ------------------------------------------------------------------ fit lifecycle

    @safe
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
        total = getattr(trainer, "max_steps", -1)
        self._sw._open(
            pl_module,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            device=trainer.strategy.root_device,
            total_steps=total if isinstance(total, int) and total > 0 else None,
        )
        self._wrap_profiler(trainer)

    @safe
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self._sw.logger is not None:
            # the strategy has wrapped the module by now: DDP's all-reduce as comm/exposed
            watch_if_ddp(getattr(trainer.strategy, "model", None), self._sw.logger)
            self._sw.logger.mark_step_start()  # keep the set-up out of step 1

    @safe
    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self._sw._tally.samples += batch_size(batch) or 0

    @safe
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        self._sw._switch(BACKWARD)

    @safe
    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        if self._sw._phases is not None:
            self._sw._phases.end(BACKWARD)

    @safe
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self._sw._switch(OPTIMIZER)
        self._sw._tally.lr = first_lr(optimizer)
        self._stepped = True

    @safe
    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._sw._switch(None)
        if self._sw.log_loss:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            self._sw._tally.add_loss(loss if hasattr(loss, "detach") else None)
        if self._stepped:
            self._stepped = False
            # automatic optimization divides each batch's loss by the accumulation: sum them
            mean = not getattr(pl_module, "automatic_optimization", True)
            self._sw._step(trainer.current_epoch, mean_loss=mean)

    @safe
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._sw._eval_begin()

    @safe
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._sw._eval_end()

    @safe
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
        self._finish(status, None if status == "interrupted" else exception)

    @safe
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._finish("completed", None)

    def _finish(self, status: str, error: BaseException | None) -> None:
        self._unwrap_profiler()
        self._trainer = None
        self._sw._close(status, error)
