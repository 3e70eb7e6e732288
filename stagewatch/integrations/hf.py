"""``StagewatchCallback`` for the Hugging Face ``Trainer``: phases, module regions and one
record per optimizer step, with no change to the training code.

    from stagewatch.integrations.hf import StagewatchCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[StagewatchCallback("runs/logs", run_name="mine")])

What the Trainer lets a callback see, and so what each phase holds (docs/own-model.md):

- ``eval``: an evaluation between steps, from its first forward to ``on_evaluate``
  (module regions nest under it).
- ``data/wait``: each wait for a batch inside the training loader (accelerate's prepared
  loader, the Trainer's default: its ``base_dataloader.__iter__`` is timed for the run).
  accelerate's copy of the batch to the device and the Trainer's count of label tokens
  (under DDP a gather across ranks) fall between these waits and are in no phase. With
  another loader (or the rest of a resumed epoch) it is the window from the end of the
  previous step (after its logging, evaluation and saving, each seen through its callback
  event) to ``on_step_begin``, which holds those too.
- ``data/h2d``: from ``on_step_begin`` (or the previous micro-batch) to the model's
  forward: the Trainer's own ``_prepare_inputs`` copy (near zero when accelerate already
  placed the batch).
- ``forward``: the model's forward (hooks on the top module); ``backward``: from the end
  of the forward (loss post-processing included) to the end of autograd's backward pass,
  seen by a gradient hook on the output's loss (else its first output needing a gradient);
  ``optimizer``: ``on_pre_optimizer_step`` to ``on_step_end`` (the update, the scheduler
  step and ``zero_grad``). Gradient clipping runs between backward and
  ``on_pre_optimizer_step`` and is in no phase.

The loss is the model output's ``loss`` combined over the step's micro-batches as the
Trainer does (their sum when the Trainer passes ``num_items_in_batch``, else their mean),
and scaled as the Trainer scales it under DDP: each rank records the loss the Trainer
computed on it (the Trainer logs their mean over ranks). A custom ``compute_loss`` that
does not use the output's loss records none. Needs ``pip install 'stagewatch[hf]'``.
"""

from __future__ import annotations

import os
from typing import Any

from stagewatch.ddp import watch_ddp_around
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

_transformers = require("transformers", "hf", "stagewatch.integrations.hf")

__all__ = ["StagewatchCallback"]


def _first_grad_tensor(out: Any) -> Any:
    """The first model output that requires grad (a ModelOutput, dict, tuple or tensor)."""
    if hasattr(out, "requires_grad"):
        return out if out.requires_grad else None
    if isinstance(out, dict):  # ModelOutput is an OrderedDict
        items: Any = out.values()
    elif isinstance(out, (list, tuple)):
        items = out
    else:
        return None
    return next((t for t in items if getattr(t, "requires_grad", False)), None)


def _output_loss(out: Any) -> Any:
    """The loss in a model's output as the Trainer finds it: ``out["loss"]`` of a dict
    (ModelOutput), else a tuple's first item (``return_dict=False``) when it is a scalar."""
    if isinstance(out, dict):
        loss = out.get("loss")
    elif isinstance(out, (tuple, list)) and out:
        loss = out[0] if getattr(out[0], "ndim", None) == 0 else None
    else:
        loss = getattr(out, "loss", None)
    return loss if hasattr(loss, "detach") else None


class StagewatchCallback(_transformers.TrainerCallback):  # type: ignore[misc,name-defined]
    """Times a Hugging Face ``Trainer`` run: phases, module regions, one record per step.

    ``log_dir``/``run_name`` and ``logger_kwargs`` make a :class:`stagewatch.TimingLogger`
    on every process at ``on_train_begin`` (rank and world size from the
    ``TrainingArguments``; all ranks share one run folder), closed at ``on_train_end``;
    ``logger=`` uses yours instead (then you close it). ``depth``/``include``/``exclude``
    go to :func:`stagewatch.instrument` on the model (``depth=0``: no module regions;
    ``None``: the whole tree). ``log_loss``: record the step's loss (on a GPU, converting
    it waits for it once per step). Hooks never raise into training: a failure warns once.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] = "runs/logs",
        run_name: str = "hf",
        *,
        depth: int | None = 2,
        include: Any = None,
        exclude: Any = None,
        logger: TimingLogger | None = None,
        log_loss: bool = True,
        **logger_kwargs: Any,
    ) -> None:
        self._sw = CallbackBase(
            log_dir, run_name, depth, logger, include, exclude, log_loss, logger_kwargs
        )
        self._hooks: list[Any] = []
        self._in_step = False
        self._loss_scale = 1
        self._loader: Any = None

    @property
    def logger(self) -> TimingLogger | None:
        """The logger in use (None before training and after it)."""
        return self._sw.logger

    def _warn(self, key: str, message: str) -> None:
        self._sw._warn(key, message)

    # ------------------------------------------------------------------ model hooks

    def _hook_model(self, model: Any) -> None:
        self._hooks = [
            model.register_forward_pre_hook(self._forward_begins, with_kwargs=True),
            model.register_forward_hook(self._forward_ends),
        ]

    def _active(self, module: Any) -> bool:
        import torch

        return self._in_step and module.training and torch.is_grad_enabled()

    def _forward_begins(self, module: Any, args: Any, kwargs: Any) -> None:
        try:
            if not self._in_step and not module.training:
                self._sw._eval_begin()  # an evaluation between steps: until on_evaluate
                return
            if not self._active(module):
                return
            self._sw._switch(FORWARD)
            tally = self._sw._tally
            tally.samples += batch_size(kwargs) or batch_size(args) or 0
            if kwargs.get("num_items_in_batch") is not None:
                tally.summed = True  # the model divides by the whole step's token count
        except Exception as e:
            self._warn("forward", f"the forward pre-hook failed ({e}); ignored")

    def _forward_ends(self, module: Any, args: Any, out: Any) -> None:
        try:
            if not self._active(module):
                return
            self._sw._switch(BACKWARD)
            loss = _output_loss(out)
            if self._sw.log_loss:
                self._sw._tally.add_loss(loss)
            # the backward starts at the loss's gradient (a custom loss: the first output's
            # that needs one); a plain tensor hook costs far less than a multi-grad hook
            first = loss if loss is not None and loss.requires_grad else _first_grad_tensor(out)
            if first is not None:
                first.register_hook(self._backward_begins)
        except Exception as e:
            self._warn("forward_end", f"the forward hook failed ({e}); ignored")

    def _backward_begins(self, grad: Any) -> None:
        # on autograd's thread, at the gradient of the loss: have the engine call back
        # when this whole backward pass is done
        try:
            from torch.autograd import Variable

            Variable._execution_engine.queue_callback(self._backward_done)
        except Exception as e:
            self._warn("backward", f"the backward hook failed ({e}); ignored")

    def _backward_done(self) -> None:
        try:
            if self._sw._phases is not None:
                self._sw._phases.end(BACKWARD)
        except Exception as e:
            self._warn("backward_done", f"the backward hook failed ({e}); ignored")

    # ------------------------------------------------------------------ Trainer events

    @safe
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs.get("model")
        grad_accum = max(int(getattr(args, "gradient_accumulation_steps", 1) or 1), 1)
        per_device = getattr(args, "per_device_train_batch_size", None)
        self._sw._open(
            model,
            rank=int(getattr(args, "process_index", 0)),
            world_size=int(getattr(args, "world_size", 1)),
            device=getattr(args, "device", None),
            total_steps=state.max_steps if getattr(state, "max_steps", 0) > 0 else None,
            samples_per_step=per_device * grad_accum if isinstance(per_device, int) else None,
        )
        world = int(getattr(args, "world_size", 1))
        # with num_items_in_batch counted over all ranks, the Trainer scales each rank's
        # loss by the number of processes (Trainer.compute_loss); so does this record
        across = getattr(args, "average_tokens_across_devices", False) and world > 1
        self._loss_scale = world if across else 1
        if model is not None:
            self._hook_model(model)
            if self._sw.logger is not None:
                # the Trainer hands callbacks the inner model; its DDP wrapper (accelerate's)
                # is found at the first forward: DDP's all-reduce as comm/exposed
                look = watch_ddp_around(model, self._sw.logger)
                if look is not None:
                    self._hooks.append(look)
        if getattr(args, "torch_compile", False) and self._sw.depth != 0:
            self._warn(
                "compile",
                "TrainingArguments(torch_compile=True) runs the model compiled, "
                "where module hooks do nothing: the phases are recorded, module regions not",
            )
        self._time_loader(kwargs.get("train_dataloader"))
        if self._sw.logger is not None:
            self._sw.logger.mark_step_start()
        self._sw._switch(DATA_WAIT)

    def _time_loader(self, loader: Any) -> None:
        """Time each wait for a batch of the loader the Trainer iterates: accelerate's
        loaders call ``self.base_dataloader.__iter__()``, which an instance attribute
        overrides for this run (restored at the end). Other loaders keep the window."""
        base = getattr(loader, "base_dataloader", None)
        if base is None or self._sw.logger is None or not self._sw.logger.enabled:
            return
        original = type(base).__iter__
        wait = self._loader_wait

        def timed_iter() -> Any:
            it = original(base)
            while True:
                wait(True)
                try:
                    batch = next(it)
                except StopIteration:
                    return
                finally:
                    wait(False)
                yield batch

        base.__iter__ = timed_iter
        self._loader = base

    def _untime_loader(self) -> None:
        base, self._loader = self._loader, None
        if base is not None:
            base.__dict__.pop("__iter__", None)

    def _loader_wait(self, starting: bool) -> None:
        try:
            phases = self._sw._phases
            if phases is None:
                return
            if not starting:
                phases.end(DATA_WAIT)
                return
            if phases.current == DATA_WAIT:
                phases.drop()  # the window since the last step: the loader's own wait is exact
            phases.switch(DATA_WAIT)
        except Exception as e:
            self._warn("loader", f"timing the loader failed ({e}); ignored")

    @safe
    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._sw._eval_end()
        self._in_step = True
        self._sw._switch(DATA_H2D)

    @safe
    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._sw._switch(DATA_H2D)  # the next micro-batch's inputs are prepared next

    @safe
    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._sw._switch(OPTIMIZER)
        self._sw._tally.lr = first_lr(kwargs.get("optimizer"))

    @safe
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._in_step = False
        tally = self._sw._tally
        if tally.summed and tally.loss is not None and self._loss_scale != 1:
            tally.loss = tally.loss * self._loss_scale
        epoch = getattr(state, "epoch", None)
        self._sw._step(int(epoch) if epoch is not None else None, mean_loss=True)
        self._sw._switch(DATA_WAIT)

    @safe
    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._restart_wait()

    @safe
    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._sw._eval_end()
        self._restart_wait()

    @safe
    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._restart_wait()

    @safe
    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._restart_wait()

    def _restart_wait(self) -> None:
        """Logging, evaluation and saving ran since the wait began: they are not the wait."""
        if self._in_step or self._sw._phases is None:
            return
        self._sw._phases.restart(DATA_WAIT)

    @safe
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._in_step = False
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._untime_loader()
        self._sw._close("completed", None)
