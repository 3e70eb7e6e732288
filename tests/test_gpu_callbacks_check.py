"""benchmarks/gpu_callbacks_check.py: its CPU dry run on both frameworks, and its verdict."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load():
    path = ROOT / "benchmarks" / "gpu_callbacks_check.py"
    spec = importlib.util.spec_from_file_location("gpu_callbacks_check", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_callbacks_check"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_dry_run_checks_both_frameworks(tmp_path, one_torch_thread):
    mod = load()
    assert mod.main(["--dry-run", "--steps", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_callbacks_check.json").read_text())
    assert report["failures"] == [] and not report["cuda"]
    for fw in ("lightning", "hf"):
        for mode in ("log_loss=False", "log_loss=True"):
            r = report["results"][fw][mode]
            assert r["problems"] == [] and len(r["step_ms"]) == 1
            assert {"forward", "backward", "optimizer", "data/wait"} <= set(r["last_regions"])


def test_verdict_counts_problems_and_syncs_beyond_the_loss():
    mod = load()
    ok = {"problems": [], "syncs_from_stagewatch": 0}
    results = {
        "hf": {"log_loss=False": dict(ok, syncs_from_stagewatch=1), "log_loss=True": dict(ok)},
        "lightning": {"log_loss=True": dict(ok, syncs_from_stagewatch=3, problems=["x"])},
        "other": {"skipped": "not installed"},
    }
    bad = mod.verdict(results, 3)
    assert bad == ["hf log_loss=False: 1 syncs (at most 0)", "lightning log_loss=True: x"]
