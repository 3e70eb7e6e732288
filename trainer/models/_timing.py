"""Thin bridge between the model and the timing core (``stagewatch.timing``).

Forward regions use the core's nesting-aware ``timed(name)`` with relative names, so the
trainer's ``timed("forward")`` makes them ``forward/vrt/stage1`` and so on. Backward regions
are opened and closed by autograd hooks with absolute names through ``logger.begin/end``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

try:  # the timing core may be absent in a stripped-down install; the model still runs
    from stagewatch.timing import get_global_timing_logger as _get_logger
    from stagewatch.timing import timed as _timed
except ImportError:  # pragma: no cover - exercised only without stagewatch.timing
    _get_logger = None
    _timed = None


def active_logger() -> Any | None:
    """The global timing logger when one is set and enabled, else None."""
    if _get_logger is None:
        return None
    log = _get_logger()
    if log is None or not getattr(log, "enabled", False) or getattr(log, "_closed", False):
        return None
    return log


def region(name: str) -> contextlib.AbstractContextManager[Any]:
    """A forward region relative to the current one; a no-op without an enabled logger."""
    if _timed is None:
        return contextlib.nullcontext()
    return _timed(name)


def in_backward() -> bool:
    """True while the autograd engine runs a backward pass on this thread."""
    return torch._C._current_graph_task_id() != -1


@contextlib.contextmanager
def absolute(log: Any, name: str) -> Iterator[None]:
    """Time ``name`` (absolute) on ``log`` via begin/end; safe on autograd threads."""
    h = log.begin(name)
    try:
        yield
    finally:
        log.end(h)
