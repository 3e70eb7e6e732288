"""Per-module forward and backward regions for any PyTorch model: :func:`instrument`.

How each region is measured (a CUDA logger: through its own ``region``/``begin``/``end``,
pooled CUDA events, never a synchronize; a CPU logger: the same ``perf_counter`` regions,
entered inline in the hooks, which run for every module call):

- ``forward/<path>``: the module's ``forward`` is, while timed, a wrapper in its own
  ``__dict__`` (:class:`~stagewatch.timing.probe.TimedForward`, not module hooks, which
  cost the module torch's slow call path) that enters a region, runs the module's forward
  and leaves it. It runs after the module's forward pre-hooks and before its forward hooks;
  a direct ``module.forward(...)`` call is timed too. The region goes on the thread's
  region stack, so regions the module's code opens itself nest under it. Its parent is the
  innermost instrumented module's region, else the region the caller has open
  (``forward``, ``eval``...), else ``forward``.
- ``backward/<path>``: autograd graph hooks, never module backward hooks (which wrap the
  module's outputs in a custom Function and break in-place ops on them, and which graph-
  break ``torch.compile``). The region opens in a hook on the autograd node that made an
  output (autograd has the output's gradient: the module's backward starts) and closes
  when the gradients of the module's inputs are complete: a hook on the node that made a
  fresh input (made by the last node created, so nothing else consumed it yet), else on
  the node of a view of the input that only this module consumes. Hooks go on nodes
  through ``_register_hook_dict`` (:func:`stagewatch.timing.probe.on_node`), without
  ``RemovableHandle`` objects. A module whose inputs need no gradient closes when its
  trainable parameters have their gradients (post-accumulate hooks, kept only while such
  calls happen). Each call has its own start and end hooks, so repeated, shared and
  re-entered modules pair correctly.
- ``backward/<path>/recompute``: while a backward runs, a module-global forward hook is
  armed; a forward under the autograd engine (activation checkpointing re-running it) is
  charged to the nearest instrumented module at or above the module re-run.

Nothing is installed while timing is off, and a handle whose logger closes takes its hooks
away at the next call. torch is imported only inside functions.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from stagewatch.timing import regions
from stagewatch.timing.calls import _rec
from stagewatch.timing.modules import (
    drop_compiled,
    given_modules,
    is_compiled,
    is_script,
    owners,
    patterns,
    select_modules,
    unwrap,
    warn,
)
from stagewatch.timing.probe import Frame, Probe

_HELD = object()  # a re-run going on from the recompute region held open


class recompute_region:
    """Charge the code inside to ``name`` on ``log`` as a recompute (absolute name).

    For code that charges its own activation recomputation: while it is open, modules re-run
    inside it are not charged again by :func:`instrument`."""

    __slots__ = ("_h", "_log", "_name")

    def __init__(self, log: Any, name: str) -> None:
        self._log, self._name = log, name

    def __enter__(self) -> None:
        _rec.depth += 1
        self._h = self._log.begin(self._name) if self._log is not None else None

    def __exit__(self, *exc: Any) -> None:
        _rec.depth -= 1
        if self._h is not None:
            self._log.end(self._h)


# --------------------------------------------------------------------------- the handle


_timed_now: weakref.WeakSet[Any] = weakref.WeakSet()  # modules some handle times now


class _GlobalKey:
    """A key of :class:`InstrumentHandle` in torch's global module hook dicts."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<stagewatch.instrument recompute hook>"


class _Stack:
    """The hooks' state on one thread. Not a ``threading.local`` (each attribute read of one
    goes through a per-thread dict lookup, several per module call): the thread that made
    the handle has its own in ``InstrumentHandle._tls``, the others get theirs from
    :meth:`InstrumentHandle.thread_state`."""

    __slots__ = ("frames", "last_hooks", "last_node", "last_seq", "open", "proxy", "reruns")

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.open: list[Any] | None = None  # the logger's region stack on this thread
        torch = sys.modules.get("torch")  # per thread: on_node()'s proxy tensor
        self.proxy = torch.empty(0) if torch is not None else None
        # the last module output hooked (its node's sequence number) and its hooks' dict
        self.last_seq = -1
        self.last_hooks: dict[Any, Any] = {}
        # that node's Python object, held from the module's forward end to the next forward
        # start on this thread (or the end of the backward): the next module's input.grad_fn
        # is then this same object, not a new one (~4 us in a training step), and its
        # sequence number is last_seq
        self.last_node: Any = None
        # (probe, call or None) of each module re-run by a re-entrant checkpoint, open now
        self.reruns: list[tuple[Any, Any]] = []


class _Local(threading.local):
    st: _Stack | None = None


class InstrumentHandle:
    """The hooks :func:`instrument` installed. :meth:`remove` takes them all away; usable
    as a context manager. ``regions`` lists the module paths timed (empty when inert)."""

    def __init__(self, log: Any = None, model: Any = None, timed: dict[str, Any] | None = None):
        self.log = log
        self.regions: list[str] = list(timed or ())
        self._probes: list[Probe] = []
        self._tls = _Stack()  # this thread's; other threads': thread_state()
        self._tid = threading.get_ident()
        self._local = _Local()
        self._owner: dict[int, str] = {}
        # this handle's key in torch's global module hook dicts (an object: never one of the
        # int ids of torch's RemovableHandles)
        self._key = _GlobalKey()
        self._lock = threading.Lock()
        self.armed = False
        # a recompute region ended but held open: (name, start, end, autograd node)
        self._held: tuple[str, Any, Any, Any] | None = None
        if log is None or not timed:
            return
        import torch

        self.torch = torch
        self._tls = _Stack()  # again, now with torch: its proxy tensor
        # looked up once: these run twice per module call
        # torch.compiler.is_compiling() without its two Python calls: dynamo traces
        # is_dynamo_compiling() as True (the hooks then do nothing in the graph); the flag is
        # what is_compiling() returns outside dynamo (torch.export)
        self.dynamo = torch.compiler.is_dynamo_compiling
        self.compiler = torch.compiler
        self.graph_task = torch._C._current_graph_task_id
        self.current_node = getattr(torch._C, "_current_autograd_node", lambda: None)
        self.grad_enabled = torch._C.is_grad_enabled
        # the saved-tensor hooks in force: non-reentrant checkpointing re-runs a forward
        # under its own; a re-entrant one re-runs it bare, then backwards through the re-run
        self.saved_hooks = getattr(
            torch._C._autograd, "_top_saved_tensors_default_hooks", lambda _: True
        )
        self.tensor = torch.Tensor
        self._globals = torch.nn.modules.module
        # the sequence number the next autograd node created on this thread gets (-1: never
        # equal, every input gets a view, where a torch lacks it)
        self.next_seq = getattr(torch._C._autograd, "_get_sequence_nr", lambda: -1)
        self._queue_callback = torch.autograd.Variable._execution_engine.queue_callback
        self.cpu = not log._cuda  # CPU: regions timed inline by perf_counter
        taken = [p for p, m in timed.items() if m in _timed_now]
        if taken:
            warn(
                f"instrument(): {taken[0]!r} (and {len(taken) - 1} more) already timed by "
                "another handle; not timed twice (remove() the other handle first)",
            )
            timed = {p: m for p, m in timed.items() if m not in _timed_now}
            self.regions = list(timed)
        self._owner = owners(model, timed)
        self._probes = [Probe(self, m, p) for p, m in timed.items()]
        for m in timed.values():
            _timed_now.add(m)

    @property
    def active(self) -> bool:
        """True while hooks are installed."""
        return bool(self._probes)

    def stack(self) -> list[Frame]:
        return self.thread_state().frames

    def thread_state(self) -> _Stack:
        """The hooks' state of the calling thread (made on its first call)."""
        if threading.get_ident() == self._tid:
            return self._tls
        st = self._local.st
        if st is None:
            st = self._local.st = _Stack()
        return st

    # recompute: a module-global forward hook, armed only while a backward runs
    def arm_recompute(self) -> None:
        if self.armed:
            return
        with self._lock:
            if self.armed or not self._probes:
                return
            # at the end of this backward: close what it left open, take the hooks away
            self._queue_callback(self._backward_done)
            # what register_module_forward_(pre_)hook do, without their RemovableHandles:
            # this runs once per backward, the first Python code after the loss's backward
            key, g = self._key, self._globals
            g._global_forward_pre_hooks[key] = self._rec_pre
            g._global_forward_hooks[key] = self._rec_post
            # always_call: checkpoint's early stop ends a recompute by raising
            g._global_forward_hooks_always_called[key] = True
            self.armed = True

    def _backward_done(self) -> None:
        """The backward pass ended: a call still open did not get all its inputs' (or
        parameters') gradients in it (a part of the graph pruned, an input the module does
        not use): its region ends here, with one warning. Also where a timed forward was
        replaced since (``module.forward = f``): ``f`` is timed from the next forward on,
        as module hooks would time it (a dict lookup per module here, none per call)."""
        self._tls.last_node = None
        for probe in self._probes:
            for call in probe.pending:
                if call.state == 1:
                    probe.unfinished(call)
            if probe.module.__dict__.get("forward") is not probe.fwd:
                probe.rewrap()
        self.disarm_recompute()

    def disarm_recompute(self) -> None:
        self._flush_recompute()
        with self._lock:
            if self.armed:
                key, g = self._key, self._globals
                g._global_forward_pre_hooks.pop(key, None)
                g._global_forward_hooks.pop(key, None)
                g._global_forward_hooks_always_called.pop(key, None)
            self.armed = False

    # One recompute region per re-run of a module: the module's own call re-run
    # (``checkpoint(block, x)``), or its forward re-run by a checkpoint inside it (Hugging
    # Face's layers), where each timed child re-runs in turn. A region charged to the same
    # module in the same autograd node (the checkpoint's) goes on from the last one, held
    # open until another region starts or the backward ends.
    def _rec_pre(self, module: Any, args: Any) -> None:
        if self.graph_task() == -1:
            return
        owner = self._owner.get(id(module))
        if owner is None:
            return
        rec = _rec
        if rec.depth == 0:
            name = "backward/" + owner + "/recompute"
            node = self.current_node()
            held = self._held
            if held is not None and held[0] == name and held[3] is node:
                rec.handles.append((module, _HELD))
            else:
                if held is not None:
                    self._flush_recompute()
                rec.handles.append((module, self.log.begin(name)))
            rec.opened += 1
        rec.depth += 1

    def _rec_post(self, module: Any, args: Any, out: Any) -> None:
        if self.graph_task() == -1 or id(module) not in self._owner:
            return
        rec = _rec
        if rec.depth > 0:
            rec.depth -= 1
            if rec.depth == 0 and rec.handles:
                _, h = rec.handles.pop()
                self._hold_recompute(h)

    def _hold_recompute(self, h: Any) -> None:
        """The re-run ended now: its region ends here unless the next one goes on from it."""
        lg = self.log
        if lg._closed:
            self._held = None
            return
        now = lg._pool.get() if lg._cuda else regions._perf()
        if lg._cuda:
            now.record()
        held = self._held
        if h is _HELD:
            if held is None:
                return
            if lg._cuda:
                lg._pool.put(held[2])
            self._held = (held[0], held[1], now, held[3])
        elif h is not None:
            if held is not None:
                self._flush_recompute()
            self._held = (h[0], h[1], now, self.current_node())

    def _flush_recompute(self) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        lg = self.log
        if lg._closed:
            return
        name, start, end, _ = held
        if lg._cuda:
            with lg._lock:
                lg._cur_ev.append((name, start, end))
        else:
            lg._add(name, (end - start) * 1000.0)

    def remove(self) -> None:
        """Take away every hook (idempotent); regions still open are closed."""
        probes, self._probes = self._probes, []
        self._tls.last_node = None
        for p in probes:
            p.remove()
            _timed_now.discard(p.module)
        if self.armed:
            self.disarm_recompute()
        look, self._ddp_look = getattr(self, "_ddp_look", None), None
        if look is not None:
            look.remove()

    def __enter__(self) -> InstrumentHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = f"{len(self.regions)} modules" if self.active else "inert"
        return f"InstrumentHandle({state})"


def _resolve_logger(logger: Any) -> Any:
    lg = logger if logger is not None else regions._global
    if lg is None or not getattr(lg, "enabled", False) or getattr(lg, "_closed", True):
        return None
    return lg


def instrument(
    model: Any,
    depth: int | None = 2,
    *,
    modules: Mapping[str, Any] | None = None,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    logger: Any = None,
) -> InstrumentHandle:
    """Time every module of ``model`` down to ``depth`` as ``forward/<path>`` and
    ``backward/<path>`` regions (``backward/<path>/recompute`` for checkpointed re-runs).

    ``path`` is the module's name from ``named_modules`` with ``.`` -> ``/`` (DDP, FSDP and
    torch.compile wrappers unwrapped). ``modules={name: module}`` times exactly those,
    under those names. ``include``/``exclude``: glob patterns on paths (a pattern also
    covers the module's descendants); ``depth=None``: no depth limit. ``logger``: default
    the global timing logger; with none, or timing off, nothing is installed and the
    handle is inert. Returns a handle: ``.remove()``, or use it as a context manager.
    """
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise ValueError(f"instrument(depth=): expected an integer >= 1 or None, got {depth!r}")
    inc, exc = patterns(include, "include"), patterns(exclude, "exclude")
    lg = _resolve_logger(logger)
    if lg is None:
        return InstrumentHandle()
    import torch

    if modules is None and not isinstance(model, torch.nn.Module):
        raise TypeError(f"instrument(): expected a torch.nn.Module, got {type(model).__name__}")
    if modules is not None:
        timed = given_modules(modules, inc, exc, torch)
        root = model if isinstance(model, torch.nn.Module) else None
    else:
        if is_compiled(model):
            warn(
                "instrument(): the model is compiled by torch.compile, which ignores hooks "
                "added after it; no module regions (instrument before compiling, or not at all)",
            )
            return InstrumentHandle()
        if is_script(model):
            warn(
                "instrument(): the model is a TorchScript module, which takes no Python hooks; "
                "no module regions (instrument the model before scripting it, or not at all)",
            )
            return InstrumentHandle()
        root = unwrap(model)
        timed = select_modules(root, depth, inc, exc)
    timed = drop_compiled(timed)
    if root is None:
        root = torch.nn.Module()
        for i, m in enumerate(timed.values()):
            root.add_module(f"m{i}", m)
    handle = InstrumentHandle(lg, root, timed)
    if isinstance(model, torch.nn.Module) and not is_script(model):
        from stagewatch.ddp import watch_model_ddp

        # DDP's all-reduce as comm/exposed (issue 22), the model wrapped now or later
        handle._ddp_look = watch_model_ddp(model, lg)
    return handle
