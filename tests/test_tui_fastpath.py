"""The reader's C fast path for step regions (tui/source/_regions.c, issue 13).

It may refuse anything (the typed decoder then decides), but what it accepts must be what
msgspec's typed decoder accepts, with bit-identical values; a run read with it and without
it gives the same snapshot and the same counts of bad lines.
"""

from __future__ import annotations

import json
import os
import random
import re
import struct
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagewatch.records import Region, Step, encode
from tui.source import decode
from tui.source.reader import RunSource
from tui.testing import write_run

pytestmark = pytest.mark.skipif(
    decode.scan_regions is None and not os.environ.get("CI"),
    reason="tui.source._regions not built (no C compiler at install): "
    "the reader runs its pure-Python path",
)

_typed = msgspec.json.Decoder(dict[str, Region]).decode
MAX_MS, MAX_CALLS = float(decode.LIMITS.MAX_MS), int(decode.LIMITS.MAX_CALLS)


def test_the_extension_is_built() -> None:
    assert decode.scan_regions is not None, (
        "tui.source._regions was not built: `pip install -e .` needs a C compiler"
    )


def _scan(raw: bytes, keys: tuple[bytes, ...]) -> tuple[bool, np.ndarray, np.ndarray]:
    ms = np.full((2, len(keys)), -7.0)
    calls = np.full((2, len(keys)), -7.0)
    ok = decode.scan_regions(raw, keys, ms, calls, 1, MAX_MS, MAX_CALLS)
    return ok, ms[1], calls[1]


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _check_agrees(raw: bytes, keys: tuple[bytes, ...]) -> bool:
    """scan's answer is a subset of the typed decoder's, values bit-identical (``keys``
    distinct, as the reader's schemas are)."""
    ok, ms, calls = _scan(raw, keys)
    if not ok:
        return False
    d = _typed(raw)  # must not raise: scan accepted it
    assert tuple(k.encode() for k in d) == keys
    for i, (v, c) in enumerate(d.values()):
        assert _bits(float(v)) == _bits(float(ms[i])), (raw, v, ms[i])
        assert c == calls[i]
    return True


NUMBERS = st.one_of(
    st.floats(min_value=0, max_value=1e13, allow_nan=False).map(repr),
    st.floats(min_value=0, max_value=1e6).map(lambda x: repr(round(x, 4))),
    st.integers(min_value=-5, max_value=10**20).map(str),
    st.tuples(st.integers(0, 10**17), st.integers(-30, 30)).map(lambda t: f"{t[0]}e{t[1]}"),
    st.tuples(st.integers(0, 999), st.integers(0, 10**6)).map(lambda t: f"{t[0]}.{t[1]:06d}"),
    st.sampled_from(
        [
            "-0",
            "-0.0",
            "0",
            "01",
            "1.",
            ".5",
            "+1",
            "1e",
            "1e+",
            "1E-2",
            "1.0",
            "NaN",
            "Infinity",
            "-1",
            "1e400",
            "1e-400",
            "0x10",
            "1_0",
            "",
            " ",
            "true",
            "null",
            '"1"',
            "[1]",
            "1.5e3",
            "999999999999",
            "1000000000000",
            "9007199254740993",
            "0.1e1",
            "2.5E+1",
        ]
    ),
)
NAMES = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12
) | st.sampled_from(["data", "forward/vrt/stage1", 'a"b', "a\\b", "é", "\x00", "block01"])
WS = st.sampled_from(["", "", "", " ", "\n", "\t", "\r\n "])


@settings(max_examples=600, deadline=None)
@given(
    st.lists(st.tuples(NAMES, NUMBERS, NUMBERS, WS), max_size=6, unique_by=lambda t: t[0]),
    WS,
    st.sampled_from(["", ",", "]", "x"]),
)
def test_scan_accepts_a_subset_of_the_typed_decoder_with_identical_values(items, ws, junk) -> None:  # type: ignore[no-untyped-def]
    body = ",".join(f"{ws}{json.dumps(n)}{w}:{w}[{a}{w},{b}]{ws}" for n, a, b, w in items)
    raw = ("{" + body + junk + "}").encode()
    keys = tuple(json.dumps(n)[1:-1].encode() for n, _, _, _ in items)
    if any(b"\\" in k for k in keys):
        keys = tuple(n.encode() for n, _, _, _ in items)
    _check_agrees(raw, keys)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=1e9), st.integers(0, 10**6)),
        min_size=1,
        max_size=40,
    )
)
def test_scan_takes_what_the_writer_writes(vals) -> None:  # type: ignore[no-untyped-def]
    regs = {f"r{i:02d}/x": (ms, c) for i, (ms, c) in enumerate(vals)}
    line = encode(Step(step=1, time=1.0, wall_ms=1.0, regions=regs)).encode()
    raw = decode.decode_raw(line).regions
    keys = tuple(k.encode() for k in regs)
    assert decode.region_keys(raw) == keys
    assert _check_agrees(bytes(raw), keys)


def test_scan_refuses_what_the_typed_decoder_refuses() -> None:
    keys = (b"a", b"b")
    good = b'{"a":[1.5,1],"b":[0,2]}'
    assert _check_agrees(good, keys)
    assert _check_agrees(b' {\n"a" : [ 1.5 , 1 ] ,"b":[0,2] } ', keys)
    for bad in [
        b'{"a":[1.5,1],"b":[0,2],}',
        b'{"a":[1.5,1]}',
        b'{"a":[1.5,1],"b":[0,2],"c":[1,1]}',
        b'{"a":[-1,1],"b":[0,2]}',
        b'{"a":[1,-1],"b":[0,2]}',
        b'{"a":[1,1.0],"b":[0,2]}',
        b'{"a":[1e12,1],"b":[0,2]}',
        b'{"a":[1,1000000000000],"b":[0,2]}',
        b'{"a":[1,1,1],"b":[0,2]}',
        b'{"b":[0,2],"a":[1.5,1]}',
        b'{"a":[01,1],"b":[0,2]}',
        b'{"a":[1,1],"b":[0,2]}x',
        b'{"a\\u0041":[1,1],"b":[0,2]}',
        b'{"ab":[1,1],"b":[0,2]}',
        b'{"a":[1,1]"b":[0,2]}',
        b"",
    ]:
        assert not _scan(bad, keys)[0], bad


def _mutate(line: str, rng: random.Random) -> str:
    """One plausible corruption or variation of a step line (many stay valid)."""
    kind = rng.randrange(9)
    if kind == 0:  # a byte flipped
        i = rng.randrange(len(line) - 1)
        return line[:i] + rng.choice('0123456789.-e,:[]{}" x\\') + line[i + 1 :]
    if kind == 1:  # spaces between tokens
        return line.replace(",", ", ", rng.randint(1, 50)).replace(":", ": ", rng.randint(1, 50))
    if kind == 2:  # a number too precise for the fast path (the typed decoder takes it)
        return re.sub(r'":\[[0-9.]+', '":[0.12345678901234567', line, count=1)
    if kind == 3:  # a duplicate region name
        return line.replace('"regions":{', '"regions":{"data":[9.0,1],', 1)
    if kind == 4:  # a new schema mid-file
        return line.replace('"regions":{', '"regions":{"extra/new":[1.25,2],', 1)
    if kind == 5:  # an escaped name (same name: the fast path must not be fooled)
        return line.replace('"data"', '"d\\u0061ta"', 1)
    if kind == 6:  # exponents, valid and not
        return re.sub(
            r'":\[[0-9.]+', rng.choice(['":[1.5e2', '":[15E-1', '":[1e', '":[2e+0']), line, count=1
        )
    if kind == 7:  # a negative or out-of-range value
        return (
            line.replace('":[', '":[-', 1)
            if rng.random() < 0.5
            else line.replace(",1]", ",1000000000000]", 1)
        )
    return line[: rng.randrange(len(line))] + "\n"  # cut short (a torn line)


def _read(run: Path, monkeypatch: pytest.MonkeyPatch, fast: bool):  # type: ignore[no-untyped-def]
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(decode, "scan_regions", None)
        src = RunSource(run, window=16, use_index=False).load(parallel=False)
        feeds = sorted(
            (f.tail.path, f.lines, f.malformed, f.skipped, f.duplicates, f.last_error)
            for f in src.feeds.values()
        )
        return src.snapshot(), feeds


@pytest.mark.parametrize("seed", range(12))
def test_fast_and_pure_reads_of_mutated_runs_are_identical(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    rng = random.Random(seed)
    run = write_run(
        tmp_path,
        steps=rng.randint(20, 300),
        ranks=rng.randint(1, 2),
        n_regions=rng.choice([1, 5, 14, 16, 40]),
        seed=seed,
        status=rng.choice(["completed", None]),
        eval_every=rng.choice([0, 9]),
    )
    for p in run.glob("rank*.jsonl"):
        lines = p.read_text().splitlines(keepends=True)
        for i in range(1, len(lines)):
            if '"kind":"step"' in lines[i] and rng.random() < 0.15:
                lines[i] = _mutate(lines[i], rng)
                if not lines[i].endswith("\n"):
                    lines[i] += "\n"
        if rng.random() < 0.3:  # a resumed run: steps repeat
            lines += lines[len(lines) // 2 :]
        p.write_text("".join(lines))
    fast_snap, fast_feeds = _read(run, monkeypatch, fast=True)
    pure_snap, pure_feeds = _read(run, monkeypatch, fast=False)
    assert fast_feeds == pure_feeds
    assert replace(fast_snap, idle_s=0.0) == replace(pure_snap, idle_s=0.0)


def test_big_values_fall_back_to_the_typed_decoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    run = write_run(tmp_path, steps=30, ranks=1, n_regions=3, seed=1)
    p = run / "rank0.jsonl"
    text = p.read_text().replace('":[', '":[123456789.123456789', 5)  # 18 digits: not exact here
    p.write_text(text)
    fast_snap, fast_feeds = _read(run, monkeypatch, fast=True)
    pure_snap, pure_feeds = _read(run, monkeypatch, fast=False)
    assert fast_feeds == pure_feeds
    assert replace(fast_snap, idle_s=0.0) == replace(pure_snap, idle_s=0.0)


def test_pure_python_is_selected_by_the_environment() -> None:
    import subprocess
    import sys

    code = "import tui.source.decode as p; print(p.scan_regions is None)"
    env = {**os.environ, "STAGEWATCH_PURE_PYTHON": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "True"
