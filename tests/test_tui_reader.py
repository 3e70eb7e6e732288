"""The monitor's reader: partial lines, truncation, replacement, discovery, bad lines."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stagewatch.records import RunEnd, RunError, Step, encode
from tui.source.reader import RunSource
from tui.source.root import RootReader
from tui.source.tail import TailFile
from tui.testing import start_line, step_records, write_run


def _step(n: int, ms: float = 10.0) -> str:
    return encode(Step(step=n, time=float(n), wall_ms=ms * 2, regions={"a": (ms, 1)}, samples=1))


def test_partial_line_is_kept_until_completed(tmp_path: Path) -> None:
    f = tmp_path / "rank0.jsonl"
    line = _step(1)
    f.write_text(line[:20])
    t = TailFile(f)
    assert t.read()[0] == []
    with open(f, "a") as fh:
        fh.write(line[20:] + _step(2)[:5])
    lines, reset, more = t.read()
    assert [json.loads(x)["step"] for x in lines] == [1]
    assert not reset and not more
    with open(f, "a") as fh:
        fh.write(_step(2)[5:])
    assert [json.loads(x)["step"] for x in t.read()[0]] == [2]


def test_run_source_counts_steps_across_partial_writes(tmp_path: Path) -> None:
    run = tmp_path / "r1"
    run.mkdir()
    f = run / "rank0.jsonl"
    data = start_line("r1") + "".join(encode(s) for s in step_records(10))
    src = RunSource(run)
    for cut in range(0, len(data), 97):  # append in odd-sized pieces
        with open(f, "a") as fh:
            fh.write(data[cut : cut + 97])
        src.poll()
    assert src.agg.last_step == 10
    assert src.agg.ranks[0].steps == 10
    assert src.files()[0].malformed == 0


def test_truncation_rebuilds_statistics(tmp_path: Path) -> None:
    run = tmp_path / "r1"
    run.mkdir()
    f = run / "rank0.jsonl"
    f.write_text(start_line("r1") + "".join(_step(i, 100.0) for i in range(1, 6)))
    src = RunSource(run)
    src.poll()
    assert src.agg.ranks[0].steps == 5
    f.write_text(start_line("r1") + _step(1, 3.0))  # shorter: truncated and rewritten
    src.poll()
    r = src.agg.ranks[0]
    assert r.steps == 1
    assert r.max[r.cols["a"]] == 3.0  # nothing left of the old contents


def test_rewrite_in_place_longer_is_noticed(tmp_path: Path) -> None:
    run = tmp_path / "r1"
    run.mkdir()
    f = run / "rank0.jsonl"
    f.write_text(start_line("r1", t0=1.0) + _step(1, 100.0))
    src = RunSource(run)
    src.poll()
    # same inode, different first bytes, longer than before
    with open(f, "r+") as fh:
        fh.write(start_line("r1", t0=2.0) + "".join(_step(i, 5.0) for i in range(1, 4)))
    src.poll()
    r = src.agg.ranks[0]
    assert r.steps == 3 and r.max[r.cols["a"]] == 5.0


def test_replaced_file_is_followed(tmp_path: Path) -> None:
    run = tmp_path / "r1"
    run.mkdir()
    f = run / "rank0.jsonl"
    f.write_text(start_line("r1") + "".join(_step(i) for i in range(1, 4)))
    src = RunSource(run)
    src.poll()
    new = run / "rank0.jsonl.tmp"
    new.write_text(start_line("r1") + "".join(_step(i, 7.0) for i in range(1, 10)))
    os.replace(new, f)  # new inode, larger
    src.poll()
    r = src.agg.ranks[0]
    assert r.steps == 9 and r.min[r.cols["a"]] == 7.0


def test_new_run_folder_and_rank_file_appear(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    root.mkdir()
    reader = RootReader(root)
    reader.tick()
    assert reader.items() == ()
    write_run(root, "20261126-100000-a-0001", steps=3, ranks=1, t0=1000.0)
    assert reader.tick()
    assert [i.run_id for i in reader.items()] == ["20261126-100000-a-0001"]
    run2 = root / "20261126-110000-b-0002"
    run2.mkdir()
    (run2 / "rank0.jsonl").write_text(start_line("b", world_size=2, t0=2000.0) + _step(1))
    assert reader.tick()
    assert next(i.run_id for i in reader.items()) == "20261126-110000-b-0002"  # newest first
    (run2 / "rank1.jsonl").write_text(start_line("b", rank=1, world_size=2, t0=2000.0) + _step(1))
    reader.tick()
    src = next(r for r in reader.runs.values() if r.run_id.endswith("b-0002"))
    assert sorted(src.agg.ranks) == [0, 1]


def test_finished_run_is_closed_and_stale_run_detected(tmp_path: Path) -> None:
    now = [100.0]
    root = tmp_path / "logs"
    write_run(root, "20261126-100000-done-0001", steps=3)
    live = root / "20261126-100000-live-0002"
    live.mkdir()
    (live / "rank0.jsonl").write_text(start_line("live") + _step(1))
    reader = RootReader(root, stale_after=30.0, clock=lambda: now[0])
    reader.tick()
    states = {i.run_id: i.state for i in reader.items()}
    assert states["20261126-100000-done-0001"] == "finished"
    assert states["20261126-100000-live-0002"] == "running"
    done = next(r for r in reader.runs.values() if r.run_id.endswith("done-0001"))
    assert done.closed
    now[0] += 31.0
    reader.tick()
    assert {i.run_id: i.state for i in reader.items()}["20261126-100000-live-0002"] == "stale"
    with open(live / "rank0.jsonl", "a") as fh:
        fh.write(
            _step(2)
            + encode(
                RunEnd(
                    time=3.0,
                    status="failed",
                    steps=2,
                    error=RunError("RuntimeError", "boom"),
                )
            )
        )
    reader.tick()
    assert {i.run_id: i.state for i in reader.items()}["20261126-100000-live-0002"] == "failed"


def test_overlong_line_is_counted_and_skipped(tmp_path: Path) -> None:
    run = tmp_path / "r1"
    run.mkdir()
    f = run / "rank0.jsonl"
    huge = '{"v":"1.0","kind":"step","pad":"' + "x" * (5 * 1024 * 1024) + '"}\n'
    f.write_text(start_line("r1") + _step(1) + huge + _step(2))
    src = RunSource(run)
    src.load()
    info = src.files()[0]
    assert info.malformed == 1
    assert src.agg.ranks[0].steps == 2


# --------------------------------------------------------------------------- malformed corpus

_good = st.builds(lambda n, ms: _step(n, ms).rstrip("\n"), st.integers(1, 10**6), st.floats(0, 1e6))

_bad_text = st.sampled_from(
    [
        "{",
        "not json",
        "[1,2,3]",
        '"a string"',
        "null",
        '{"v":"1.0","kind":"step","step":"1","wall_ms":1}',
        '{"v":"1.0","kind":"step","step":1,"wall_ms":NaN}',
        '{"v":"1.0","kind":"step","step":1,"wall_ms":Infinity}',
        '{"v":"1.0","kind":"step","step":1,"wall_ms":1e400}',
        '{"v":"1.0","kind":"step","step":1,"wall_ms":-1}',
        '{"v":"1.0","kind":"step","step":1,"wall_ms":1,"regions":{"a":[1]}}',
        '{"v":"1.0","kind":"step","step":1,"wall_ms":1,"regions":{"a":[1,2,3]}}',
        '{"v":"1.0","kind":"step","step":1,"wall_ms":1,"regions":{"a":[1,1],"b":[1,2,3],"c":[1]}}',
        '{"v":"1.0","kind":"step","step":1,"wall_ms":1,"regions":{"a":[true,1]}}',
        '{"v":"1.0","kind":"step","step":1,"wall_ms":1,"regions":{"a":[1,1.5]}}',
        '{"v":"1.0","kind":"step","step":1,"wall_ms":1,"regions":{"a":["1",1]}}',
        '{"v":"1.0","kind":"step","step":1,"wall_ms":1,"regions":{"a":[-1,1]}}',
        '{"v":"1.0","kind":"step","step":1,"wall_ms":1,"regions":{"a":{"x":1,"y":2}}}',
        '{"v":"1.0","kind":"step","step":1,"wall_ms":1,"regions":{"a":"ab"}}',
        '{"v":"1.0","kind":"step","step":1,"wall_ms":1,"regions":[1]}',
        '{"v":"1.0","kind":"step","step":1,"wall_ms":1,"regions":{"a":[1e999,1]}}',
        '{"v":"1.0","kind":"step","step":1,"wall_ms":1,"regions":{"a":[1,99999999999999999999999]}}',
        '{"v":"1.0","kind":"step","step":1,"wall_ms":1,"scalars":{"loss":"x"}}',
        '{"v":"1.0","kind":"step","step":1,"wall_ms":1,"memory":[1]}',
        '{"v":"1.0","kind":"step","step":true,"wall_ms":1}',
        '{"v":"9.0","kind":"step","step":1,"wall_ms":1}',
        '{"v":1,"kind":"step","step":1,"wall_ms":1}',
        '{"v":"1.0","kind":"run_end","status":"exploded"}',
        '{"v":"1.0","kind":"run_start"}',
        '{"v":"1.0","kind":"eval","step":1,"metrics":{"psnr":[1]}}',
        '{"v":"1.0","kind":7}',
        "[" * 100_000,
    ]
)
_unknown = st.builds(
    lambda k: json.dumps({"v": "1.0", "kind": k, "x": 1}),
    st.text(min_size=1, max_size=10).filter(
        lambda k: k not in ("step", "run_start", "eval", "run_end")
    ),
)


@st.composite
def _corpus(draw: st.DrawFn) -> tuple[list[bytes], int, int, int]:
    """Lines, and how many are good / malformed / of unknown kinds."""
    lines: list[bytes] = []
    good = bad = unknown = 0
    for _ in range(draw(st.integers(1, 25))):
        which = draw(st.integers(0, 4))
        if which == 0:  # steps numbered in order: a repeated number would start a resumed segment
            lines.append(_step(good + 1, draw(st.floats(0, 1e6))).rstrip("\n").encode())
            good += 1
        elif which == 1:
            lines.append(draw(_bad_text).encode())
            bad += 1
        elif which == 2:
            lines.append(draw(_unknown).encode())
            unknown += 1
        elif which == 3:  # bad UTF-8, or random bytes without a newline
            raw = draw(
                st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b and b.strip())
            )
            lines.append(b"\xff" + raw)
            bad += 1
        else:  # a good line damaged: cut short
            s = draw(_good)
            lines.append(s[: draw(st.integers(1, len(s) - 1))].encode())
            bad += 1
    return lines, good, bad, unknown


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(_corpus())
def test_malformed_corpus_never_crashes_and_is_counted(tmp_path_factory, corpus) -> None:  # type: ignore[no-untyped-def]
    lines, good, bad, unknown = corpus
    run = tmp_path_factory.mktemp("run")
    (run / "rank0.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    src = RunSource(run).load()
    info = src.files()[0]
    assert info.malformed == bad
    assert info.skipped == unknown
    agg = src.agg.ranks.get(0)
    assert (agg.steps if agg else 0) == good
    snap = src.snapshot()  # builds without error
    assert snap.malformed == bad


# ------------------------------------------------------------ typed decoder = reference checks

_value = st.one_of(
    st.floats(min_value=0, max_value=1e13, allow_nan=False),
    st.integers(min_value=-5, max_value=10**13),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.lists(st.integers(0, 3), max_size=3),
)
_region_value = st.one_of(
    st.tuples(st.floats(0, 1e6, allow_nan=False), st.integers(0, 100)).map(list),
    st.lists(_value, min_size=0, max_size=3),
    _value,
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=8), _region_value, max_size=6),
    st.one_of(st.floats(0, 1e6, allow_nan=False), _value),
    st.booleans(),
)
def test_decoder_accepts_only_what_the_reference_checks_accept(regions, wall, compact) -> None:  # type: ignore[no-untyped-def]
    from stagewatch.records import RecordError, decode
    from tui.source.decode import StepRow, parse_line

    d = {
        "v": "1.0",
        "kind": "step",
        "step": 3,
        "epoch": 0,
        "time": 1.5,
        "wall_ms": wall,
        "samples": 1,
        "regions": regions,
        "memory": {"peak": 5},
        "scalars": {"loss": 0.5},
    }
    line = json.dumps(d, separators=(",", ":") if compact else (", ", ": ")).encode()
    try:
        ref = decode(line)
    except RecordError:
        ref = None
    try:
        row = parse_line(line)
    except RecordError:
        row = None
    if row is not None:  # the monitor only ever accepts what the record module accepts
        assert ref is not None and type(row) is StepRow
        assert row.wall == ref.wall_ms and row.regions == ref.regions
    elif ref is not None:  # refused: only for a value out of the shared limits
        assert ref.wall_ms >= 1e12 or any(
            ms >= 1e12 or n >= 10**12 for ms, n in ref.regions.values()
        )


def test_decoder_takes_the_timing_cores_lines() -> None:
    from stagewatch.records import decode
    from tui.source.decode import parse_line

    for rec in step_records(20, n_regions=40):
        line = encode(rec).rstrip("\n").encode()
        row = parse_line(line)
        ref = decode(line)
        assert row is not None and row.regions == ref.regions and row.step == ref.step


def test_a_file_named_by_its_rank_alone_takes_its_folders_run_id(tmp_path: Path) -> None:
    run = tmp_path / "20261126-100000-a-0001"
    run.mkdir()
    for name, run_id in [
        ("rank3.jsonl", run.name),
        ("timing_rank12.log", run.name),
        ("timing_fold2.log", "timing_fold2"),
        ("other.jsonl", "other"),
    ]:
        (run / name).write_text("")
        assert RunSource(run / name, use_index=False).run_id == run_id
