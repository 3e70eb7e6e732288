"""Exposed communication of DDP's gradient all-reduce, for any DDP loop.

DDP launches each gradient bucket's all-reduce from a communication hook while backward is
still computing earlier layers, and ``backward()`` returns only once every bucket is done.
:func:`watch_ddp` registers a hook that times this, one call for a plain loop::

    model = DistributedDataParallel(net)
    stagewatch.watch_ddp(model)          # the global logger, at each backward

Each backward then adds to the current step (names under ``comm/``, which are not
top-level regions, so the step's own regions are not counted twice):

* ``comm/exposed``: from the end of backward's compute (the last bucket ready) to the last
  bucket's completion: the all-reduce time backward does not hide (≥ 0, and within the
  step: it is part of the time ``loss.backward()`` takes);
* ``comm/launch``: time this rank spent inside the hook before the collective was handed
  off (compression, a wrapped hook's own work): its own communication work, not a wait;
* ``comm/total`` (CPU clock only): the union of the buckets' communication intervals,
  overlapped with compute or not;
* ``comm/buffers`` (CPU models only): DDP's broadcast of the module's buffers (e.g.
  BatchNorm statistics) from rank 0 at the start of a forward, a collective the other ranks
  wait in when rank 0 is late: from DDP's forward pre-hook to the wrapped module's.

The bundled trainer uses the ``split`` form (:class:`CommWatch` with ``split=True`` and
:meth:`CommWatch.begin`/:meth:`CommWatch.end` around ``loss.backward()``): its
``backward`` region ends when the last bucket is ready, and an ``allreduce`` region holds
the exposed part.

On CUDA the two ends of ``comm/exposed`` are CUDA events (resolved with the step, never a
synchronize); the other two are CPU times. torch is imported only inside functions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from stagewatch.timing import regions as _regions
from stagewatch.timing.lifecycle import distributed_at_exit

EXPOSED = "comm/exposed"
LAUNCH = "comm/launch"
TOTAL = "comm/total"
BUFFERS = "comm/buffers"


def _merged_ms(spans: list[tuple[float, float]]) -> float:
    """Total length (ms) of the union of ``(start, end)`` intervals in seconds."""
    if not spans:
        return 0.0
    iv = sorted(spans)
    total, cur_s, cur_e = 0.0, iv[0][0], iv[0][1]
    for s, e in iv[1:]:
        if s > cur_e:
            total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return (total + cur_e - cur_s) * 1000.0


class CommWatch:
    """Times DDP's gradient communication from a comm hook (see the module docstring).

    ``logger``: a :class:`~stagewatch.timing.TimingLogger`, or None for the global logger
    at each backward. ``hook``/``state``: a comm hook to wrap (e.g. a compression hook);
    None is DDP's own all-reduce (average over the ranks). ``split``: the trainer's form,
    with ``begin()``/``end()`` around ``loss.backward()``.
    """

    def __init__(
        self,
        logger: Any = None,
        world_size: int | None = None,
        cuda: bool | None = None,
        *,
        split: bool = False,
        hook: Callable[[Any, Any], Any] | None = None,
        state: Any = None,
    ) -> None:
        self._logger = logger
        self.world_size = world_size
        self.cuda = cuda
        self.split = split
        self.inner, self.inner_state = hook, state
        self._lock = threading.Lock()
        self._bwd: Any = None
        self._ar: Any = None
        self._spans: list[list[Any]] = []  # [ready, done] per bucket (CPU seconds or events)
        self._launch = 0.0  # seconds inside the hook this backward
        self._ready_last: Any = None
        self._pending = 0  # buckets launched and not done
        self._closed = True  # the last bucket of this backward was launched
        self.comm_ms = 0.0  # split form: total communication ms of the last collect()
        self.backwards = 0  # backwards whose communication was recorded
        self._warned = False
        self._ddp: Any = None
        self._fwd_t0: float | None = None  # DDP's forward began; the module's has not
        self._handles: list[Any] = []  # the forward pre-hooks, taken away by detach()
        self._model: Any = None
        # detach()ed: the comm hook (DDP keeps it for good) still reduces, timing nothing
        self.detached = False

    # ------------------------------------------------------------------ setup

    def log(self) -> Any:
        """The logger to write to now (None: none, or a disabled one)."""
        if self.detached:
            return None
        lg = self._logger if self._logger is not None else _regions._global
        return lg if lg is not None and getattr(lg, "enabled", False) else None

    def attach(self, ddp_model: Any) -> CommWatch:
        """Register the hook on ``ddp_model`` (a ``DistributedDataParallel``)."""
        import torch.distributed as dist

        if self.world_size is None:
            self.world_size = dist.get_world_size(getattr(ddp_model, "process_group", None))
        if self.cuda is None:
            dev = getattr(ddp_model, "device_type", None)
            if dev is None:
                p = next(iter(ddp_model.parameters()), None)
                dev = p.device.type if p is not None else "cpu"
            self.cuda = dev == "cuda"
        ddp_model.register_comm_hook(None, self._hook)
        self._model = ddp_model
        self._hook_forward()
        ddp_model._stagewatch_comm = self  # watch_ddp on the same model returns this one
        distributed_at_exit()  # a Python comm hook gives the bucket tensors Python objects
        return self

    def _hook_forward(self) -> None:
        m = self._model
        if not self.cuda:  # on CUDA the broadcast is asynchronous: CPU time would say nothing
            self._ddp = m
            self._handles = [
                m.register_forward_pre_hook(self._fwd_begin),
                m.module.register_forward_pre_hook(self._fwd_ready),
            ]

    def detach(self) -> None:
        """Stop timing: the forward pre-hooks are taken away; the comm hook, which DDP keeps
        for good, goes on reducing the gradients and records nothing. :func:`watch_ddp`
        on the model times again."""
        self.detached = True
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()
        self._ddp, self._fwd_t0 = None, None

    def reattach(self) -> None:
        """Time again after :meth:`detach`."""
        if self.detached and self._model is not None:
            self.detached = False
            self._hook_forward()

    def _fwd_begin(self, _module: Any, _args: Any) -> None:
        will = getattr(self._ddp, "_check_sync_bufs_pre_fwd", None)  # private: may go away
        try:
            sync = will() if will is not None else True
        except Exception:
            sync = True
        self._fwd_t0 = time.perf_counter() if sync else None

    def _fwd_ready(self, _module: Any, _args: Any) -> None:
        t0, self._fwd_t0 = self._fwd_t0, None
        if t0 is not None and (lg := self.log()) is not None:
            lg.log(BUFFERS, (time.perf_counter() - t0) * 1000.0)

    def _now(self) -> Any:
        if self.cuda:
            import torch

            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    # ------------------------------------------------------------------ the hook

    def _collective(self, bucket: Any) -> Any:
        if self.inner is not None:
            return self.inner(self.inner_state, bucket)
        import torch.distributed as dist

        buf = bucket.buffer().div_(self.world_size or 1)
        return dist.all_reduce(buf, async_op=True).get_future()

    # no annotations: DDP compares them with the real classes, and this module's are strings
    def _hook(self, _state, bucket):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        last = bucket.is_last()
        ready = self._now()
        if last:
            self._ready_last = ready
            if self.split:
                lg = self.log()
                if lg is not None and self._bwd is not None:
                    lg.end(self._bwd)  # gradient computation is over: the rest is exposed comm
                    self._bwd = None
                    self._ar = lg.begin("allreduce")
        span = [ready, None]
        with self._lock:
            if self._closed and not self.split:
                self._spans, self._launch = [], 0.0  # a new backward
            self._closed = False
            self._spans.append(span)
            self._pending += 1
        fut = self._collective(bucket)
        with self._lock:
            self._launch += time.perf_counter() - t0
            if last:
                self._closed = True

        def done(f):  # type: ignore[no-untyped-def]
            span[1] = self._now()
            with self._lock:
                self._pending -= 1
                finished = self._closed and self._pending == 0
            if finished and not self.split:
                self._record()
            return f.value()[0]

        return fut.then(done)

    def _record(self) -> None:
        """Every bucket of this backward is done: add its figures to the current step."""
        lg = self.log()
        spans, ready = self._spans, self._ready_last
        if lg is None or ready is None or not spans:
            return
        self.backwards += 1
        lg.log(LAUNCH, self._launch * 1000.0)
        if self.cuda:
            last = next((s for s in spans if s[0] is ready), spans[-1])
            if getattr(lg, "_cuda", False) and last[1] is not None:
                # resolved with the step, as a CUDA region is (regions.py writes the same
                # per-step state); NCCL: the last-launched bucket ends last
                with lg._lock:
                    lg._cur_ev.append((EXPOSED, ready, last[1]))
            elif not self._warned:
                self._warned = True
                import warnings

                warnings.warn(
                    "stagewatch.watch_ddp: a CUDA model needs a CUDA-timed logger "
                    "(TimingLogger(device='cuda')) for comm/exposed; not recorded",
                    stacklevel=1,
                )
            return
        done = max(s[1] for s in spans)
        lg.log(EXPOSED, max(0.0, (done - ready) * 1000.0))
        lg.log(TOTAL, _merged_ms([(s[0], s[1]) for s in spans]))

    # ------------------------------------------------------------------ split form

    def begin(self) -> None:
        """Split form: call right before ``loss.backward()``."""
        lg = self.log()
        if lg is not None:
            self._bwd = lg.begin("backward")

    def end(self) -> None:
        """Split form: call right after ``loss.backward()`` returns."""
        lg = self.log()
        if lg is not None:
            if self._bwd is not None:
                lg.end(self._bwd)
            if self._ar is not None:
                lg.end(self._ar)
        self._bwd = self._ar = None

    def collect(self) -> float:
        """Split form: total communication ms since the last call (CUDA: after a sync)."""
        with self._lock:
            spans = [(a, b) for a, b in self._spans if b is not None]
            self._spans = []
        if not spans:
            self.comm_ms = 0.0
            return 0.0
        if self.cuda:
            ref = spans[0][0]
            iv = [(ref.elapsed_time(a) / 1e3, ref.elapsed_time(b) / 1e3) for a, b in spans]
        else:
            iv = spans
        self.comm_ms = _merged_ms(iv)
        return self.comm_ms


def watch_ddp(
    ddp_model: Any,
    logger: Any = None,
    *,
    hook: Callable[[Any, Any], Any] | None = None,
    state: Any = None,
    quiet: bool = False,
) -> CommWatch | None:
    """Time ``ddp_model``'s gradient all-reduce: ``comm/exposed``, ``comm/launch`` and
    ``comm/total`` in each step (module docstring). ``logger``: None for the global logger
    at each backward. ``hook``/``state``: your own comm hook, wrapped (DDP takes one hook
    per model, so pass it here rather than registering it yourself).

    Returns the :class:`CommWatch` (the same one when the model is already watched), or
    None, never an exception, when the model is not DDP (a warning unless ``quiet``) or a
    hook could not be registered (a warning: e.g. one is registered already).
    """
    import warnings

    done = getattr(ddp_model, "_stagewatch_comm", None)
    if isinstance(done, CommWatch):
        done.reattach()
        return done
    try:
        from torch.nn.parallel import DistributedDataParallel
    except Exception:  # torch without distributed
        return None
    if not isinstance(ddp_model, DistributedDataParallel):
        if not quiet:
            warnings.warn(
                "stagewatch.watch_ddp: not a DistributedDataParallel model; nothing timed",
                stacklevel=2,
            )
        return None
    try:
        return CommWatch(logger, hook=hook, state=state).attach(ddp_model)
    except Exception as e:
        why = str(e).strip()
        if "only be called once" in why:  # DDP keeps one comm hook per model
            why = (
                "the model has a comm hook already (DDP takes one: pass yours as "
                "stagewatch.watch_ddp(model, hook=..., state=...) instead)"
            )
        warnings.warn(f"stagewatch.watch_ddp: communication not timed: {why}", stacklevel=2)
        return None


def watch_if_ddp(model: Any, logger: Any = None) -> CommWatch | None:
    """:func:`watch_ddp` for code that instruments any model (``instrument``, the
    callbacks): silent when ``model`` is not DDP, and a no-op when it is already watched."""
    return watch_ddp(model, logger, quiet=True)


#: forwards of the inner module, under an initialized process group, to look for its DDP
_LOOKS = 8
#: caller frames searched for the DDP wrapper (DDP's forward calls the module a few down)
_FRAMES = 64


def _ddp_caller(module: Any, ddp_type: type) -> Any:
    """The DistributedDataParallel whose forward is calling ``module`` now, or None."""
    import sys

    f = sys._getframe(2)
    for _ in range(_FRAMES):
        if f is None:
            return None
        if "self" in f.f_code.co_varnames:
            s = f.f_locals.get("self")
            if isinstance(s, ddp_type):
                inner = s.module
                if inner is module or any(m is module for m in inner.modules()):
                    return s
        f = f.f_back
    return None


class _Quiet:
    """What a pickled or copied model's look-out hook becomes: nothing."""

    def __call__(self, *_: Any) -> None:
        return None


def _quiet() -> _Quiet:
    return _Quiet()


class _Look:
    """The forward pre-hook of :func:`watch_ddp_around` (a class, so models pickle)."""

    def __init__(self, logger: Any, dist: Any, ddp_type: type, compiling: Any) -> None:
        self.logger, self.dist, self.ddp_type, self.compiling = logger, dist, ddp_type, compiling
        self.looks = 0
        self.handle: Any = None
        self.made: CommWatch | None = None  # the watch it began (not one there before)

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _quiet, ()

    def __call__(self, mod: Any, _args: Any) -> None:
        if self.compiling():  # traced by torch.compile: nothing to look at, no graph break
            return
        try:
            done = not self.dist.is_initialized()  # no process group now: no DDP calls this
            if not done:
                ddp = _ddp_caller(mod, self.ddp_type)
                self.looks += 1
                done = self.looks >= _LOOKS
                if ddp is not None:
                    self.made = _watch_new(ddp, self.logger)
                    done = True
        except Exception:  # never into the training loop
            done = True
        if done and self.handle is not None:
            self.handle.remove()
            self.handle = None


def watch_ddp_around(module: Any, logger: Any = None) -> Any:
    """:func:`watch_ddp` for the DDP model that wraps ``module``, whichever it is and
    whenever it is made: ``instrument(net)`` before ``DistributedDataParallel(net)``, and the
    callbacks, which are handed the inner model. A forward pre-hook on ``module`` looks in
    its callers for the DDP forward calling it, watches that model and takes itself away (as
    it does at once without a process group, or after a few forwards that find none).
    Returns the hook's handle, or None when there is nothing to look for."""
    try:
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel
    except Exception:  # torch without distributed
        return None
    if not dist.is_available() or not hasattr(module, "register_forward_pre_hook"):
        return None
    look = _Look(logger, dist, DistributedDataParallel, torch.compiler.is_compiling)
    look.handle = module.register_forward_pre_hook(look)
    look.handle._stagewatch_look = look  # for watch_model_ddp's undo
    return look.handle


def _watch_new(ddp: Any, logger: Any) -> CommWatch | None:
    """:func:`watch_if_ddp`, returning the watch only when this call began it (a watch
    there before, the user's own, is theirs to keep)."""
    before = getattr(ddp, "_stagewatch_comm", None)
    fresh = not isinstance(before, CommWatch) or before.detached
    w = watch_if_ddp(ddp, logger)
    return w if fresh else None


class _Undo:
    """What :func:`watch_model_ddp` returns: ``remove()`` takes the look-out hook away and
    detaches the DDP watch it began (``instrument``'s handle calls it at ``remove()``)."""

    def __init__(self, handle: Any = None, made: CommWatch | None = None) -> None:
        self.handle, self.made = handle, made

    def remove(self) -> None:
        handle, self.handle = self.handle, None
        look = getattr(handle, "_stagewatch_look", None)
        if handle is not None:
            handle.remove()
        made = self.made or (look.made if look is not None else None)
        self.made = None
        if look is not None:
            look.made = None
        if made is not None:
            made.detach()


def watch_model_ddp(model: Any, logger: Any = None) -> _Undo | None:
    """What ``instrument`` applies: :func:`watch_if_ddp` when ``model`` is a DDP model, else
    :func:`watch_ddp_around` for the DDP model that may wrap it later. Returns what undoes
    it (``remove()``: the look-out hook, and the watch when this began it), or None."""
    try:
        from torch.nn.parallel import DistributedDataParallel
    except Exception:  # torch without distributed
        return None
    if isinstance(model, DistributedDataParallel):
        made = _watch_new(model, logger)
        return _Undo(made=made) if made is not None else None
    handle = watch_ddp_around(model, logger)
    return _Undo(handle) if handle is not None else None
