"""Clock offsets across ranks (stagewatch/timing/clocks.py), measured at run start."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from _trainer_helpers import ROOT, env_for_subprocess

from stagewatch import records as R
from stagewatch.timing import clocks

SCRIPT = """
import os, sys
import torch, torch.distributed as dist
dist.init_process_group("gloo")
rank = dist.get_rank()
if rank == 1:  # the test-only fake offset of this rank's clock
    os.environ["STAGEWATCH_TEST_CLOCK_SKEW_MS"] = sys.argv[2]
from stagewatch import TimingLogger
lg = TimingLogger(sys.argv[1], enable_console=False, enable_file=False, run_name="clk")
for _ in range(3):
    t = torch.ones(4)
    dist.all_reduce(t)
    lg.step()
lg.close()
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_estimate_takes_the_shortest_round_trip() -> None:
    ms = 1_000_000
    # true offset +5 ms; a slow first round with asymmetric delay, a tight second one
    slow = (0, 40 * ms - 5 * ms, 41 * ms - 5 * ms, 42 * ms)
    tight = (
        100 * ms,
        100 * ms + ms // 10 - 5 * ms,
        100 * ms + ms // 5 - 5 * ms,
        100 * ms + ms // 2,
    )
    off, err = clocks.estimate([slow, tight])
    assert (off, err) == (pytest.approx(5.1), pytest.approx(0.2))
    assert off - err <= 5.0 <= off + err


def test_no_measure_without_a_process_group() -> None:
    assert clocks.measure(0, 2) is None  # this process never initialises one


def test_clock_offset_of_a_run_start() -> None:
    assert R.clock_offset(R.RunStart(rank=0)) is None
    assert R.clock_offset(R.RunStart(rank=1, clock_offset_ms=-3.5, clock_error_ms=0.2)) == (
        -3.5,
        0.2,
    )
    line = R.encode(R.RunStart(rank=0))
    assert "clock_" not in line  # not measured: not written
    rec = R.decode(R.encode(R.RunStart(rank=1, clock_offset_ms=2.0, clock_error_ms=0.1)))
    assert R.clock_offset(rec) == (2.0, 0.1)  # type: ignore[arg-type]


@pytest.mark.slow
def test_two_gloo_ranks_measure_an_injected_offset(tmp_path: Path) -> None:
    script = tmp_path / "clk.py"
    script.write_text(SCRIPT)
    logs = tmp_path / "logs"
    skew = 250.0
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(script),
        str(logs),
        str(skew),
    ]
    r = subprocess.run(
        cmd, cwd=ROOT, env=env_for_subprocess(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-4000:]
    (run,) = list(logs.iterdir())
    starts = {}
    for k in (0, 1):
        first = (run / f"rank{k}.jsonl").read_text().splitlines()[0]
        starts[k] = json.loads(first)
    assert starts[0]["clock_offset_ms"] == 0.0 and starts[0]["clock_error_ms"] == 0.0
    off, err = starts[1]["clock_offset_ms"], starts[1]["clock_error_ms"]
    assert 0.0 <= err < 50.0
    assert off - err - 0.01 <= skew <= off + err + 0.01, (off, err)
