"""benchmarks/bench_model.py runs end to end on a tiny clip (no document written)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def test_bench_model_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_model", ROOT / "benchmarks" / "bench_model.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_model"] = mod
    spec.loader.exec_module(mod)
    n = torch.get_num_threads()
    try:
        assert (
            mod.main(
                [
                    "--steps",
                    "1",
                    "--warmup",
                    "0",
                    "--threads",
                    "1",
                    "--size",
                    "1",
                    "2",
                    "16",
                    "16",
                    "--no-write",
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    rows = {
        line.split("|")[1].strip(): line
        for line in out.splitlines()
        if line.startswith("| vrt/") or line.startswith("| spike")
    }
    assert set(rows) >= {f"vrt/stage{i}" for i in range(1, 9)}
    # recompute only with checkpointing (last column), never empty for a stage
    assert all(rows[f"vrt/stage{i}"].rstrip(" |").split("|")[-1].strip() for i in range(1, 9))
    assert "**step total**" in out
