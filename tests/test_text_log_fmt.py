"""The text log's block formatting in C (stagewatch/timing/_fmt.c) gives ``%``'s bytes."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stagewatch.timing import TimingLogger, text_log

_fmt = pytest.importorskip("stagewatch.timing._fmt", reason="the C extension is not built")
render = _fmt.render

SPECS = ["%9.2f", "%5.1f", "%.2f", "%.1f", "%.0f", "%.4f", "%12.3f", "%1.2f"]
# ties of the decimal kind (2.675 is below its tie in binary, 0.125 is one), the edges of
# the fast path, and what only the fallback sees
EDGES = [
    0.0,
    -0.0,
    0.125,
    0.135,
    0.005,
    0.015,
    2.5,
    3.5,
    -2.5,
    2.675,
    1.005,
    5e-324,
    3.9e13,
    4e13,
    4e15,
    1e300,
    math.nan,
    math.inf,
    -math.inf,
    99999999999.995,
]


def _double_from_bits(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


@settings(max_examples=800, deadline=None)
@given(st.sampled_from(SPECS), st.floats(allow_nan=True, allow_infinity=True))
@example("%9.2f", 0.125)
@example("%5.1f", 0.25)
@example("%9.2f", -0.0)
def test_one_float_as_percent_formats_it(spec: str, x: float) -> None:
    assert render(spec, (x,)) == spec % (x,)
    if spec == "%9.2f":  # the text log's Total line was an f-string: the same text
        assert spec % (x,) == f"{x:9.2f}"


@settings(max_examples=800, deadline=None)
@given(st.sampled_from(SPECS), st.integers(0, 10**7), st.sampled_from([1, 2, 3, 4]))
def test_decimal_ties_and_their_neighbours(spec: str, k: int, digits: int) -> None:
    """k / 10^d + half a unit of the spec's last place, and the doubles either side."""
    x = k / 10**digits + 0.5 / 10 ** int(spec[-2])
    (bits,) = struct.unpack("<Q", struct.pack("<d", x))
    for b in (bits - 1, bits, bits + 1):
        y = _double_from_bits(b)
        assert render(spec, (y,)) == spec % (y,)
        assert render(spec, (-y,)) == spec % (-y,)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=1e12), min_size=1, max_size=30),
    st.integers(0, 10**12),
)
def test_a_block_template(xs: list[float], step: int) -> None:
    t = "Step %d\n" + "a%%b : %9.2fms (%5.1f%%)\n" * len(xs)
    vals = (step, *(v for x in xs for v in (x, 100.0 * x / 3.0)))
    assert render(t, vals) == t % vals


@pytest.mark.parametrize(
    ("template", "values"),
    [
        ("%s %9.2f", ("a", 1.0)),  # another conversion
        ("%-9.2f|", (1.0,)),  # a flag
        ("%09.2f", (1.5,)),
        ("%d", (True,)),  # not an exact int
        ("%d", (10**30,)),
        ("%9.2f", (1,)),  # not a float
        ("é %9.2f", (1.25,)),  # not ASCII
        ("%.7f", (1.25,)),  # a precision over 4
    ],
)
def test_what_it_does_not_handle_goes_to_percent(template: str, values: tuple) -> None:
    assert render(template, values) == template % values


@pytest.mark.parametrize(("template", "values"), [("%d %d", (1,)), ("%9.2f", ("x",)), ("%", ())])
def test_errors_are_percents_errors(template: str, values: tuple) -> None:
    with pytest.raises(TypeError if values else ValueError):
        template % values
    with pytest.raises(TypeError if values else ValueError):
        render(template, values)


def test_the_text_log_is_the_same_without_the_extension(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same run's text log, with the C formatting and with Python's ``%``."""
    import itertools
    import random

    from stagewatch.timing import regions

    def run(name: str) -> bytes:
        rnd = random.Random(7)
        ticks = itertools.count()
        monkeypatch.setattr(regions, "_perf", lambda: next(ticks) * 0.0123456)
        lg = TimingLogger(tmp_path, enable_console=False, run_id=name, collect_memory=False)
        for i in range(60):
            for r in ("data", "fwd", "fwd/a", "fwd/b", "bwd", "bwd/x%y"):
                for _ in range(1 + (i % 3 == 0 and r == "fwd/a")):
                    lg.log(r, rnd.choice([0.125, 0.005, 2.675, rnd.uniform(0, 50)]))
            lg.step()
        lg.close()
        return (tmp_path / name / "timing_rank0.log").read_bytes()

    fast = run("fast")
    monkeypatch.setattr(text_log, "render", str.__mod__)
    assert run("slow") == fast


def test_stagewatch_pure_python_selects_percent() -> None:
    import os
    import subprocess
    import sys

    code = "from stagewatch.timing import text_log; print(text_log.render is str.__mod__)"
    env = {**os.environ, "STAGEWATCH_PURE_PYTHON": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "True"
    assert text_log.render is render  # this process: the extension
