"""Reader-side hardening (issue 12): hostile lines, files, names, resumes and failures."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stagewatch.errors import UsageError
from stagewatch.records import RunStart, encode
from tui.model.order import CUT
from tui.model.rows import LIMITS
from tui.report.summary import summary_dict
from tui.source.check import check_run
from tui.source.reader import RunSource
from tui.source.root import RootReader
from tui.testing import start_line, step_records, write_run


def _step(n: int, **kw: object) -> str:
    d = {
        "v": "1.0",
        "kind": "step",
        "step": n,
        "epoch": 0,
        "time": 1.0 + n,
        "wall_ms": 10.0,
        "samples": 1,
        "regions": {"a": [4.0, 1], "a/b": [2.0, 1]},
    }
    d.update(kw)
    return json.dumps(d, separators=(",", ":")) + "\n"


def _run(tmp_path: Path, body: str, name: str = "20261126-120000-x-0001") -> Path:
    run = tmp_path / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "rank0.jsonl").write_text(start_line(name) + body)
    return run


def _read(run: Path) -> RunSource:
    return RunSource(run, use_index=False).load(parallel=False)


def _dumpable(src: RunSource) -> None:
    json.dumps(summary_dict(src.snapshot()), allow_nan=False)


# --------------------------------------------------------------------------- lines


def test_duplicate_regions_key_is_validated_and_loses_no_batch(tmp_path: Path) -> None:
    good = "".join(_step(i) for i in range(1, 9))
    bad = _step(9)[:-2] + ',"regions" :{"a":[-1.0,1]}}\n'  # what the decoder keeps is bad
    kept = _step(10)[:-2] + ',"regions" :{"a":[7.0,1]}}\n'  # the kept value is good
    more = "".join(_step(i) for i in range(11, 19))
    src = _read(_run(tmp_path, good + bad + kept + more))
    assert src.files()[0].malformed == 1
    snap = src.snapshot()
    assert snap.wall.steps == 17  # 16 around it and the good duplicate: no batch dropped
    a = snap.region("a")
    assert a is not None and a.whole.max == 7.0 and a.whole.steps == 17
    _dumpable(src)


@pytest.mark.parametrize(
    "line",
    [
        _step(2).replace('"time":3.0', '"time":1e400'),
        _step(2).replace('"wall_ms":10.0', '"wall_ms":1e400'),
        _step(2).replace('"step":2', '"step":' + "1" * 400),
        _step(2, memory={"peak": 1}).replace('"peak":1', '"peak":' + "9" * 401),
        _step(2, scalars={"loss": 1}).replace('"loss":1', '"loss":1e400'),
        _step(2).replace('"v":"1.0"', '"v":"\u00b2.0"'),
        _step(2).replace('"v":"1.0"', '"v":"\\u00b2.0"'),
        _step(2, regions={"a": [1e12, 1]}),
        _step(2, regions={"a": [1.0, 10**12]}),
        _step(2)[:-2] + ',"x":' + "[" * 100_000 + "]" * 100_000 + "}\n",
        '{"v":"1.0","kind":"eval","step":2,"time":1,"metrics":{"psnr":1' + "0" * 400 + "}}\n",
        '{"v":"1.0","kind":"eval","step":2,"time":1,"metrics":{"psnr":1e400}}\n',
        '{"v":"1.0","kind":"run_end","time":1e400,"status":"completed"}\n',
    ],
)
def test_out_of_range_values_are_malformed_lines(tmp_path: Path, line: str) -> None:
    src = _read(_run(tmp_path, _step(1) + line + _step(3)))
    assert src.files()[0].malformed == 1, src.files()[0].last_error
    snap = src.snapshot()
    assert snap.wall.steps == 2
    _dumpable(src)


@pytest.mark.parametrize(
    "field", ["total_steps", "device_memory_total", "world_size", "start_step"]
)
def test_huge_run_start_numbers_are_refused(tmp_path: Path, field: str) -> None:
    d = json.loads(start_line("x"))
    d[field] = 10**400
    run = tmp_path / "r"
    run.mkdir()
    (run / "rank0.jsonl").write_text(json.dumps(d) + "\n" + _step(1))
    src = _read(run)
    assert src.files()[0].malformed == 1
    assert src.snapshot().total_steps is None
    _dumpable(src)


def test_deep_config_is_refused_without_recursion(tmp_path: Path) -> None:
    d = json.loads(start_line("x"))
    line = json.dumps(d).replace(
        '"config": {',
        '"config": {"deep": '
        + "[" * (LIMITS.MAX_JSON_DEPTH + 5)
        + "]" * (LIMITS.MAX_JSON_DEPTH + 5)
        + ",",
        1,
    )
    run = tmp_path / "r"
    run.mkdir()
    (run / "rank0.jsonl").write_text(line + "\n" + _step(1))
    assert _read(run).files()[0].malformed == 1


def test_a_10mb_line_is_one_malformed_line(tmp_path: Path) -> None:
    big = '{"v":"1.0","kind":"step","x":"' + "y" * (10 * 2**20) + '"}\n'
    src = _read(_run(tmp_path, _step(1) + big + _step(2)))
    info = src.files()[0]
    assert info.malformed == 1 and src.snapshot().wall.steps == 2


# --------------------------------------------------------------------------- files


def test_fifo_and_folder_named_rank_files_are_skipped_and_reported(tmp_path: Path) -> None:
    fifo_run = tmp_path / "20261126-110000-fifo-0001"
    fifo_run.mkdir()
    os.mkfifo(fifo_run / "rank0.jsonl")
    (fifo_run / "rank1.jsonl").mkdir()
    live = write_run(tmp_path, "20261126-120000-live-0002", steps=5, status=None)
    done = threading.Event()
    out: dict[str, object] = {}

    def go() -> None:
        r = RootReader(tmp_path, use_index=False)
        r.tick()
        out["reader"] = r
        out["load"] = RunSource(fifo_run, use_index=False).load()
        done.set()

    th = threading.Thread(target=go, daemon=True)
    th.start()
    assert done.wait(20), "a FIFO blocked the reader"
    reader = out["reader"]
    assert isinstance(reader, RootReader)
    runs = {r.run_id: r for r in reader.runs.values()}
    assert runs[live.name].snapshot().wall.steps == 5  # the other run stays live
    states = {Path(f.path).name: f.state for f in runs[fifo_run.name].files()}
    assert states == {"rank0.jsonl": "not-regular", "rank1.jsonl": "not-regular"}
    assert "FIFO" in runs[fifo_run.name].files()[0].problem
    with pytest.raises(UsageError, match="no stagewatch records"):
        check_run(fifo_run)


def test_symlink_loop_is_reported_as_such(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    os.symlink(run / "rank0.jsonl", run / "rank0.jsonl")
    src = RunSource(run, use_index=False).load()
    f = src.files()[0]
    assert f.state == "symlink-loop" and "loop" in f.problem and "permission" not in f.problem
    with pytest.raises(UsageError, match="loop"):
        check_run(run / "rank0.jsonl")


def test_removed_and_unreadable_files_are_flagged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = write_run(tmp_path, steps=5, ranks=2, status=None)
    src = RunSource(run, use_index=False)
    src.poll()
    (run / "rank1.jsonl").unlink()
    assert src.poll()  # the change of state is a change to show
    snap = src.snapshot()
    assert [f.state for f in snap.files] == ["ok", "missing"]
    assert snap.wall.steps == 10  # figures read before are kept, and flagged
    assert snap.file_problems and snap.file_problems[0].path.endswith("rank1.jsonl")
    real_open = os.open

    def deny(path, *a, **k):  # type: ignore[no-untyped-def]
        if str(path).endswith("rank0.jsonl"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", deny)
    src.poll()
    assert src.snapshot().files[0].state == "unreadable"


def test_deleted_log_root_drops_its_runs(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "logs"
    write_run(root, steps=3)
    r = RootReader(root, use_index=False)
    r.tick()
    assert len(r.runs) == 1
    shutil.rmtree(root)
    assert r.tick()
    assert r.runs == {} and r.items() == ()


# --------------------------------------------------------------------------- resume


def test_resume_after_kill_keeps_one_record_per_step(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    with open(run / "rank0.jsonl", "w") as f:
        f.write(start_line("r", total_steps=100))
        for rec in step_records(56, n_regions=4, seed=1):  # checkpoint at 50, killed at 56
            f.write(encode(rec))
        f.write(
            encode(
                RunStart(run_id="r", rank=0, world_size=1, time=2e9, total_steps=100, start_step=50)
            )
        )
        later = list(step_records(50, n_regions=4, seed=2, start_step=51))
        for rec in later:
            f.write(encode(rec))
    src = _read(run)
    snap = src.snapshot()
    assert snap.wall.steps == 100 and snap.step == 100
    assert src.files()[0].duplicates == 6
    # the later segment wins: steps 51..56 have its values
    expect = sum(r.wall_ms for r in step_records(50, n_regions=4, seed=1)) + sum(
        r.wall_ms for r in later
    )
    assert snap.wall.avg * 100 == pytest.approx(expect)
    # the same read live, line by line, and through worker processes
    live = RunSource(run, use_index=False)
    for f in live.feeds.values():
        f.tail.chunk = 700
    live.poll(budget_s=None)
    assert live.snapshot().wall.steps == 100
    assert RunSource(run, use_index=False).load(parallel=True).snapshot().wall.steps == 100


def test_replay_of_a_resumed_run_shows_each_step_once(tmp_path: Path) -> None:
    from tui.source.replay import ReplaySource

    run = write_run(tmp_path, steps=30, n_regions=3, status=None)
    with open(run / "rank0.jsonl", "a") as f:
        for rec in step_records(20, n_regions=3, seed=5, start_step=21):
            f.write(encode(rec))
    src = ReplaySource(run, playing=False, use_index=False)
    src.seek(25)
    src.seek(10**9)
    snap = src.build().selected
    assert snap is not None and snap.wall.steps == 40 and snap.step == 40


# --------------------------------------------------------------------------- names


def test_deep_and_wide_region_names_are_bounded(tmp_path: Path) -> None:
    deep = "/".join(["n"] * 1001)
    body = _step(1, regions={deep: [1.0, 1]})
    wide = {"/".join([f"w{i}"] + ["x"] * 199): [1.0, 1] for i in range(1024)}
    body += _step(2, regions=wide)
    src = _read(_run(tmp_path, body))
    snap = src.snapshot()
    assert len(snap.regions) <= LIMITS.MAX_TREE_ROWS + 1
    assert max(r.depth for r in snap.regions) <= LIMITS.MAX_NAME_DEPTH
    cut = [r for r in snap.regions if r.cut]
    assert cut and all(r.leaf == CUT for r in cut)
    assert snap.regions[LIMITS.MAX_NAME_DEPTH].cut  # the deep name: one "…" row at the limit
    _dumpable(src)


# --------------------------------------------------------------------------- failures


def test_reader_failure_is_carried_and_other_runs_stay_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tui.source.feed as feed

    bad = write_run(tmp_path, "20261126-110000-bad-0001", steps=3)
    good = write_run(tmp_path, "20261126-120000-good-0002", steps=4)
    real = feed.Feed.process

    def boom(self, lines, agg):  # type: ignore[no-untyped-def]
        if "bad" in self.tail.path:
            raise RuntimeError("bug in the fold")
        return real(self, lines, agg)

    monkeypatch.setattr(feed.Feed, "process", boom)
    r = RootReader(tmp_path, use_index=False)
    r.tick()
    runs = {x.run_id: x for x in r.runs.values()}
    err = runs[bad.name].snapshot().reader_error
    assert err and "rank0.jsonl" in err and "bug in the fold" in err and "\n" not in err
    assert runs[good.name].snapshot().wall.steps == 4


def test_live_source_reports_a_failing_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tui.source.live import LiveSource

    write_run(tmp_path, steps=2)
    src = LiveSource(tmp_path, poll=True, interval=0.05, use_index=False)
    calls = {"n": 0}

    def tick(force_all: bool = False) -> bool:
        calls["n"] += 1
        raise OSError("disk on fire")

    monkeypatch.setattr(src.reader, "tick", tick)
    posted = []
    got = threading.Event()

    def post(w):  # type: ignore[no-untyped-def]
        posted.append(w)
        got.set()

    src.start(post)
    try:
        assert got.wait(10)
    finally:
        src.stop()
    assert posted[0].error and "disk on fire" in posted[0].error and src.failed


# --------------------------------------------------------------------------- fuzz

_base = [
    _step(1).rstrip("\n"),
    start_line("x").rstrip("\n"),
    '{"v":"1.0","kind":"eval","step":1,"time":1.0,"metrics":{"psnr":28.0}}',
    '{"v":"1.0","kind":"run_end","time":2.0,"status":"completed","steps":1}',
]
_huge = st.sampled_from(
    [
        "1" + "0" * 400,
        "1e400",
        "-1e400",
        "18446744073709551616",
        "NaN",
        "Infinity",
        "true",
        "null",
        '"1"',
        "[]",
        "{}",
        "[[[[[[[[[[1]]]]]]]]]]",
        "-0",
        "1e-400",
        '"\\u00b2"',
    ]
)


@st.composite
def _mutant(draw: st.DrawFn) -> str:
    line = draw(st.sampled_from(_base))
    d = json.loads(line)
    how = draw(st.sampled_from(["truncate", "retype", "duplicate", "huge", "keep"]))
    if how == "truncate":
        return line[: draw(st.integers(0, len(line)))]
    key = draw(st.sampled_from(sorted(d)))
    text = json.dumps(d, separators=(",", ":"))
    if how == "retype":
        return text.replace(
            f'"{key}":{json.dumps(d[key], separators=(",", ":"))}', f'"{key}":{draw(_huge)}', 1
        )
    if how == "duplicate":
        return text[:-1] + f',"{key}" :{draw(_huge)}' + "}"
    if how == "huge":
        return text.replace("1.0", draw(_huge), 1)
    return text


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_mutant(), min_size=1, max_size=12))
def test_fuzz_reader_never_crashes_and_counts_every_line(tmp_path_factory, lines) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path_factory.mktemp("fz")
    (run / "rank0.jsonl").write_text("\n".join(lines) + "\n")
    src = _read(run)
    info = src.files()[0]
    nonblank = sum(1 for x in lines if x.strip())
    assert info.lines == nonblank
    assert info.malformed + info.skipped <= nonblank
    snap = src.snapshot()
    json.dumps(summary_dict(snap), allow_nan=False)
    for r in snap.regions:
        assert r.whole.avg != r.whole.avg or 0 <= r.whole.avg < LIMITS.MAX_MS
