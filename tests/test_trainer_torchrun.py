"""Two gloo processes through ``torchrun``: one run id, two valid rank files, one checkpoint."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from _trainer_helpers import MICRO, ROOT, TINY, env_for_subprocess, records

from trainer.checkpoint import list_checkpoints


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_gloo_ranks(tmp_path):
    logs = tmp_path / "logs"
    sets = [
        a
        for item in [
            *MICRO,
            "TRAIN.MAX_STEPS=3",
            "DATA.SYNTHETIC.TRAIN_CLIPS=8",
            "TRAIN.VAL.EVERY=2",
            "DATA.SYNTHETIC.VAL_CLIPS=3",
            "TRAIN.FREEZE_FLOW_STEPS=2",
        ]
        for a in ("--set", item)
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "trainer",
        "train",
        "--cfg",
        TINY,
        "--log-dir",
        str(logs),
        *sets,
    ]
    r = subprocess.run(
        cmd, cwd=ROOT, env=env_for_subprocess(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-4000:]
    (run,) = list(logs.iterdir())  # both ranks share one run folder
    per_rank = {k: records(run / f"rank{k}.jsonl") for k in (0, 1)}
    for rank, recs in per_rank.items():
        start = recs[0]
        assert start["kind"] == "run_start" and start["rank"] == rank
        assert start["world_size"] == 2 and start["run_id"] == run.name
        steps = [x for x in recs if x["kind"] == "step"]
        assert [s["step"] for s in steps] == [1, 2, 3]
        for s in steps:
            regs = s["regions"]
            assert {"data", "forward", "loss", "backward", "allreduce", "optimizer"} <= set(regs)
            # exposed communication is outside backward; the total is a scalar
            assert regs["allreduce"][0] <= s["wall_ms"]
            assert s["scalars"]["comm_ms"] >= 0
            top = sum(v[0] for k, v in regs.items() if "/" not in k)
            assert top <= s["wall_ms"] * 1.001
        # flow net frozen for 2 steps, then trained: DDP re-wrapped over all parameters
        assert "backward/vrt/flow" not in steps[0]["regions"]
        assert "backward/vrt/flow" in steps[2]["regions"]
        assert recs[-1]["kind"] == "run_end" and recs[-1]["status"] == "completed"
    # the loss scalar is the mean over ranks: identical in both files
    losses = [[s["scalars"]["loss"] for s in per_rank[k] if s["kind"] == "step"] for k in (0, 1)]
    assert losses[0] == losses[1]
    # eval records are written once (rank 0) with metrics over all 3 held-out clips
    assert [e["step"] for e in per_rank[0] if e["kind"] == "eval"] == [2, 3]
    assert not [e for e in per_rank[1] if e["kind"] == "eval"]
    assert [s for s, _ in list_checkpoints(str(run / "checkpoints"))] == [3]
    assert (run / "config.yaml").is_file()
