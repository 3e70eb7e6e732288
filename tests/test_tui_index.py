"""The run index (issue 13): reopening through it gives exactly a full read's snapshot."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from stagewatch.records import RunEnd, encode
from tui.source import index
from tui.source.reader import RunSource
from tui.testing import step_records, write_run


def _full(run: Path, window: int = 20):  # type: ignore[no-untyped-def]
    return RunSource(run, window=window, use_index=False).load(parallel=False).snapshot()


def _indexed(run: Path, window: int = 20) -> RunSource:
    return RunSource(run, window=window, use_index=True).load(parallel=False)


def _same(a, b) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    # idle_s is "seconds since the files grew", measured when each was made
    assert replace(a, idle_s=0.0, from_index=False) == replace(b, idle_s=0.0, from_index=False)


def _append(run: Path, rank: int, first: int, n: int, seed: int) -> None:
    with open(run / f"rank{rank}.jsonl", "a") as f:
        for rec in step_records(n, rank=rank, start_step=first, seed=seed, n_regions=7):
            f.write(encode(rec))


@pytest.mark.parametrize("seed", range(6))
def test_index_reopen_and_appends_equal_a_full_read(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    ranks = rng.randint(1, 3)
    steps = rng.randint(1, 60)
    run = write_run(
        tmp_path,
        steps=steps,
        ranks=ranks,
        n_regions=rng.randint(1, 12),
        seed=seed,
        status=rng.choice(["completed", "failed", None]),
        eval_every=rng.choice([0, 7]),
    )
    if rng.random() < 0.5:  # a partial last line, a malformed line, a resumed repeat
        with open(run / "rank0.jsonl", "a") as f:
            f.write('{"v":"1.0","kind":"step","step":oops}\n')
    first = _indexed(run)
    assert first.save_index(force=True) or os.path.exists(first.index_path)
    again = _indexed(run)
    assert again.from_index
    _same(again.snapshot(), _full(run))
    # the files grow: only the new bytes are read, with the same result as a full read
    for r in range(ranks):
        _append(run, r, steps + 1, rng.randint(1, 30), seed)
    with open(run / "rank0.jsonl", "a") as f:
        f.write('{"v":"1.0","kind":"step","step":2')  # partial: kept until completed
    grown = _indexed(run)
    assert grown.from_index
    _same(grown.snapshot(), _full(run))
    grown.save_index(force=True)
    with open(run / "rank0.jsonl", "a") as f:
        f.write(',"wall_ms":5.0}\n')
        f.write(encode(RunEnd(time=2e9, status="completed", steps=steps)))
    last = _indexed(run)
    assert last.from_index
    _same(last.snapshot(), _full(run))


def test_index_ignored_after_truncation_rotation_and_new_rank(tmp_path: Path) -> None:
    run = write_run(tmp_path, steps=30, ranks=2, n_regions=5)
    _indexed(run).save_index(force=True)
    # truncated and rewritten shorter
    p = run / "rank1.jsonl"
    lines = p.read_bytes().splitlines(keepends=True)
    p.write_bytes(b"".join(lines[:10]))
    src = _indexed(run)
    assert not src.from_index
    _same(src.snapshot(), _full(run))
    src.save_index(force=True)
    # rotated: another file, same size, other bytes
    data = bytearray(p.read_bytes())
    data[-5:-2] = b"999" if data[-5:-2] != b"999" else b"111"
    tmp = run / "new"
    tmp.write_bytes(bytes(data))
    os.replace(tmp, p)
    src = _indexed(run)
    assert not src.from_index
    _same(src.snapshot(), _full(run))
    src.save_index(force=True)
    # a rank file appears
    write_run(tmp_path, steps=5, ranks=3, n_regions=5)
    src = _indexed(run)
    assert not src.from_index
    _same(src.snapshot(), _full(run))


@pytest.mark.parametrize(
    "damage", ["flip", "truncate", "garbage", "version", "type", "window", "dir"]
)
def test_corrupt_foreign_or_unwritable_index_is_ignored(tmp_path: Path, damage: str) -> None:
    run = write_run(tmp_path, steps=25, ranks=2, n_regions=6)
    src = _indexed(run)  # an ended run: indexed after its first full read
    ip = Path(src.index_path)
    assert ip.is_file() and not src.save_index(force=True)  # nothing new to save
    raw = ip.read_bytes()
    if damage == "flip":
        b = bytearray(raw)
        b[len(b) // 2] ^= 0x40
        ip.write_bytes(bytes(b))
    elif damage == "truncate":
        ip.write_bytes(raw[: len(raw) // 3])
    elif damage == "garbage":
        ip.write_bytes(os.urandom(2000))
    elif damage == "version":
        import zlib

        import msgspec

        body = zlib.decompress(raw[len(index.MAGIC) + 16 :])
        d = msgspec.msgpack.decode(body)
        d["version"] = 999
        nb = zlib.compress(msgspec.msgpack.encode(d))
        ip.write_bytes(index.MAGIC + index._hash(nb) + nb)
    elif damage == "type":  # a value of another type, under a valid checksum
        import zlib

        import msgspec

        d = msgspec.msgpack.decode(zlib.decompress(raw[len(index.MAGIC) + 16 :]))
        d["files"][0]["feed"]["lines"] = "many"
        nb = zlib.compress(msgspec.msgpack.encode(d))
        ip.write_bytes(index.MAGIC + index._hash(nb) + nb)
    elif damage == "window":
        again = RunSource(run, window=7, use_index=True).load(parallel=False)
        assert not again.from_index
        _same(again.snapshot(), _full(run, window=7))
        return
    else:  # the index path is a folder: never written, never read, never fatal
        ip.unlink()
        ip.mkdir()
        src = _indexed(run)
        assert not src.from_index and not src.save_index(force=True)
        _same(src.snapshot(), _full(run))
        return
    again = _indexed(run)
    assert not again.from_index
    _same(again.snapshot(), _full(run))


def test_no_index_bypasses_it(tmp_path: Path) -> None:
    run = write_run(tmp_path, steps=10, ranks=1, n_regions=4)
    index.set_enabled(False)
    try:
        src = RunSource(run).load()
        assert not src.save_index(force=True)
        assert not os.path.exists(src.index_path)
    finally:
        index.set_enabled(True)
    RunSource(run).load()  # an ended run is indexed after its first full read
    assert RunSource(run).load().from_index


def test_resumed_segments_survive_the_index(tmp_path: Path) -> None:
    run = write_run(tmp_path, steps=12, ranks=1, n_regions=4, status=None)
    _indexed(run).save_index(force=True)
    _append(run, 0, 9, 10, 1)  # resumed at 8: steps 9..12 again, then 13..18
    src = _indexed(run)
    assert src.snapshot().wall.steps == 18
    _same(src.snapshot(), _full(run))
    src.save_index(force=True)
    again = _indexed(run)
    assert again.from_index and again.snapshot().wall.steps == 18


def test_replay_learns_the_end_from_the_index_or_reads_it_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import tui.source.replay as replay

    run = write_run(tmp_path, steps=40, ranks=2, n_regions=4, status=None)
    src = replay.ReplaySource(run, playing=False)
    assert src.known_end is None  # no index yet: the first screen does not read the run
    monkeypatch.setattr(replay, "BEHIND_MIN_BYTES", 0)
    got = threading.Event()
    src.start(lambda w: got.set() if src.known_end else None)
    try:
        for _ in range(200):
            if got.wait(0.1):
                break
        assert src.known_end == 40
        assert "of 40" in (src.build().selected.replay or "")
    finally:
        src.stop()
    assert Path(RunSource(run).index_path).is_file()  # written by the read behind
    again = replay.ReplaySource(run, playing=False)
    assert again.known_end == 40 and again.position == 0


def test_states_round_trip_through_msgpack_and_refuse_a_mismatch(tmp_path: Path) -> None:
    import msgspec

    from tui.model.state import RunAggState, StateMismatch, agg_from_state, state_of
    from tui.source.feed import Feed, FeedState

    run = write_run(tmp_path, steps=30, ranks=2, n_regions=20, status=None)
    src = RunSource(run, window=16, use_index=False).load(parallel=False)
    raw = msgspec.msgpack.encode(state_of(src.agg))
    state = msgspec.msgpack.Decoder(RunAggState).decode(raw)
    again = agg_from_state(state, src.run_id, str(src.dir), 16)
    assert again.snapshot() == src.agg.snapshot()
    with pytest.raises(StateMismatch, match="window"):
        agg_from_state(state, src.run_id, str(src.dir), 17)
    ranks = dict(state.ranks)
    ranks[0] = msgspec.structs.replace(ranks[0], cap=ranks[0].cap * 2)  # arrays of another size
    with pytest.raises(StateMismatch):
        agg_from_state(msgspec.structs.replace(state, ranks=ranks), src.run_id, "", 16)
    # a feed stopped mid-line goes on from its state as if never stopped
    path = str(run / "rank0.jsonl")
    whole = Feed(path, 0, "jsonl")
    whole.tail.chunk = 10**9
    whole.parse(whole.tail.read()[0])
    half = Feed(path, 0, "jsonl")
    half.tail.chunk = 3000
    half.parse(half.tail.read()[0])
    assert half.tail.partial
    saved = msgspec.msgpack.Decoder(FeedState).decode(msgspec.msgpack.encode(half.state()))
    resumed = Feed(path, 0, "jsonl")
    st = os.stat(path)
    resumed.restore(saved, (st.st_dev, st.st_ino))
    resumed.tail.chunk = 10**9
    lines, reset, _ = resumed.tail.read()
    assert not reset
    resumed.parse(lines)
    assert resumed.state() == whole.state()
