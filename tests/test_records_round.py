"""records._round: the writer's fast ``round(x, digits)`` gives ``round``'s value, always."""

from __future__ import annotations

import math
import struct

from hypothesis import example, given, settings
from hypothesis import strategies as st

from stagewatch.records import _round


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (
        a == b and math.copysign(1, a) == math.copysign(1, b)
    )


@settings(max_examples=1500, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([4, 6]))
@example(-1e-9, 6)  # rounds to -0.0
@example(0.00005, 4)  # a decimal tie, below it in binary
@example(1765000000.1234565, 6)
@example(1e12, 4)  # beyond the fast path
def test_as_round(x: float, digits: int) -> None:
    assert _same(_round(x, 10.0**digits, digits), round(x, digits))


@settings(max_examples=1500, deadline=None)
@given(st.integers(0, 2 * 10**15), st.sampled_from([4, 6]))
def test_near_decimal_ties(k: int, digits: int) -> None:
    x = (k + 0.5) / 10**digits
    (bits,) = struct.unpack("<Q", struct.pack("<d", x))
    for b in (bits - 1, bits, bits + 1):
        (y,) = struct.unpack("<d", struct.pack("<Q", b))
        assert _same(_round(y, 10.0**digits, digits), round(y, digits))
