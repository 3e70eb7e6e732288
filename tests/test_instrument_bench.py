"""benchmarks/gpu_instrument_check.py (the GPU suite's instrument step) as a CPU dry run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_gpu_instrument_check_dry_run(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        path = ROOT / "benchmarks" / "gpu_instrument_check.py"
        spec = importlib.util.spec_from_file_location("gpu_instrument_check", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert mod.main(["--out", str(tmp_path), "--dry-run"]) == 0
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    res = json.loads((tmp_path / "gpu_instrument_check.json").read_text())
    ev = res["events"]
    assert ev["ok"] and ev["modules"] == 23 and ev["missing"] == [] and ev["bad"] == []
    assert "backward/layers/0/attn" in ev["last_step_ms"]
    assert set(res["overhead"]["median_ms"]) == {
        "none",
        "hooks2",
        "core",
        "instrument2",
        "instrument3",
        "profiler",
    }
    assert "| instrument2 |" in (tmp_path / "gpu_instrument_check.md").read_text()


def test_instrument_ab_runs_against_a_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/bench_instrument_ab.py (paired before/after), here against this tree."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        path = ROOT / "benchmarks" / "bench_instrument_ab.py"
        spec = importlib.util.spec_from_file_location("bench_instrument_ab", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        args = ["--base", str(ROOT), "--pairs", "2", "--width", "32", "--batch", "1", "--seq", "4"]
        assert mod.main(args) == 0
        assert mod.main([*args, "--keep"]) == 0  # hooks installed once, switched in by mode
        with pytest.raises(SystemExit, match="no such file"):
            mod.main(["--base", str(ROOT / "nowhere")])
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = capsys.readouterr().out
    assert "| this |" in out and "| base |" in out and "this - base, paired" in out
