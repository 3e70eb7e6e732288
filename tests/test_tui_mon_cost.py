"""`tui watch` at 64 ranks within its CPU budget (issue 22): what the cheaper paths keep."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stagewatch.records import Step, encode
from tui.source import tail as tail_mod
from tui.source.tail import TailFile
from tui.view.pacing import FULL_BUDGET, MAX_GAP, PANEL_BUDGET, Pacer


def _step(n: int) -> str:
    return encode(Step(step=n, time=float(n), wall_ms=20.0, regions={"a": (10.0, 1)}, samples=1))


def test_a_file_not_written_since_its_end_was_read_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "rank0.jsonl"
    f.write_text(_step(1))
    t = TailFile(f)
    assert len(t.read()[0]) == 1
    calls: list[str] = []
    for name in ("fstat", "pread"):
        real = getattr(os, name)

        def counting(*a: object, _real=real, _name=name) -> object:  # type: ignore[no-untyped-def]
            calls.append(_name)
            return _real(*a)

        monkeypatch.setattr(tail_mod.os, name, counting)
    assert t.read() == ([], False, False)
    assert t.read() == ([], False, False)
    assert calls == []  # a stat and an open (still readable) each, nothing read
    with open(f, "a") as fh:  # appended: read
        fh.write(_step(2))
    assert [json.loads(x)["step"] for x in t.read()[0]] == [2]
    assert calls == ["fstat", "pread", "pread"]  # the head checked, the new bytes read


def test_a_file_replaced_or_rewritten_after_a_quiet_spell_is_still_noticed(
    tmp_path: Path,
) -> None:
    f = tmp_path / "rank0.jsonl"
    f.write_text(_step(1) + _step(2))
    t = TailFile(f)
    assert len(t.read()[0]) == 2
    assert t.read()[0] == []  # quiet: the shortcut
    # rewritten in place to the same size (another time stamp): read again from the start
    st = os.stat(f)
    with open(f, "r+") as fh:
        fh.write(_step(3) + _step(4))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    lines, reset, _ = t.read()
    assert reset and [json.loads(x)["step"] for x in lines] == [3, 4]
    # replaced (another inode)
    g = tmp_path / "new.jsonl"
    g.write_text(_step(5))
    os.replace(g, f)
    lines, reset, _ = t.read()
    assert reset and [json.loads(x)["step"] for x in lines] == [5]
    # a partial last line completed later
    with open(f, "a") as fh:
        fh.write(_step(6)[:10])
    assert t.read()[0] == []
    with open(f, "a") as fh:
        fh.write(_step(6)[10:])
    assert [json.loads(x)["step"] for x in t.read()[0]] == [6]


def test_a_costly_full_snapshot_spaces_the_panels_a_cheap_one_does_not() -> None:
    small = Pacer(1.0, adaptive=True)
    for _ in range(3):
        small.note_cost(0.025, full=0.002)  # a small run: drawing, a snapshot of a few ms
    assert small.gap == 1.0
    big = Pacer(1.0, adaptive=True)
    for _ in range(3):
        big.note_cost(0.040, full=0.016)  # 64 ranks: the reader's full snapshot ~16 ms
    assert big.gap == pytest.approx(0.016 / FULL_BUDGET)
    assert big.gap > 0.040 / PANEL_BUDGET
    for _ in range(5):
        big.note_cost(0.2, full=0.1)
    assert big.gap == MAX_GAP  # at most MAX_GAP, whatever it costs
    fixed = Pacer(1.0)
    fixed.note_cost(0.2, full=0.1)
    assert fixed.gap == 1.0
