"""The VRT model's recompute charges, and the hook-based backward timing the step planner uses.

The live model is timed by :func:`stagewatch.instrument` (see ``VRTWithSpike``); its
checkpointed blocks charge their re-run through :class:`RecomputeCharges`. The planner
(``trainer.plan.simulation``) times a meta-device step with :class:`Instrumentation`:

For a module named ``vrt/stage8`` the region ``backward/vrt/stage8`` opens when autograd
has computed the gradient of the module's output (full backward pre-hook) and closes when
it has computed the gradients of the module's inputs (full backward hook). A module whose
inputs need no gradient (the flow net, the first spike-encoder scale) closes instead when
the last of its trainable parameters has received its gradient. Checkpointed blocks charge
their re-run forward to ``backward/<stage>/recompute``. Hooks may run on autograd's
threads; the logger's ``begin``/``end`` are thread-safe and every probe holds a lock.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from trainer.models import _timing


class _BackwardProbe:
    def __init__(self, module: nn.Module, name: str, log: Any) -> None:
        self.name, self.log = name, log
        self.params = [p for p in module.parameters()]
        self.lock = threading.Lock()
        self.handle: Any = None
        self.inputs_need_grad = True
        self.remaining = 0
        self.hooks: list[RemovableHandle] = [
            module.register_forward_pre_hook(self._forward_pre),
            module.register_full_backward_pre_hook(self._backward_pre),
            module.register_full_backward_hook(self._backward_post),
        ]
        # post-accumulate hooks on the trainable parameters, only while they are needed (a
        # module whose inputs need no gradient); re-made when parameters are (un)frozen
        self.param_hooks: list[RemovableHandle] = []
        self.hooked: tuple[bool, ...] = ()

    def _forward_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if _timing.in_backward():
            return
        self.inputs_need_grad = any(isinstance(a, Tensor) and a.requires_grad for a in args)
        with self.lock:
            if self.handle is not None:  # a backward that never completed (autograd.grad)
                self._close()
        want = () if self.inputs_need_grad else tuple(p.requires_grad for p in self.params)
        if want != self.hooked:
            self._remove_param_hooks()
            if want:
                self.param_hooks = [
                    p.register_post_accumulate_grad_hook(self._accumulated)
                    for p, on in zip(self.params, want, strict=True)
                    if on
                ]
            self.hooked = want

    def _backward_pre(self, module: nn.Module, grad_output: Any) -> None:
        with self.lock:
            if self.handle is None:
                self.handle = self.log.begin(self.name)
                self.remaining = sum(1 for p in self.params if p.requires_grad)
                if not self.inputs_need_grad and self.remaining == 0:
                    self._close()

    def _backward_post(self, module: nn.Module, grad_input: Any, grad_output: Any) -> None:
        if not self.inputs_need_grad:
            return  # fired at once because no input needs a gradient: not the end
        with self.lock:
            if self.handle is not None:
                self._close()

    def _accumulated(self, p: Tensor) -> None:
        if self.inputs_need_grad:
            return
        with self.lock:
            if self.handle is not None:
                self.remaining -= 1
                if self.remaining <= 0:
                    self._close()

    def _close(self) -> None:
        h, self.handle = self.handle, None
        self.log.end(h)

    def _remove_param_hooks(self) -> None:
        for h in self.param_hooks:
            h.remove()
        self.param_hooks = []
        self.hooked = ()

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks.clear()
        self._remove_param_hooks()


def _quiet_no_input_grad_warning() -> None:
    # A full backward hook on a module whose inputs need no gradient fires with the output
    # gradients, and torch warns about it at every backward. The probe knows and ignores
    # that call (it closes on the parameters' gradients instead), so the warning is noise.
    warnings.filterwarnings(
        "ignore",
        message="Full backward hook is firing when gradients are computed with "
        "respect to module outputs",
        category=UserWarning,
    )


class RecomputeCharges:
    """Per stage, the checkpointed modules whose re-run is charged to
    ``backward/<stage>/recompute`` on ``log`` (attributes the blocks read while timing)."""

    def __init__(self, recompute: dict[str, list[nn.Module]], log: Any) -> None:
        self.blocks: list[nn.Module] = []
        for stage, blocks in recompute.items():
            for b in blocks:
                b.recompute_region = f"backward/{stage}/recompute"
                b.timing_logger = log
                self.blocks.append(b)

    def remove(self) -> None:
        for b in self.blocks:
            b.recompute_region = None
            b.timing_logger = None
        self.blocks.clear()


class Instrumentation:
    """Hooks of one model bound to one logger; :meth:`remove` takes them all away."""

    def __init__(
        self, regions: dict[str, nn.Module], recompute: dict[str, list[nn.Module]], log: Any
    ) -> None:
        _quiet_no_input_grad_warning()
        self.log = log
        self.probes = [_BackwardProbe(m, f"backward/{name}", log) for name, m in regions.items()]
        self.blocks: list[nn.Module] = []
        for stage, blocks in recompute.items():
            for b in blocks:
                b.recompute_region = f"backward/{stage}/recompute"
                b.timing_logger = log
                self.blocks.append(b)

    def remove(self) -> None:
        for p in self.probes:
            p.remove()
        for b in self.blocks:
            b.recompute_region = None
            b.timing_logger = None
        self.probes.clear()
        self.blocks.clear()


def hook_count(model: nn.Module) -> int:
    """Number of module and parameter hooks on ``model`` (for tests: 0 with timing off)."""
    n = 0
    for m in model.modules():
        for attr in (
            "_forward_pre_hooks",
            "_forward_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            n += len(getattr(m, attr, {}))
    for p in model.parameters():
        n += len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
        n += len(p._backward_hooks or {})
    return n
