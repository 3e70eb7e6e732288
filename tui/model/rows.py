"""What the fold takes in: validated step rows and blocks, and the monitor's limits.

The source (:mod:`tui.source.decode`) makes them from decoded lines; the aggregate folds
them. Torch- and Textual-free.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from stagewatch import records


class LIMITS:
    """What the monitor accepts: the record format's limits (``stagewatch.records``:
    every line the timing core writes is read back) plus the screen's display bounds."""

    MAX_LINE_BYTES = records.MAX_LINE_BYTES  # a longer line is one malformed line
    MAX_MS = records.MAX_MS  # 0 <= region ms, wall_ms < MAX_MS
    MAX_INT = records.MAX_INT  # |step|, epoch, samples, call counts, start/total steps...
    MAX_CALLS = records.MAX_INT
    MAX_VALUE = records.MAX_ABS_NUMBER  # |scalar|, |metric| < MAX_VALUE
    MAX_BYTES = records.MAX_BYTES_VALUE  # 0 <= memory bytes < MAX_BYTES
    MAX_NAME_CHARS = records.MAX_NAME_CHARS  # region, scalar and metric names
    MAX_JSON_DEPTH = records.MAX_DEPTH  # nesting, the run_start config included
    MAX_TIME = records.MAX_TIME  # |time| in seconds
    MAX_VERSION_DIGITS = records.MAX_VERSION_DIGITS  # "MAJOR.MINOR", ASCII digits only
    MAX_NAME_DEPTH = 64  # region name levels the tree shows (deeper: one "…" row)
    MAX_TREE_ROWS = 4096  # rows of a run's stage tree (more: one "…" row)


class StepRow(NamedTuple):
    """A validated step: ``keys`` are the region names, in the order of ``regions``."""

    step: int
    time: float
    wall: float
    samples: int
    epoch: int
    keys: tuple[str, ...]
    regions: dict[str, Any]  # name -> (ms, calls), validated
    memory: dict[str, Any] | None
    scalars: dict[str, Any] | None


class StepBlock:
    """Consecutive validated steps of one region schema, their values already in arrays.

    ``msgs`` are the decoded lines (regions raw); row i of ``ms``/``calls`` holds the values
    of ``msgs[i]``, one column per name of ``keys``. Only the reader's bulk path makes them.
    """

    __slots__ = ("bkeys", "calls", "keys", "ms", "msgs")

    def __init__(self, keys: tuple[str, ...], bkeys: tuple[bytes, ...], cap: int) -> None:
        self.keys = keys
        self.bkeys = bkeys
        self.msgs: list[Any] = []
        self.ms = np.empty((cap, len(keys)))
        self.calls = np.empty((cap, len(keys)))

    def keep_rows(self, keep: list[bool]) -> None:
        """Drop the steps whose ``keep`` is False (one flag per step, in order)."""
        idx = [i for i, k in enumerate(keep) if k]
        self.ms[: len(idx)] = self.ms[idx]
        self.calls[: len(idx)] = self.calls[idx]
        self.msgs = [self.msgs[i] for i in idx]
