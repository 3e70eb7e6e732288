"""Fixtures shared by the test files."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from stagewatch.timing import lifecycle, set_global_timing_logger

# Slow-step capture is on by default; a machine hiccup in a test would start torch.profiler at
# random. Off for the suite (and its subprocesses); tests/test_capture.py turns it on.
os.environ.setdefault("STAGEWATCH_CAPTURE", "0")


@pytest.fixture(autouse=True)
def _no_leftover_timing_logger() -> Iterator[None]:
    """No test leaves a global or open timing logger behind for the next one."""
    yield
    set_global_timing_logger(None)
    for lg in list(lifecycle._open_loggers):
        lg.close()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread: tiny ops on a shared 2-core machine are many times faster."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
