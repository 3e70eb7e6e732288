"""Fixed-bucket log histograms of milliseconds, and percentiles of partly filled columns.

``PER_DECADE`` buckets per decade from 0.001 ms to 1e7 ms (~2.8 h), plus an underflow and an
overflow bucket: p50/p95 within ~3.7% (clamped to the exact min/max by the callers), at a
constant cost per value and a constant size per region.
"""

from __future__ import annotations

import math

import numpy as np

from tui.model.snapshot import NAN

PER_DECADE = 32
LO_EXP = -3  # 0.001 ms
HI_EXP = 7  # 1e7 ms (~2.8 h)
NBUCKETS = (HI_EXP - LO_EXP) * PER_DECADE + 2  # + underflow and overflow buckets
_LO = 10.0**LO_EXP


def hist_index(values: np.ndarray) -> np.ndarray:
    """Bucket of each value (ms) in the log histogram."""
    v = np.maximum(values, _LO * 0.5)
    idx = np.floor((np.log10(v) - LO_EXP) * PER_DECADE).astype(np.int64) + 1
    # not np.clip: its checks cost more than the arithmetic on the one-step fold of a live run
    return np.minimum(np.maximum(idx, 0), NBUCKETS - 1)


_EDGE = 1e-9  # a value this close to a bucket edge (in buckets) takes numpy's log10


def bucket_of(v: float) -> int:
    """``hist_index`` of one value in plain floats (a live step's wall: the numpy calls cost
    ~7 us). Near a bucket edge, where the C library's log10 and numpy's could differ in the
    last bit, and for NaN or infinity, numpy's own."""
    if v == v and -math.inf < v < math.inf:
        x = (math.log10(max(v, _LO * 0.5)) - LO_EXP) * PER_DECADE
        f = math.floor(x)
        if _EDGE < x - f < 1.0 - _EDGE:
            return min(max(int(f) + 1, 0), NBUCKETS - 1)
    return int(hist_index(np.array([v], dtype=np.float64))[0])


def bucket_value(i: int) -> float:
    """The value a bucket stands for: its geometric middle (the bounds for the outer ones)."""
    if i <= 0:
        return _LO
    if i >= NBUCKETS - 1:
        return 10.0**HI_EXP
    return 10.0 ** (LO_EXP + (i - 0.5) / PER_DECADE)  # geometric middle of the bucket


BUCKET_VALUES = np.array([bucket_value(i) for i in range(NBUCKETS)])


def hist_quantile(hist: np.ndarray, q: float, lo: float, hi: float) -> float:
    """Quantile ``q`` of a histogram row, clamped to the exact [lo, hi]."""
    c = np.cumsum(hist)
    total = int(c[-1]) if len(c) else 0
    if total == 0:
        return NAN
    k = int(np.searchsorted(c, max(1.0, math.ceil(q * total))))
    return float(min(max(bucket_value(k), lo), hi))


def hist_quantile_pair(
    hist: np.ndarray, q1: float, q2: float, lo: float, hi: float
) -> tuple[float, float]:
    """:func:`hist_quantile` at ``q1`` and ``q2`` on one cumulative sum (a live rank's
    step wall time, read by every snapshot)."""
    c = np.cumsum(hist)
    total = int(c[-1]) if len(c) else 0
    if total == 0:
        return NAN, NAN
    k1, k2 = np.searchsorted(c, [max(1.0, math.ceil(q1 * total)), max(1.0, math.ceil(q2 * total))])
    return (
        float(min(max(bucket_value(int(k1)), lo), hi)),
        float(min(max(bucket_value(int(k2)), lo), hi)),
    )


def hist_quantiles(
    hist: np.ndarray, qs: tuple[float, ...], lo: np.ndarray, hi: np.ndarray
) -> list[np.ndarray]:
    """:func:`hist_quantile` of every row of ``hist`` (regions × buckets) at once, per ``q``."""
    c = np.cumsum(hist, axis=1)
    tot = c[:, -1]
    return [
        np.clip(BUCKET_VALUES[(c < np.maximum(1, np.ceil(q * tot))[:, None]).sum(axis=1)], lo, hi)
        for q in qs
    ]


def col_percentile(srt: np.ndarray, n: np.ndarray, q: float) -> np.ndarray:
    """Per column, the ``q`` percentile (linear, as numpy's default) of its ``n`` first values
    (``srt`` sorted along axis 0)."""
    if srt.shape[0] == 0:
        return np.full(srt.shape[1], NAN)
    pos = q * np.maximum(n - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    cols = np.arange(srt.shape[1])
    a, b = srt[lo, cols], srt[hi, cols]
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, a + (b - a) * (pos - lo), NAN)


def col_percentiles(srt: np.ndarray, n: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
    """:func:`col_percentile` at each of ``qs`` in one pass of numpy calls (the same values,
    element by element): a snapshot reads every rank's window this way."""
    if srt.shape[0] == 0:
        return [np.full(srt.shape[1], NAN) for _ in qs]
    top = np.maximum(n - 1, 0)
    pos = np.asarray(qs, dtype=np.float64)[:, None] * top[None, :]
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, top[None, :])
    cols = np.arange(srt.shape[1])[None, :]
    a, b = srt[lo, cols], srt[hi, cols]
    with np.errstate(invalid="ignore"):
        out = np.where(n[None, :] > 0, a + (b - a) * (pos - lo), NAN)
    return list(out)
