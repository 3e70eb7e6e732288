"""One forward call of a module :func:`~stagewatch.timing.instrument.instrument` times: the
state that pairs it with its backward, and the autograd hooks' callbacks.

These run for every module call, forward and backward: plain attribute work, no method
calls that can be inlined (on a CPU logger the backward region is timed here by
``perf_counter`` directly, not through ``begin``/``end``).
"""

from __future__ import annotations

import threading
from typing import Any

from stagewatch.timing import regions


class _Rec(threading.local):
    """Per thread: how deep this thread is in a recomputation already charged."""

    depth = 0
    opened = 0  # recompute regions opened on this thread (re-runs told apart)
    handles: list[Any]

    def __init__(self) -> None:
        self.handles = []


_rec = _Rec()


class Call:
    """One forward call of a timed module, waiting for (or in) its backward."""

    __slots__ = (
        "dead",
        "done",
        "handle",
        "leaf_hooks",
        "mark",
        "params",
        "probe",
        "remaining",
        "state",
        "t0",
        "t_last",  # CPU: the clock at the last parameter gradient (unset until one)
        "targets",
        "views",
    )

    def __init__(self, probe: Any) -> None:
        self.probe = probe
        # 0: backward not started, 1: open, 2: done, 3: the inputs' gradients came before
        # the backward started (a module returning its input: both hooks on one node)
        self.state = 0
        self.handle: Any = None  # CUDA: the logger's begin() handle
        self.t0 = 0.0  # CPU: the clock at the start of the backward
        self.remaining = 0  # input gradients (or parameters) still to come
        self.params = False  # closes on parameter gradients (no input needs a gradient)
        self.leaf_hooks: list[Any] = NO_HOOKS
        self.dead = False
        self.done = 0  # bit i: input i has its gradient
        self.views: list[tuple[int, Any, int]] = NO_HOOKS  # (input, view, version): forward

    def start(self, *_: Any) -> None:
        if self.state or self.dead:
            if self.state == 3 and not self.dead:
                self._empty()
            return
        probe = self.probe
        inst = probe.inst
        lg = inst.log
        if lg._closed:
            return
        self.state = 1
        if inst.cpu:  # the logger's begin()/end() inlined: this runs for every call
            self.t0 = regions._perf()
        else:
            self.handle = lg.begin(probe.bwd_name)
        if not inst.armed:
            inst.arm_recompute()
        if self.params:
            self.remaining = probe.trainable
            if self.remaining == 0:
                self.finish()

    def rerun_start(self, *_: Any) -> None:
        """:meth:`start` of a call made in a re-entrant checkpoint's re-run: from the re-run's
        start when it opened the recompute region and no other re-run began since (its
        ``t0``/``handle`` are set), else from now."""
        if self.state or self.dead:
            if self.state == 3 and not self.dead:
                self._empty()
            return
        if self.mark < 0 or self.mark != _rec.opened:
            self.start()
            return
        t0, handle = self.t0, self.handle
        self.start()
        if self.state:  # from the re-run's start, not now
            self.t0 = t0
            if handle is not None:
                self.handle = handle

    def input_grad(self, i: int, *_: Any) -> None:
        bit = 1 << i
        if self.done & bit:
            return
        self.done |= bit
        self.remaining -= 1
        if self.remaining <= 0:
            self.finish()

    def first_input(self, *_: Any) -> None:
        """:meth:`input_grad` of input 0, without a partial (the one-tensor fast path)."""
        if self.done & 1:
            return
        self.done |= 1
        self.remaining -= 1
        if self.remaining <= 0:
            self.finish()

    def only_input(self, *_: Any) -> None:
        """:meth:`first_input` and :meth:`finish` in one, for a call with one tensor input (the
        fast path): on a CPU logger the region is added here, without the two method calls.
        This hook is the first Python code to run after the module's backward computed, when
        the interpreter's caches are cold: every line here costs several times its warm
        price."""
        if self.done & 1:
            return
        self.done |= 1
        probe = self.probe
        inst = probe.inst
        if self.state != 1 or not inst.cpu or self.remaining != 1:
            self.remaining -= 1
            if self.remaining <= 0:
                self.finish()
            return
        self.remaining = 0
        self.state = 2
        lg = inst.log
        if lg._closed:
            return
        lg._raw.append((probe.bwd_name, (regions._perf() - self.t0) * 1000.0))

    def finish_at(self, t_end: float) -> None:
        """:meth:`finish`, at ``t_end`` (a CPU clock reading) on a CPU logger."""
        inst = self.probe.inst
        if self.state == 1 and inst.cpu:
            self.state = 2
            lg = inst.log
            if not lg._closed:
                lg._add(self.probe.bwd_name, max(t_end - self.t0, 0.0) * 1000.0)
            if self.leaf_hooks:
                self.drop_hooks()
            return
        self.finish()

    def param_grad(self) -> None:
        self.remaining -= 1
        if self.remaining <= 0:
            self.finish()

    def finish(self) -> None:
        if self.state == 1:
            inst = self.probe.inst
            lg = inst.log
            if inst.cpu:
                if not lg._closed:
                    lg._raw.append((self.probe.bwd_name, (regions._perf() - self.t0) * 1000.0))
            else:
                h, self.handle = self.handle, None
                lg.end(h)
        self.state = 2 if self.state else 3
        if self.leaf_hooks:
            self.drop_hooks()

    def _empty(self) -> None:
        """The backward of a module that returned its input (``nn.Identity``,
        ``Dropout(p=0)``): its end hook ran just before its start hook on the same node, so it
        is a backward of no time, counted like any other."""
        self.state = 2
        inst = self.probe.inst
        lg = inst.log
        if lg._closed:
            return
        if inst.cpu:
            lg._add(self.probe.bwd_name, 0.0)
        else:
            lg.end(lg.begin(self.probe.bwd_name))

    def drop_hooks(self) -> None:
        for h in self.leaf_hooks:
            h.remove()
        self.leaf_hooks = NO_HOOKS


NO_HOOKS: list[Any] = []  # shared empty default (never appended to: replaced by a new list)
