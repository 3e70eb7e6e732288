"""The forward of a module :func:`~stagewatch.timing.instrument.instrument` times:
:class:`TimedForward`, what ``module.forward`` is while the module is timed."""

from __future__ import annotations

from threading import get_ident as _ident
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
    Trainer reads a model's forward signature). A copy or pickle of the module gets the
    forward it had before (:func:`untimed_forward`)."""

    __slots__ = ("__wrapped__", "module", "prior", "probe")

    def __init__(self, probe: Any, module: Any) -> None:
        self.probe: Any = probe  # its Probe; None once taken away
        self.module = module
        self.prior = module.__dict__.get("forward")  # a forward the instance had (kept)
        self.__wrapped__ = module.forward
        module.__dict__["forward"] = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        probe = self.probe
        if probe is None:  # taken away, but another wrapper holds this one
            return self.__wrapped__(*args, **kwargs)
        inst = probe.inst
        # inside compiled code: dynamo traces is_dynamo_compiling() as True (nothing timed
        # in the graph); the flag is what is_compiling() returns outside dynamo (export)
        if inst.dynamo() or inst.compiler._is_compiling_flag:
            return self.__wrapped__(*args, **kwargs)
        if inst.graph_task() != -1:  # a re-run under a checkpoint, in the backward
            return probe.rerun(self.__wrapped__, args, kwargs)
        tls = inst._tls if _ident() == inst._tid else inst.thread_state()
        frame, replaced = probe.enter(args, kwargs, tls)
        if frame is None:
            return self.__wrapped__(*args, **kwargs)
        if replaced is not None:
            args, kwargs = replaced
        try:
            out = self.__wrapped__(*args, **kwargs)
        except BaseException:
            probe.leave(frame, None, tls)  # the region still ends
            raise
        probe.leave(frame, out, tls)
        return out

    def __reduce__(self) -> Any:
        return (untimed_forward, (self.prior, self.module))

    def remove(self) -> None:
        """Put the module's own forward back (if another wrapper went on top of this one
        since, this one stays in it and only passes calls through)."""
        self.probe = None
        d = self.module.__dict__
        if d.get("forward") is self:
            if self.prior is None:
                del d["forward"]
            else:
                d["forward"] = self.prior

    def __repr__(self) -> str:
        return f"<timed {self.__wrapped__!r}>"


def untimed_forward(prior: Any, module: Any) -> Any:
    """The forward of a copy of a timed module: the one the instance had, else its class's."""
    return prior if prior is not None else type(module).forward.__get__(module)
