"""What both framework callbacks share: the phase switch, the step tally, the logger and
``instrument`` set-up, and the guard that keeps every hook from raising into training."""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from stagewatch.timing.clean import WarnOnce
from stagewatch.timing.logger import (
    TimingLogger,
    get_global_timing_logger,
    set_global_timing_logger,
)

F = TypeVar("F", bound=Callable[..., Any])

# the phases, named as the rest of stagewatch names them (docs/own-model.md)
DATA_WAIT = "data/wait"
DATA_H2D = "data/h2d"
FORWARD = "forward"
BACKWARD = "backward"
OPTIMIZER = "optimizer"
EVAL = "eval"  # evaluation inside the fit: its module regions nest under it, not "forward"


def require(module: str, extra: str, integration: str) -> Any:
    """``import module``, or an ImportError whose one line names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{integration} needs {module.split('.')[0]} ({e}): pip install 'stagewatch[{extra}]'"
        ) from None


def safe(fn: F) -> F:
    """Run a hook; an exception becomes one warning per hook, never an error in training."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except Exception as e:
            self._warn(
                f"hook:{fn.__name__}",
                f"{type(self).__name__}.{fn.__name__} failed "
                f"({type(e).__name__}: {e}); timing goes on without it",
            )
            return None

    return wrapper  # type: ignore[return-value]


class Phases:
    """At most one phase open at a time (the training loop is sequential): ``switch(name)``
    ends the open phase and starts ``name`` (None: none). Times through the logger's
    thread-safe ``begin``/``end``, so a phase may end on autograd's thread."""

    __slots__ = ("_handle", "current", "log")

    def __init__(self, log: TimingLogger) -> None:
        self.log = log
        self.current: str | None = None
        self._handle: Any = None

    def switch(self, name: str | None) -> None:
        if name == self.current:
            return
        handle, self._handle = self._handle, None
        if handle is not None:
            self.log.end(handle)
        self.current = name
        if name is not None:
            self._handle = self.log.begin(name)

    def drop(self) -> None:
        """Close the open phase without recording its time (it was not that phase)."""
        self._handle = None
        self.current = None

    def restart(self, name: str) -> None:
        """Start ``name`` again from now, dropping the open phase's time unrecorded."""
        self.drop()
        self.switch(name)

    def end(self, name: str) -> None:
        """End phase ``name`` if it is the open one."""
        if self.current == name:
            self.switch(None)


class StepTally:
    """Samples, loss and learning rate gathered over an optimizer step's micro-batches.

    Losses are summed as detached tensors, so nothing waits for the GPU before ``step()``;
    ``scalars()`` converts once per step (``float()``: on a GPU that waits for the loss).
    """

    __slots__ = ("loss", "losses", "lr", "samples", "summed")

    def __init__(self) -> None:
        self.samples = 0
        self.loss: Any = None
        self.losses = 0
        self.lr: float | None = None
        self.summed = False  # each micro-batch's loss is already a share of the step's

    def add_loss(self, loss: Any) -> None:
        if loss is None:
            return
        detach = getattr(loss, "detach", None)
        # a copy: the framework may scale its loss in place after this hook (HF does)
        value = detach().clone() if detach is not None else loss
        self.loss = value if self.loss is None else self.loss + value
        self.losses += 1

    def scalars(self, mean: bool) -> dict[str, float]:
        """``loss`` (the mean over micro-batches when ``mean``, else their sum) and ``lr``."""
        out: dict[str, float] = {}
        if self.loss is not None:
            loss = float(self.loss)
            mean = mean and not self.summed and self.losses > 1
            out["loss"] = loss / self.losses if mean else loss
        if self.lr is not None:
            out["lr"] = self.lr
        return out


def batch_size(batch: Any, _depth: int = 0) -> int | None:
    """The first dimension of the first tensor in ``batch`` (nested lists, tuples, dicts)."""
    shape = getattr(batch, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) else None
    if _depth > 4:
        return None
    if isinstance(batch, Mapping):
        items: Any = batch.values()
    elif isinstance(batch, (list, tuple)):
        items = batch
    else:
        return None
    for item in items:
        n = batch_size(item, _depth + 1)
        if n is not None:
            return n
    return None


def first_lr(optimizer: Any) -> float | None:
    """The learning rate of the optimizer's first parameter group."""
    groups = getattr(optimizer, "param_groups", None)
    if not groups:
        return None
    lr = groups[0].get("lr")
    try:
        return float(lr)
    except (TypeError, ValueError):
        return None


def timing_device(device: Any) -> Any:
    """The logger's ``device`` for a framework's device: CUDA events on CUDA, else the CPU."""
    return device if getattr(device, "type", str(device)).startswith("cuda") else None


class CallbackBase:
    """Logger ownership and ``instrument`` for both callbacks."""

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        run_name: str,
        depth: int | None,
        logger: TimingLogger | None,
        include: Any,
        exclude: Any,
        log_loss: bool,
        logger_kwargs: Mapping[str, Any],
    ) -> None:
        self.log_dir = log_dir
        self.run_name = run_name
        self.depth = depth
        self.include = include
        self.exclude = exclude
        self.log_loss = log_loss
        self.logger_kwargs = dict(logger_kwargs)
        self.logger: TimingLogger | None = logger
        self._owns_logger = logger is None
        self._instrumented: Any = None
        self._set_global = False
        self._eval: Any = None
        self._phases: Phases | None = None
        self._tally = StepTally()
        self._warn_once = WarnOnce()

    def _warn(self, key: str, message: str) -> None:
        self._warn_once(key, message)

    def _open(
        self,
        model: Any,
        rank: int,
        world_size: int,
        device: Any,
        total_steps: int | None,
        samples_per_step: int | None = None,
    ) -> None:
        """Create the logger (unless one was given) on every rank, then ``instrument``."""
        if self.logger is None:
            kwargs: dict[str, Any] = {
                "run_name": self.run_name,
                "rank": rank,
                "world_size": world_size,
                "device": timing_device(device),
                "total_steps": total_steps,
                "samples_per_step": samples_per_step,
            }
            kwargs.update(self.logger_kwargs)
            self.logger = TimingLogger(self.log_dir, **kwargs)
            self._owns_logger = True
        if get_global_timing_logger() is None:
            # timed() regions in the user's own code (training_step, forward) land here too
            set_global_timing_logger(self.logger)
            self._set_global = True
        self._phases = Phases(self.logger)
        self._tally = StepTally()
        if (self.depth is None or self.depth > 0) and self.logger.enabled:
            try:
                self._instrument(model)
            except Exception as e:  # the phases still work without module regions
                self._warn("instrument", f"stagewatch.instrument failed ({e}): no module regions")

    def _instrument(self, model: Any) -> None:
        import stagewatch

        instrument = getattr(stagewatch, "instrument", None)
        if instrument is None:
            self._warn("instrument", "stagewatch.instrument is not available: no module regions")
            return
        self._instrumented = instrument(
            model,
            depth=self.depth,
            include=self.include,
            exclude=self.exclude,
            logger=self.logger,
        )

    def _eval_begin(self) -> None:
        """Open ``eval`` on this thread's region stack (instrument nests module regions
        under the region open there), once."""
        if self._eval is None and self.logger is not None:
            if self._phases is not None:
                if self._phases.current == DATA_WAIT:  # the wait was the evaluation's set-up
                    self._phases.drop()
                self._phases.switch(None)
            self._eval = self.logger.region(EVAL)
            self._eval.__enter__()

    def _eval_end(self) -> None:
        region, self._eval = self._eval, None
        if region is not None:
            region.__exit__(None, None, None)

    def _switch(self, name: str | None) -> None:
        if self._phases is not None:
            self._phases.switch(name)

    def _step(self, epoch: int | None, mean_loss: bool) -> None:
        """``step()`` for one optimizer step, then a fresh tally."""
        tally, self._tally = self._tally, StepTally()
        if self.logger is None:
            return
        self._switch(None)
        scalars = (
            tally.scalars(mean_loss)
            if self.log_loss
            else ({"lr": tally.lr} if tally.lr is not None else {})
        )
        self.logger.step(samples=tally.samples or None, epoch=epoch, scalars=scalars)

    def _close(self, status: str = "completed", error: BaseException | None = None) -> None:
        """Remove the module hooks and close the logger if this callback made it."""
        self._eval_end()
        handle, self._instrumented = self._instrumented, None
        if handle is not None:
            handle.remove()
        self._switch(None)
        self._phases = None
        if self._set_global:
            self._set_global = False
            if get_global_timing_logger() is self.logger:
                set_global_timing_logger(None)
        if self.logger is not None and self._owns_logger:
            self.logger.close(status, error)
            self.logger = None
