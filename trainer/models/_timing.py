"""Thin bridge between the model and the timing core (``stagewatch.timing``).

The model's module regions come from ``stagewatch.instrument`` (forward regions nest under
the caller's, so the trainer's ``timed("forward")`` makes them ``forward/vrt/stage1``;
backward regions are absolute). Checkpointed blocks charge their re-run themselves
(:func:`recompute`); a few inner regions (the spike attention's chunks) use :func:`region`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

try:  # the timing core may be absent in a stripped-down install; the model still runs
    from stagewatch.timing import get_global_timing_logger as _get_logger
    from stagewatch.timing import timed as _timed
    from stagewatch.timing.instrument import recompute_region as _recompute_region
except ImportError:  # pragma: no cover - exercised only without stagewatch.timing
    _get_logger = None
    _timed = None
    _recompute_region = None


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


def recompute(log: Any, name: str) -> contextlib.AbstractContextManager[Any]:
    """Charge a checkpointed block's re-run to ``name`` (absolute) on ``log``; the modules
    re-run inside are then not charged again by ``stagewatch.instrument``."""
    if _recompute_region is None:  # pragma: no cover - only without stagewatch.timing
        return absolute(log, name)
    return _recompute_region(log, name)


@contextlib.contextmanager
def absolute(log: Any, name: str) -> Iterator[None]:
    """Time ``name`` (absolute) on ``log`` via begin/end; safe on autograd threads."""
    h = log.begin(name)
    try:
        yield
    finally:
        log.end(h)
