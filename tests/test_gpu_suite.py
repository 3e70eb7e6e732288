"""benchmarks/gpu_suite.py: its CPU dry run (both phases), the archive rewritten after every
step, a step past its timeout recorded as a result, and the budget."""

from __future__ import annotations

import importlib.util
import json
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load():
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "benchmarks" / "gpu_suite.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = mod
    spec.loader.exec_module(mod)
    return mod


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_smoke_dry_run_checks_everything_and_packs_one_archive(tmp_path: Path) -> None:
    mod = load()
    assert mod.main(["smoke", "--dry-run", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gpu_suite_smoke.json",
        "gpu_suite_smoke.tar.gz",
    ]
    files = members(tmp_path / "gpu_suite_smoke.tar.gz")
    smoke = json.loads(files["gpu_suite_smoke/summary.json"])["smoke"]
    assert smoke["critical"] == [] and smoke["dry_run"]
    assert smoke["kernels"] and all(r["calls"] >= 1 and r["kernel"] for r in smoke["kernels"])
    assert any(r["mask_needs_grad"] for r in smoke["kernels"])  # the position-bias calls
    assert smoke["timing"]["missing"] == [] and smoke["timing"]["recompute_ms"]
    assert smoke["adamw8bit"]["ok"]
    assert "| kernel |" in files["gpu_suite_smoke/smoke.md"].decode()


def test_figures_dry_run_subset_and_nothing_in_docs(tmp_path: Path) -> None:
    mod = load()
    docs = (ROOT / "docs" / "benchmarks.md").read_bytes()
    assert mod.main(["figures", "--dry-run", "--out", str(tmp_path), "--only", "model_b1"]) == 0
    summary = json.loads((tmp_path / "gpu_suite_figures.json").read_text())
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status["model_b1"] == "ok" and status["timing"] == "not selected"
    files = members(tmp_path / "gpu_suite_figures.tar.gz")
    report = json.loads(files["gpu_suite_figures/model_b1/gpu_model_check.json"])
    assert report["settings"][0]["status"] == "ok"
    assert "## model_b1: gpu_model_check.md" in files["gpu_suite_figures/report.md"].decode()
    assert (ROOT / "docs" / "benchmarks.md").read_bytes() == docs
    assert mod.main(["figures", "--dry-run", "--out", str(tmp_path), "--only", "nope"]) == 2


def test_archive_rewritten_after_every_step_and_timeouts_are_results(tmp_path: Path) -> None:
    mod = load()
    out = tmp_path / "out"
    ok = tmp_path / "ok.py"
    ok.write_text("import sys, pathlib\npathlib.Path(sys.argv[1], 'r.md').write_text('fig 1')\n")
    hang = tmp_path / "hang.py"  # sees what the archive held when it started, then hangs
    hang.write_text(
        "import json, sys, tarfile, time\n"
        f"t = tarfile.open({str(out / 'gpu_suite_figures.tar.gz')!r})\n"
        "names = [m.name for m in t.getmembers()]\n"
        f"open({str(tmp_path / 'seen.json')!r}, 'w').write(json.dumps(names))\n"
        "time.sleep(60)\n"
    )
    steps = [
        mod.Step("first", (str(ok), "{work}"), 30, "a figure"),
        mod.Step("stuck", (str(hang),), 3, "a hang"),
        mod.Step("late", (str(ok), "{work}"), 30, "after the budget"),
    ]
    rc = mod.main(
        ["figures", "--dry-run", "--out", str(out), "--budget-s", "25"], steps=lambda dry: steps
    )
    assert rc == 0
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert "gpu_suite_figures/first/r.md" in seen  # packed before the next step began
    summary = json.loads((out / "gpu_suite_figures.json").read_text())
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status["first"] == "ok" and status["stuck"] == "timeout"
    assert status["late"] in ("ok", "skipped (budget)") and summary["finished"]


def test_capture_step_dry_run(tmp_path: Path) -> None:
    """The capture step (issue 22) on the CPU: a slow step captured, merged, nothing idle."""
    mod = load()
    assert mod.main(["figures", "--dry-run", "--out", str(tmp_path), "--only", "capture"]) == 0
    files = members(tmp_path / "gpu_suite_figures.tar.gz")
    res = json.loads(files["gpu_suite_figures/capture/gpu_capture_check.json"])
    assert res["ok"] and res["trigger"] == "slow" and res["merged_traces"] == 1
    assert res["cost"]["captures_during_cost_blocks"] == 0
