"""instrument under real DDP and FSDP2 (fully_shard): two gloo processes on CPU."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_instrument_ddp_worker.py")
EXPECTED = {
    f"{phase}/{m}"
    for phase in ("forward", "backward")
    for m in ("encoder", "encoder/0", "encoder/1", "encoder/2", "head")
} | {"forward", "backward"}
#: what watch_ddp adds on a CPU model (comm/buffers only for a model with buffers)
COMM = {"comm/exposed", "comm/launch", "comm/total"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_and_fsdp2_models_are_unwrapped_on_every_rank(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path), str(_free_port())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    runs = ["ddp", "inner", "ownhook"] + (["fsdp"] if "fsdp skipped" not in r.stderr else [])
    runs += ["fsdp1"] if "fsdp1 skipped" not in r.stderr else []
    for run in runs:
        # DDP's all-reduce is timed whether the model was wrapped before instrument or after
        # it (found at its first forward); DDP takes one comm hook, so the user's own wins
        comm = COMM if run in ("ddp", "inner") else set()
        for rank in (0, 1):
            lines = (tmp_path / run / f"rank{rank}.jsonl").read_text().splitlines()
            steps = [rec for rec in map(json.loads, lines) if rec["kind"] == "step"]
            assert len(steps) == 3, (run, rank)
            for s in steps:
                assert set(s["regions"]) == EXPECTED | comm, (run, rank, sorted(s["regions"]))
                assert s["regions"]["backward/head"][1] == 1
                if comm:
                    exposed, calls = s["regions"]["comm/exposed"]
                    assert calls == 1 and 0.0 <= exposed <= s["regions"]["backward"][0]
    for rank in (0, 1):  # the two processes' lines may interleave
        said = f"rank{rank}: ownhook warning: stagewatch.watch_ddp: communication not timed: "
        assert r.stderr.count(said + "the model has a comm hook already") == 1, r.stderr[-2000:]
    assert "ddp warning" not in r.stderr and "inner warning" not in r.stderr
    # FSDP2 runs the forward on unsharded parameters: the encoder (its input needs no
    # gradient) ends its backward on theirs, not at the end of the pass with a warning
    assert "fsdp warning" not in r.stderr and "fsdp1 warning" not in r.stderr, r.stderr[-2000:]
