"""``tui export``: Chrome/Perfetto trace (one process per rank, correctly nested spans) and CSV."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stagewatch.records import RunEnd, RunError, RunStart, Step, encode
from tui.report.export import layout_regions, write_chrome, write_csv
from tui.testing import write_run

ROOT = Path(__file__).resolve().parent.parent


def trace_of(run: Path) -> dict[str, Any]:
    buf = io.StringIO()
    write_chrome(run, buf)
    return json.loads(buf.getvalue())


def check_nesting(events: list[dict[str, Any]]) -> None:
    """Complete events of one pid/tid must form a proper tree (what Perfetto requires)."""
    eps = 0.0015  # timestamps are rounded to 1 ns
    xs = sorted((e for e in events if e["ph"] == "X"), key=lambda e: (e["ts"], -e["dur"]))
    stack: list[dict[str, Any]] = []
    for e in xs:
        while (
            stack
            and e["ts"] >= stack[-1]["ts"] + stack[-1]["dur"] - eps
            and not (e["dur"] == 0 and e["ts"] <= stack[-1]["ts"] + stack[-1]["dur"])
        ):
            stack.pop()
        if stack:
            top = stack[-1]
            assert e["ts"] + e["dur"] <= top["ts"] + top["dur"] + eps, (e, top)
        stack.append(e)


def test_chrome_trace_processes_steps_and_nesting(tmp_path: Path) -> None:
    run = write_run(tmp_path, "r", steps=12, ranks=3, straggler=2, eval_every=5)
    d = trace_of(run)
    ev = d["traceEvents"]
    names = {
        e["pid"]: e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "process_name"
    }
    assert names == {
        0: "rank 0 (node1 cuda:0 NVIDIA H200)",
        1: "rank 1 (node1 cuda:1 NVIDIA H200)",
        2: "rank 2 (node1 cuda:2 NVIDIA H200)",
    }
    for rank in range(3):
        mine = [e for e in ev if e["pid"] == rank]
        steps = [e for e in mine if e.get("cat") == "step"]
        assert [e["name"] for e in steps] == [f"step {i}" for i in range(1, 13)]
        for a, b in itertools.pairwise(steps):  # steps follow each other without overlap
            assert a["ts"] + a["dur"] <= b["ts"] + 0.01
        check_nesting(mine)
        regions = [e for e in mine if e.get("cat") == "region"]
        assert len(regions) == 12 * 13
        # every region lies inside its step and inside its parent region of the same step
        by_step: dict[int, list[dict[str, Any]]] = {}
        for s in steps:
            inside = [
                r
                for r in regions
                if s["ts"] - 0.002 <= r["ts"] and r["ts"] + r["dur"] <= s["ts"] + s["dur"] + 0.002
            ]
            by_step[int(s["name"].split()[1])] = inside
            assert len(inside) == 13
        for inside in by_step.values():
            spans = {r["args"]["region"]: r for r in inside}
            for name, r in spans.items():
                if "/" in name:
                    p = spans[name.rsplit("/", 1)[0]]
                    assert (
                        p["ts"] - 0.002 <= r["ts"]
                        and r["ts"] + r["dur"] <= p["ts"] + p["dur"] + 0.002
                    )
            assert spans["forward/vrt"]["ts"] == pytest.approx(
                spans["forward/spike"]["ts"] + spans["forward/spike"]["dur"], abs=0.002
            )
            assert spans["backward"]["args"]["ms"] == pytest.approx(
                spans["backward"]["dur"] / 1000, rel=1e-6
            )
    assert sum(1 for e in ev if e["ph"] == "i" and e["name"].startswith("eval")) == 3 * 2
    assert sum(1 for e in ev if e["ph"] == "C") == 3 * 12
    assert min(e["ts"] for e in ev if e["ph"] == "X") == pytest.approx(0.0, abs=1.0)  # µs
    # the straggler's steps are longer in the trace too
    avg = {
        r: sum(e["dur"] for e in ev if e["pid"] == r and e.get("cat") == "step") for r in range(3)
    }
    assert avg[2] > 1.2 * avg[0]


def test_layout_clamps_children_and_adopts_orphans() -> None:
    regions = {"a": (1.0, 1), "a/x": (0.7, 1), "a/y": (0.6, 2), "b/deep/z": (0.2, 1), "b": (0.5, 1)}
    out = {n: (s, d) for n, s, d in layout_regions(regions, 0.0, 10_000.0)}
    assert out["a"] == (0.0, 1000.0)
    assert out["a/x"] == (0.0, 700.0)
    assert out["a/y"] == (700.0, 300.0)  # clamped to the parent's end (args keep the 0.6 ms)
    assert out["b"] == (1000.0, 500.0)
    assert out["b/deep/z"] == (1000.0, 200.0)  # "b/deep" was not timed: it hangs from "b"
    # a step shorter than its regions: everything stays inside the step
    tight = layout_regions({"a": (5.0, 1), "b": (5.0, 1)}, 0.0, 6000.0)
    assert tight == [("a", 0.0, 5000.0), ("b", 5000.0, 1000.0)]


def test_trace_and_csv_skip_bad_lines(tmp_path: Path) -> None:
    run = tmp_path / "bad"
    run.mkdir()
    lines = [
        encode(RunStart(run_id="bad", rank=0, world_size=1, time=100.0)),
        encode(Step(step=1, time=101.0, wall_ms=1000.0, regions={"forward": (400.0, 1)})),
        "{not json\n",
        '{"v":"1.0","kind":"step","step":2,"time":102,"wall_ms":-5,"regions":{}}\n',
        encode(
            Step(
                step=3,
                time=103.0,
                wall_ms=1000.0,
                regions={"forward": (300.0, 1), "loss": (10.0, 1)},
            )
        ),
        encode(RunEnd(time=104.0, status="failed", steps=3, error=RunError("ValueError", "x"))),
        '{"v":"1.0","kind":"step","step":4,"tim',
    ]  # a partial last line
    (run / "rank0.jsonl").write_text("".join(lines))
    buf = io.StringIO()
    stats = write_chrome(run, buf)
    d = json.loads(buf.getvalue())
    assert stats.malformed == 2 and stats.steps == 2
    assert [e["name"] for e in d["traceEvents"] if e.get("cat") == "step"] == ["step 1", "step 3"]
    end = [e for e in d["traceEvents"] if e["name"].startswith("run end")]
    assert end[0]["args"]["error"] == "ValueError: x"
    buf = io.StringIO()
    stats = write_csv(run, buf)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert stats.malformed == 2 and [r["step"] for r in rows] == ["1", "3"]
    assert rows[0]["loss"] == "" and float(rows[1]["loss"]) == 10.0
    assert float(rows[0]["unaccounted_ms"]) == 600.0 and float(rows[1]["unaccounted_ms"]) == 690.0


def test_csv_one_row_per_step_and_rank(tmp_path: Path) -> None:
    run = write_run(tmp_path, "r", steps=7, ranks=2)
    buf = io.StringIO()
    write_csv(run, buf)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert [(int(r["step"]), int(r["rank"])) for r in rows] == [
        (s, k) for s in range(1, 8) for k in (0, 1)
    ]
    header = buf.getvalue().splitlines()[0].split(",")
    assert header[:6] == ["step", "rank", "epoch", "time", "wall_ms", "samples"]
    assert "forward/vrt/stage8" in header and "unaccounted_ms" in header and "mem_peak" in header
    src = [json.loads(x) for x in (run / "rank1.jsonl").read_text().splitlines() if '"step"' in x]
    r5 = next(r for r in rows if r["step"] == "5" and r["rank"] == "1")
    s5 = next(s for s in src if s["step"] == 5)
    assert float(r5["wall_ms"]) == pytest.approx(s5["wall_ms"], abs=1e-4)
    assert float(r5["backward"]) == pytest.approx(s5["regions"]["backward"][0], abs=1e-4)


def test_cli(tmp_path: Path) -> None:
    run = write_run(tmp_path, "r", steps=3, ranks=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def tui(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tui", "export", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    r = tui(str(run))
    assert r.returncode == 0 and "trace.json" in r.stderr
    assert json.loads((run / "trace.json").read_text())["traceEvents"]
    out = tmp_path / "steps.csv"
    assert tui(str(run), "--format", "csv", "-o", str(out)).returncode == 0
    assert len(out.read_text().splitlines()) == 1 + 3 * 2
    r = tui(str(run / "rank1.jsonl"), "--format", "csv", "-o", "-")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 4
    r = tui(str(tmp_path / "missing"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such run" in r.stderr


def test_step_range(tmp_path: Path) -> None:
    from tui.report.export import parse_steps

    assert (
        parse_steps("3:5") == (3, 5)
        and parse_steps("3:") == (3, None)
        and parse_steps(":4") == (None, 4)
    )
    assert parse_steps("7") == (7, 7)
    with pytest.raises(ValueError):
        parse_steps("5:3")
    run = write_run(tmp_path, "r", steps=10, ranks=2, eval_every=5)
    buf = io.StringIO()
    write_chrome(run, buf, (4, 6))
    ev = json.loads(buf.getvalue())["traceEvents"]
    assert sorted({e["name"] for e in ev if e.get("cat") == "step"}) == [
        "step 4",
        "step 5",
        "step 6",
    ]
    assert min(e["ts"] for e in ev if e["ph"] == "X") == pytest.approx(0.0, abs=1.0)
    assert [e["name"] for e in ev if e["ph"] == "i" and e["name"].startswith("eval")] == [
        "eval step 5"
    ] * 2
    buf = io.StringIO()
    write_csv(run, buf, (None, 2))
    assert [r["step"] for r in csv.DictReader(io.StringIO(buf.getvalue()))] == ["1", "1", "2", "2"]
    r = subprocess.run(
        [sys.executable, "-m", "tui", "export", str(run), "--steps", "x"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert r.returncode == 2 and "--steps" in r.stderr
