"""The ranks' recent rows ``(step, *RECENT_COLUMNS)`` as one (steps, ranks, columns) table
over the steps every rank has: what the straggler verdict compares.

The usual live run (every rank the same steps, in order) takes one pass of numpy calls over
the ranks' rows stacked; ranks with other steps, repeated steps or missing walls take the
general path, rank by rank. Both give the same table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from tui.model.phases import RECENT_COLUMNS

#: columns of the per-step table (after the step number): RECENT_COLUMNS
_NCOL = len(RECENT_COLUMNS)
_WIDTH = 1 + _NCOL


def _rank_table(rows: Sequence[Sequence[float]] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One rank's rows as (sorted unique steps, (steps, RECENT_COLUMNS) values): rows with
    a finite wall only, a repeated step's later row winning, missing columns NaN."""
    try:
        a = np.array(rows, dtype=np.float64)
    except ValueError:  # rows of different lengths
        a = np.zeros((0, 0))
    if a.ndim != 2 or a.shape[1] != _WIDTH:
        pad = (math.nan,) * _NCOL
        a = np.array([(tuple(row) + pad)[:_WIDTH] for row in rows], dtype=np.float64)
    a = a[np.isfinite(a[:, 1])]
    steps = a[:, 0].astype(np.int64)
    uniq, first_rev = np.unique(steps[::-1], return_index=True)
    return uniq, a[len(a) - 1 - first_rev, 1:]


def _aligned(
    rows: list[Sequence[Sequence[float]] | np.ndarray], window: int | None
) -> tuple[list[int], np.ndarray] | None:
    """:func:`_per_step`'s (steps, table) when every rank has the same steps, in increasing
    order, each with a finite wall (the usual live run); None otherwise."""
    if all(isinstance(r, np.ndarray) for r in rows):
        shapes = {r.shape for r in rows}  # type: ignore[union-attr]
        if len(shapes) != 1:
            return None
        a = np.stack(rows)  # type: ignore[arg-type]
    else:
        try:
            a = np.array(rows, dtype=np.float64)
        except ValueError:  # ranks of other lengths
            return None
    if a.ndim != 3 or a.shape[2] != _WIDTH or not a.shape[1]:
        return None
    steps = a[0, :, 0]
    ints = steps.astype(np.int64)
    if not (
        (a[:, :, 0] == steps).all()
        and (ints == steps).all()
        and (np.diff(ints) > 0).all()
        and np.isfinite(a[:, :, 1]).all()
    ):
        return None
    k = min(len(ints), window) if window else len(ints)
    x = np.ascontiguousarray(a[:, len(ints) - k :, 1:].transpose(1, 0, 2))
    return ints[len(ints) - k :].tolist(), x


def _per_step(
    per_rank: Mapping[int, Sequence[Sequence[float]]],
    window: int | None,
    arrays: Mapping[int, np.ndarray] | None = None,
) -> tuple[list[int], list[int], np.ndarray] | None:
    """(ranks, steps, (steps, ranks, columns) array of RECENT_COLUMNS, NaN where missing)
    over the steps every rank has; None with fewer than two ranks or no common step.
    ``arrays``: a rank's rows as an array already (``np.array(rows)``), where known."""
    ranks = sorted(r for r, rows in per_rank.items() if rows)
    if len(ranks) < 2:
        return None
    got = arrays or {}
    rows = [got.get(r, per_rank[r]) for r in ranks]
    fast = _aligned(rows, window)
    if fast is not None:
        x = fast[1]
        x[np.isinf(x)] = np.nan
        return ranks, fast[0], x
    tables = [_rank_table(r) for r in rows]
    common = tables[0][0]
    for st, _ in tables[1:]:
        common = np.intersect1d(common, st, assume_unique=True)
    if window:
        common = common[-window:]
    if not len(common):
        return None
    x = np.stack([v[np.searchsorted(st, common)] for st, v in tables], axis=1)
    x[np.isinf(x)] = np.nan
    return ranks, common.tolist(), x
