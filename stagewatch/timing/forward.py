"""The forward of a module :func:`~stagewatch.timing.instrument.instrument` times:
:class:`TimedForward`, what ``module.forward`` is while the module is timed."""

from __future__ import annotations

import inspect
from threading import get_ident as _ident
from types import FunctionType
from typing import Any


class TimedForward:
    """A timed module's ``forward`` while it is timed: :meth:`Probe.enter`, the module's own
    forward, :meth:`Probe.leave`. It is put in the module's ``__dict__``, so ``module(...)``
    finds it where it finds ``forward``: after the module's forward pre-hooks, before its
    forward hooks. A direct ``module.forward(...)`` call is timed too.

    Not module hooks: a module with any hook takes torch's slow call path (``_call_impl``
    makes a closure and a set and walks the hook dicts on every call); two empty hooks on
    each of the benchmark model's 7 modules cost ~0.11 ms of its training step, an empty
    wrapper ~0.06 ms (benchmarks/bench_instrument_ab.py, docs/benchmarks.md).
    ``inspect.signature`` reads the wrapped forward's (``__wrapped__``: Hugging Face's
    Trainer reads a model's forward signature).

    A copy of the module (``copy.copy``, ``copy.deepcopy``, pickle, ``torch.save``) gets the
    forward it had before, untimed: the module's own ``__getstate__`` is wrapped on the
    instance too (:func:`state_of`), so the copy's state lacks this wrapper. Without it a
    shallow copy would share this wrapper, which calls the *original* module's forward (the
    copy's own attributes ignored), and a deep copy or pickle would keep a bound forward
    in its ``__dict__`` (a reference cycle; a pickle naming stagewatch). DataParallel's
    replicas (``_replicate_for_data_parallel``, a copy of ``__dict__``) each get a wrapper
    of their own forward (:func:`replicate`). Both are instance attributes, read only when
    a copy is made: nothing per call.

    What module hooks got for free, kept: a class swapped in later (FSDP2's ``fully_shard``)
    has its own forward called (re-bound at the next call: one type check per call); a
    forward set on the instance later (``module.forward = f``) is wrapped in turn at the
    end of the next backward pass (``Probe.rewrap``); a class whose ``forward`` is a
    property is refused at ``instrument`` (``modules.forward_replaceable``)."""

    __slots__ = ("__qualname__", "__wrapped__", "cls", "fn", "module", "own", "prior", "probe")

    def __init__(self, probe: Any, module: Any) -> None:
        d = module.__dict__
        old = d.get("forward")
        if type(old) is TimedForward and old.probe is None and old.module is module:
            old.remove()  # one taken away (a copy's, one put back by another wrapper)
        self._init(probe, module, d.get("forward"), module.forward)
        d["forward"] = self
        for k, v in self.own.items():
            if k not in d:  # (an instance's own: left as it is)
                d[k] = v

    def _init(self, probe: Any, module: Any, prior: Any, wrapped: Any) -> None:
        self.probe: Any = probe  # its Probe; None once taken away
        self.module = module
        self.prior = prior  # a forward the instance had (kept)
        self.__wrapped__ = wrapped  # as it was here (inspect.signature reads it)
        qualname = getattr(wrapped, "__qualname__", None)
        if isinstance(qualname, str):
            self.__qualname__ = qualname
        # what a call runs, bound: the class's forward, re-bound when another class is
        # swapped in (FSDP2's fully_shard does; module(...) finds the new class's, and
        # Hugging Face's checkpointed layers checkpoint only from their class's own
        # outermost forward), else the instance's own as it was
        self.fn = wrapped
        self.cls = type(module)
        # what a copy of the module reads (instance attributes before the class's methods)
        self.own = {
            "__getstate__": _Own(self, state_of, "__getstate__"),
            "_replicate_for_data_parallel": _Own(self, replicate, "_replicate_for_data_parallel"),
        }

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        probe = self.probe
        if probe is None:  # taken away, but another wrapper holds this one
            return self._call(args, kwargs)
        inst = probe.inst
        # inside compiled code: dynamo traces is_dynamo_compiling() as True (nothing timed
        # in the graph); the flag is what is_compiling() returns outside dynamo (export)
        if inst.dynamo() or inst.compiler._is_compiling_flag:
            return self._call(args, kwargs)
        if inst.graph_task() != -1:  # a re-run under a checkpoint, in the backward
            return probe.rerun(self.current(), args, kwargs)
        tls = inst._tls if _ident() == inst._tid else inst.thread_state()
        frame, replaced = probe.enter(args, kwargs, tls)
        if frame is None:
            return self._call(args, kwargs)
        if replaced is not None:
            args, kwargs = replaced
        fn = self.fn
        if type(self.module) is not self.cls:  # a class swapped in since (FSDP2's)
            fn = self._rebind()
        try:
            out = fn(*args, **kwargs)
        except BaseException:
            probe.leave(frame, None, tls)  # the region still ends
            raise
        probe.leave(frame, out, tls)
        return out

    def _call(self, args: Any, kwargs: Any) -> Any:
        return self.current()(*args, **kwargs)

    def current(self) -> Any:
        """The forward this one calls now."""
        return self.fn if type(self.module) is self.cls else self._rebind()

    def _rebind(self) -> Any:
        """The module's class changed since the forward was bound: its class's forward
        (unless the instance has its own, or the class's is not a plain function)."""
        m = self.module
        self.cls = type(m)
        if self.prior is None and _plain(self.cls):
            self.fn = self.cls.forward.__get__(m)
        return self.fn

    def __reduce__(self) -> Any:
        return (untimed_copy, (self.prior, self.module))

    # A function's attributes, read as the wrapped forward's: ``__code__`` (non-strict
    # torch.export reads the exported module's forward's), ``__name__``... Properties, not
    # ``__getattr__`` (dynamo then guards this object's attributes another way, and fails);
    # not ``__func__``/``__self__``: code that finds them rebinds the function itself
    # (accelerate's autocast wrapper), leaving the module untimed. (``__qualname__`` is a
    # slot: a class's own must be a string.)
    __name__ = property(lambda self: self.__wrapped__.__name__)
    __code__ = property(lambda self: self.__wrapped__.__code__)
    __globals__ = property(lambda self: self.__wrapped__.__globals__)
    __defaults__ = property(lambda self: self.__wrapped__.__defaults__)
    __kwdefaults__ = property(lambda self: self.__wrapped__.__kwdefaults__)
    __annotations__ = property(lambda self: self.__wrapped__.__annotations__)  # get_type_hints

    def remove(self) -> None:
        """Put the module's own forward back (if another wrapper went on top of this one
        since, this one stays in it and only passes calls through; where that wrapper keeps
        it in the module, as accelerate's ``_old_forward``, the module's own goes there)."""
        self.probe = None
        d = self.module.__dict__
        _untimed(d, self)
        for k, v in self.own.items():
            if d.get(k) is v:
                del d[k]

    def __repr__(self) -> str:
        return f"<timed {self.__wrapped__!r}>"


def _plain(cls: type) -> bool:
    """Whether ``cls.forward`` is a plain function (not a property, a staticmethod...)."""
    return isinstance(inspect.getattr_static(cls, "forward", None), FunctionType)


class _Own:
    """A method of the timed module's, on the instance: ``fn(fwd)``. A copy of it (a class
    whose ``__deepcopy__`` copies the module's ``__dict__`` as it is: parametrize's,
    ``GraphModule``'s) is the copy's own method, from its class."""

    __slots__ = ("fn", "fwd", "name")

    def __init__(self, fwd: TimedForward, fn: Any, name: str) -> None:
        self.fwd, self.fn, self.name = fwd, fn, name

    def __call__(self) -> Any:
        return self.fn(self.fwd)

    def __reduce__(self) -> Any:
        return (_Own, (self.fwd, self.fn, self.name))


def untimed_copy(prior: Any, module: Any) -> TimedForward:
    """A copy of a timed forward (where a copy of the module holds it: another wrapper's
    ``__wrapped__``, a ``__dict__`` copied as it is): taken away, for the copy of the
    module; it calls the forward the instance had, else its class's."""
    fwd = object.__new__(TimedForward)
    wrapped = prior if prior is not None else type(module).forward.__get__(module)
    fwd._init(None, module, prior, wrapped)
    return fwd


def _untimed(d: dict[str, Any], fwd: TimedForward) -> None:
    """``d`` (a module's ``__dict__`` or a copy of it) without the forward ``fwd``: what it
    wrapped instead, wherever it is (``forward``; accelerate's ``_old_forward``, kept by a
    hook put on top of it, which puts it back as ``forward`` when taken away)."""
    for k in [k for k, v in d.items() if v is fwd]:
        if k == "forward" and fwd.prior is None:
            del d[k]
        else:
            d[k] = fwd.__wrapped__


def state_of(fwd: TimedForward) -> Any:
    """The timed module's ``__getstate__``: its class's, with the forward it had before this
    wrapper, and without the wrapper's instance attributes."""
    m = fwd.module
    state = type(m).__getstate__(m)
    if isinstance(state, dict):
        if state is m.__dict__:
            state = dict(state)
        for k, v in fwd.own.items():
            if state.get(k) is v:
                del state[k]
        _untimed(state, fwd)
    return state


def replicate(fwd: TimedForward) -> Any:
    """The timed module's ``_replicate_for_data_parallel``: a replica (a copy of the
    module's ``__dict__``) whose forward is its own, timed by the same probe."""
    m = fwd.module
    replica = type(m)._replicate_for_data_parallel(m)
    d = replica.__dict__
    for k, v in fwd.own.items():
        if d.get(k) is v:
            del d[k]
    _untimed(d, fwd)
    if fwd.probe is not None:
        TimedForward(fwd.probe, replica)
    return replica
