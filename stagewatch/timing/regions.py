"""Regions: the no-op path, CPU and CUDA regions, the decorator, and the global logger.

Hot-path rules: a region costs about a microsecond on CPU (``perf_counter``), a CUDA
region costs two event records and never a synchronize; with no logger (or a disabled
one) every call is a no-op of a few tens of nanoseconds.

A region writes into its logger's per-step state (``_tls``, ``_lock``, ``_cur``,
``_cur_ev``, ``_pool``) directly: a method call per region would be measurable.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from stagewatch.timing.clean import WarnOnce

ENV_SWITCH = "STAGEWATCH_TIMING"

F = TypeVar("F", bound=Callable[..., Any])
# The one clock of the CPU path. The logger reads it through this module at each call, so a
# clock patched here (tests) drives regions and step() alike.
_perf = time.perf_counter


def env_disabled() -> bool:
    """True when env ``STAGEWATCH_TIMING`` is ``0``/``false``/``off``/``no``."""
    v = os.environ.get(ENV_SWITCH)
    return v is not None and v.strip().lower() in ("0", "false", "off", "no")


_ENV_OFF = env_disabled()  # read once at import: decorators applied now stay plain functions


class Owner(Protocol):
    """What a region uses of its logger (:class:`~stagewatch.timing.logger.TimingLogger`)."""

    enabled: bool
    _closed: bool
    _tls: threading.local
    _lock: Any
    _cur: dict[str, list[float]]
    _cur_ev: list[tuple[str, Any, Any]]
    _pool: Any
    _gregion_cls: Callable[..., Any]

    def region(self, name: str) -> Any: ...
    def log(self, name: str, ms: float) -> None: ...
    def _bad_name(self, name: Any) -> Any: ...


# --------------------------------------------------------------------------- no-op path


class _Noop:
    """Shared do-nothing region (context manager and decorator)."""

    __slots__ = ("name",)

    def __init__(self, name: str = "") -> None:
        self.name = name

    def __enter__(self) -> _Noop:
        return self

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        return None

    def __call__(self, fn: F) -> F:
        return _decorate(fn, self.name, None)


NOOP = _Noop()
_noops: dict[str, _Noop] = {}


def noop_for(name: Any) -> _Noop:
    """The shared no-op region of ``name`` (:data:`NOOP` for a name that is not a string)."""
    if type(name) is not str:
        return NOOP
    r = _noops.get(name)
    if r is None:
        r = _Noop(name)
        if len(_noops) < 1024:  # bounded even if names are generated
            _noops[name] = r
    return r


def _decorate(fn: F, name: str, logger: Owner | None) -> F:
    """Wrap ``fn`` in a region; ``logger=None`` means the global logger at call time."""
    if _ENV_OFF:
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        lg = _active if logger is None else logger
        if lg is None or not lg.enabled:
            return fn(*args, **kwargs)
        with lg.region(name):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------- regions


def _unlink(stack: list[Any], region: Any) -> bool:
    """Remove ``region`` from a stack it is not on top of (generators, coroutines and
    threads can interleave regions); later regions keep their correct parents. False when
    it is not on the stack: ``step()`` already closed it."""
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is region:
            del stack[i]
            return True
    return False


class CpuRegion:
    """A region timed by ``perf_counter``; nesting-aware through a per-thread stack.

    The stack holds the open region objects themselves, so the parent of a new region is
    ``stack[-1]._full``; each object keeps its own name and start time.
    """

    __slots__ = ("_full", "_lg", "_name", "_stack", "_t0")
    _bound = True  # decorator uses this logger (False: the global one at call time)

    def __init__(self, lg: Owner, name: str) -> None:
        self._lg = lg
        self._name = name

    def _push(self) -> None:
        tls = self._lg._tls
        try:
            stack = tls.stack
        except AttributeError:
            stack = tls.stack = []
        name = self._name
        if name[:1] == "/":
            self._full = name[1:]
        elif stack:
            self._full = stack[-1]._full + "/" + name
        else:
            self._full = name
        self._stack = stack
        stack.append(self)

    def __enter__(self) -> CpuRegion:
        # _push() inlined: this is the CPU hot path, where a method call is measurable
        tls = self._lg._tls
        try:
            stack = tls.stack
        except AttributeError:
            stack = tls.stack = []
        name = self._name
        if name[:1] == "/":
            self._full = name[1:]
        elif stack:
            self._full = stack[-1]._full + "/" + name
        else:
            self._full = name
        self._stack = stack
        stack.append(self)
        self._t0 = _perf()
        return self

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        ms = (_perf() - self._t0) * 1000.0
        stack = self._stack
        if stack and stack[-1] is self:
            stack.pop()
        elif not _unlink(stack, self):
            return  # closed by step() (open across it) and charged there
        lg = self._lg
        full = self._full
        lock = lg._lock
        lock.acquire()  # explicit acquire/release: ~100 ns cheaper than "with lock"
        try:
            acc = lg._cur.get(full)
            if acc is None:
                lg._cur[full] = [ms, 1]
            else:
                acc[0] += ms
                acc[1] += 1
        finally:
            lock.release()

    def __call__(self, fn: F) -> F:
        return _decorate(fn, self._name, self._lg if self._bound else None)

    def _cut(self, now: float) -> None:
        """Close at ``step()`` (called with the logger's lock held): charge its time so far."""
        ms = (now - self._t0) * 1000.0
        acc = self._lg._cur.get(self._full)
        if acc is None:
            self._lg._cur[self._full] = [ms, 1]
        else:
            acc[0] += ms
            acc[1] += 1


def fold_raw(raw: list[tuple[str, float]], cur: dict[str, list[float]]) -> dict[str, list[float]]:
    """Add the ``(name, ms)`` pairs appended to ``raw`` so far into ``cur`` (at ``step()``,
    the logger's lock held) and take them off ``raw``; a pair appended meanwhile by another
    thread stays for the next step (``del`` of a slice is one step under the GIL). Returns
    ``cur``.

    ``raw``: the regions :func:`~stagewatch.timing.instrument.instrument`'s hooks time on a
    CPU logger, appended there instead of a lock and a dict update per region."""
    n = len(raw)
    for name, ms in raw[:n]:
        acc = cur.get(name)
        if acc is None:
            cur[name] = [ms, 1]
        else:
            acc[0] += ms
            acc[1] += 1
    del raw[:n]
    return cur


def cut_open(stack: list[CpuRegion], now: float, warn_once: WarnOnce) -> None:
    """Close the regions still open on this thread at ``step()`` (the logger's lock held):
    their time so far counts in this step, their own exit later does nothing."""
    names = ", ".join(repr(r._full) for r in stack[:3]) + (", ..." if len(stack) > 3 else "")
    warn_once(
        "open",
        f"step() with region(s) {names} still open: closed at this step() and charged to "
        "it (a region must end before step(); later regions are not nested under it)",
    )
    for r in reversed(stack):
        r._cut(now)
    stack.clear()


class CudaRegion(CpuRegion):
    """A region timed by a pair of CUDA events from the logger's pool."""

    __slots__ = ()

    def __enter__(self) -> CudaRegion:
        self._push()
        ev = self._lg._pool.get()  # type: ignore[union-attr]
        ev.record()
        self._t0 = ev
        return self

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        lg = self._lg
        stack = self._stack
        if stack and stack[-1] is self:
            stack.pop()
        elif not _unlink(stack, self):
            return  # closed by step() (open across it) and charged there
        end = lg._pool.get()  # type: ignore[union-attr]
        end.record()
        lock = lg._lock
        lock.acquire()
        try:
            lg._cur_ev.append((self._full, self._t0, end))
        finally:
            lock.release()

    def _cut(self, now: float) -> None:
        end = self._lg._pool.get()  # type: ignore[union-attr]
        end.record()
        self._lg._cur_ev.append((self._full, self._t0, end))


class GlobalCpuRegion(CpuRegion):
    __slots__ = ()
    _bound = False


class GlobalCudaRegion(CudaRegion):
    __slots__ = ()
    _bound = False


# --------------------------------------------------------------------------- globals

# Set by the logger module's set_global_timing_logger (the public function lives with the
# logger's type): _global is what get_global_timing_logger() returns, _active the global
# logger if it is enabled and open, else None.
_global: Any = None
_active: Owner | None = None


def deactivate(logger: Owner) -> None:
    """``logger`` is closing: if it is the global one, :func:`timed` becomes a no-op."""
    global _active
    if _active is logger:
        _active = None


def timed(name: str) -> Any:
    """Time a region of the global logger: ``with timed("forward"):`` or ``@timed("data")``.

    Nested regions get path names (``forward/vrt``) unless the name starts with ``/``.
    A no-op when there is no global logger or timing is off. Use one ``with`` per object.
    """
    lg = _active
    if lg is None:
        try:
            return _noops[name]  # indexing is ~20 ns cheaper than .get() on this path
        except (KeyError, TypeError):  # TypeError: an unhashable name
            return noop_for(name)
    if type(name) is not str:
        return lg._bad_name(name)
    return lg._gregion_cls(lg, name)


def log_timing(name: str, ms: float) -> None:
    """Add ``ms`` milliseconds (measured by you) to region ``name`` of the current step."""
    lg = _active
    if lg is not None:
        lg.log(name, ms)
