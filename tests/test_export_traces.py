"""``tui export --format chrome``: captured profiler traces merged, ranks on rank 0's clock."""

from __future__ import annotations

import gzip
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from stagewatch import traces
from stagewatch.records import RunStart, Step, encode
from stagewatch.timing import TimingLogger
from tui.report.chrome_traces import TORCH_PID
from tui.report.export import write_chrome


def _export(run: Path, steps: Any = None) -> tuple[dict[str, Any], Any]:
    out = io.StringIO()
    stats = write_chrome(run, out, steps)
    return json.loads(out.getvalue(), parse_constant=_refuse), stats


def _refuse(x: str) -> None:
    raise AssertionError(f"non-standard JSON constant {x}")


@pytest.fixture
def captured_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real run of 6 steps (~5 ms each) whose steps 4 and 5 were captured on request."""
    torch = pytest.importorskip("torch")
    monkeypatch.delenv("STAGEWATCH_CAPTURE", raising=False)
    lg = TimingLogger(
        tmp_path, enable_console=False, enable_file=False, run_id="run", file_flush_interval=1
    )  # a flush point every step: the request is looked at at each
    assert lg._capture is not None
    lg._capture.poll_s = 0.0
    x = torch.ones(16, 16)
    for i in range(1, 7):
        if i == 3:
            traces.write_request(tmp_path / "run", steps=2)  # seen at the end of step 3
        with lg.region("forward"):
            x = (x @ x) / 16.0
            time.sleep(0.005)
        lg.step()
    lg.close()
    assert [t.step for t in traces.list_traces(tmp_path / "run")] == [4]
    return tmp_path / "run"


def test_the_capture_is_merged_and_lies_inside_its_steps(captured_run: Path) -> None:
    d, stats = _export(captured_run)
    assert stats.traces == 1 and not stats.trace_errors
    ev = d["traceEvents"]
    spans = {e["name"]: e for e in ev if e.get("cat") == "step"}
    assert spans["step 4"]["args"]["trace"] == "traces/step4.rank0.json.gz"
    assert "trace" not in spans["step 3"]["args"]
    mm = [e for e in ev if e.get("name") == "aten::mm" and e.get("ph") == "X"]
    assert len(mm) == 2 and all(e["pid"] >= TORCH_PID for e in mm)
    names = [e["args"]["name"] for e in ev if e.get("name") == "process_name"]
    assert "rank 0 (" in names[0] and any(n.startswith("rank 0 torch: ") for n in names)
    (marker,) = [e for e in ev if e.get("name", "").startswith("profiler capture")]
    assert marker["args"]["trigger"] == "request" and marker["pid"] == 0
    err = marker["args"]["clock_uncertainty_us"]
    slack = err + 200.0  # a step's span is (time.time() at step()) - wall_ms: a few µs apart
    for e, s in zip(mm, ("step 4", "step 5"), strict=True):
        span = spans[s]
        assert (
            span["ts"] - slack <= e["ts"] <= e["ts"] + e["dur"] <= span["ts"] + span["dur"] + slack
        )


def test_steps_range_selects_traces(captured_run: Path) -> None:
    _, stats = _export(captured_run, (1, 3))
    assert stats.traces == 0
    _, stats = _export(captured_run, (4, 4))
    assert stats.traces == 1


def test_a_bad_trace_is_skipped_with_its_reason(captured_run: Path) -> None:
    (captured_run / "traces" / "step2.rank0.json.gz").write_bytes(b"not gzip")
    with gzip.open(captured_run / "traces" / "step3.rank0.json.gz", "wt") as f:
        f.write('{"traceEvents": [{"ph": "X", "name": "a", "ts": 1, "dur": 1}]}')  # no clock
    d, stats = _export(captured_run)
    assert stats.traces == 1 and len(stats.trace_errors) == 2
    assert "gzip" in stats.trace_errors[0] and "clock" in stats.trace_errors[1]
    assert d["traceEvents"]  # still a valid export


def _two_ranks(tmp_path: Path, offset_ms: float | None) -> Path:
    """Rank 1's clock runs 250 ms ahead; both ranks end each step at the same true time."""
    run = tmp_path / "two"
    run.mkdir()
    t0 = 1_764_160_000.0
    for r in (0, 1):
        skew = 0.25 if r == 1 else 0.0
        start = RunStart(rank=r, world_size=2, time=t0 + skew, run_id="two")
        if offset_ms is not None:
            start.clock_offset_ms = offset_ms if r == 1 else 0.0
            start.clock_error_ms = 0.05 if r == 1 else 0.0
        lines = [encode(start)]
        for s in range(1, 6):
            lines.append(encode(Step(step=s, time=t0 + 0.1 * s + skew, wall_ms=100.0)))
        (run / f"rank{r}.jsonl").write_text("".join(lines))
    return run


def _step_ts(d: dict[str, Any]) -> dict[tuple[int, str], float]:
    return {(e["pid"], e["name"]): e["ts"] for e in d["traceEvents"] if e.get("cat") == "step"}


def test_ranks_are_aligned_by_their_clock_offset(tmp_path: Path) -> None:
    d, _ = _export(_two_ranks(tmp_path, 250.0))
    ts = _step_ts(d)
    for s in range(1, 6):
        assert ts[(1, f"step {s}")] == pytest.approx(ts[(0, f"step {s}")], abs=0.01)
    assert d["otherData"]["clock_offsets_ms"] == {"0": 0.0, "1": 250.0}


def test_without_an_offset_ranks_keep_their_own_clock(tmp_path: Path) -> None:
    d, _ = _export(_two_ranks(tmp_path, None))
    ts = _step_ts(d)
    assert ts[(1, "step 3")] - ts[(0, "step 3")] == pytest.approx(250_000.0, abs=0.01)


TWO_RANKS = """
import sys, time
import torch, torch.distributed as dist
dist.init_process_group("gloo")
rank = dist.get_rank()
if rank == 1:  # a clock 250 ms ahead for this whole process (records, anchors, the exchange)
    _t, _tn = time.time, time.time_ns
    time.time = lambda: _t() + 0.25
    time.time_ns = lambda: _tn() + 250_000_000
from stagewatch import CaptureOptions, TimingLogger
lg = TimingLogger(sys.argv[1], enable_console=False, enable_file=False, run_name="cap2",
                  capture=CaptureOptions(warm=5))
x = torch.ones(32, 32)
for s in range(1, 13):
    time.sleep(0.3 if (s == 8 and rank == 0) else 0.02)  # rank 1 waits for it at the all-reduce
    y = x @ x
    t = torch.ones(4)
    dist.all_reduce(t)
    lg.step()
lg.close()
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_ranks_with_skewed_clocks_capture_the_same_step_and_line_up(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from _trainer_helpers import ROOT, env_for_subprocess

    script = tmp_path / "two.py"
    script.write_text(TWO_RANKS)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = env_for_subprocess()
    env.pop("STAGEWATCH_CAPTURE", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        str(script),
        str(tmp_path / "logs"),
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    (run,) = list((tmp_path / "logs").iterdir())
    assert [(t.step, t.rank) for t in traces.list_traces(run)] == [(9, 0), (9, 1)]
    d, stats = _export(run)
    assert stats.traces == 2 and d["otherData"]["clock_offsets_ms"]["1"] == pytest.approx(
        250.0, abs=5.0
    )
    ev = d["traceEvents"]
    ends = {
        e["pid"]: e["ts"] + e["dur"] for e in ev if e.get("cat") == "step" and e["name"] == "step 9"
    }
    assert abs(ends[0] - ends[1]) < 20_000  # µs: the all-reduce ends both (250 ms apart raw)
    spans = {e["pid"]: e for e in ev if e.get("cat") == "step" and e["name"] == "step 9"}
    for rank in (0, 1):
        base = TORCH_PID + 100 * rank
        mm = [
            e
            for e in ev
            if e.get("name") == "aten::mm" and base <= e["pid"] < base + 100 and e["ph"] == "X"
        ]
        span = spans[rank]
        assert mm and all(
            span["ts"] - 2_000 <= e["ts"] <= span["ts"] + span["dur"] + 2_000 for e in mm
        )


def test_flows_of_two_traces_never_join(tmp_path: Path) -> None:
    run = tmp_path / "f"
    run.mkdir()
    (run / "rank0.jsonl").write_text(
        encode(RunStart(rank=0, run_id="f")) + encode(Step(step=1, time=10.0, wall_ms=5.0))
    )
    (run / "traces").mkdir()
    for s in (1, 2):
        ev = [
            {"ph": "X", "name": traces.ANCHOR, "pid": 7, "tid": 7, "ts": 100.0, "dur": 1.0},
            {"ph": "s", "name": "flow", "id": 5, "pid": 7, "tid": 7, "ts": 101.0},
            {"ph": "f", "name": "flow", "id": 5, "pid": 7, "tid": 7, "ts": 102.0, "bp": "e"},
        ]
        meta = {"anchors": [[10_000_000_000 - 1000, 10_000_000_000 + 1000]]}
        with gzip.open(run / "traces" / traces.trace_name(s, 0), "wt") as f:
            json.dump({traces.META_KEY: meta, "traceEvents": ev}, f)
    d, stats = _export(run)
    assert stats.traces == 2
    ids = [e["id"] for e in d["traceEvents"] if e.get("ph") in ("s", "f")]
    assert ids == [1, 1, 2, 2]
