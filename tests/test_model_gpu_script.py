"""benchmarks/gpu_model_check.py: argument checks and a CPU dry run of the whole script."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def load():
    spec = importlib.util.spec_from_file_location(
        "gpu_model_check", ROOT / "benchmarks" / "gpu_model_check.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_model_check"] = mod
    spec.loader.exec_module(mod)
    return mod


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["--dry-run", "--clip", "1", "16", "16"], "T >= 2"),
        (["--dry-run", "--clip", "2", "20", "16"], "multiples of 8"),
        (["--dry-run", "--batches", "0"], "--batches"),
        (["--dry-run", "--steps", "0"], "--steps"),
        (["--dry-run", "--peak-tflops", "-1"], "--peak-tflops"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, capsys, argv: list[str], text: str) -> None:
    mod = load()
    with pytest.raises(SystemExit) as e:
        mod.parse_args([str(tmp_path), *argv])
    assert e.value.code == 2 and text in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_refuses_without_cuda(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        load().parse_args([str(tmp_path)])
    assert e.value.code == 2 and "no CUDA device" in capsys.readouterr().err


def test_defaults_are_the_issue_settings(tmp_path: Path) -> None:
    mod = load()
    args = mod.parse_args([str(tmp_path), "--dry-run"])
    assert args.batches == [1, 3] and args.ckpt == "both"
    assert mod.FULL.name == "vrt_spike_full.yaml"
    assert mod.gpu_peak("NVIDIA H200", None) == 989.0
    assert mod.gpu_peak("NVIDIA H100 PCIe", None) == 756.0
    assert mod.gpu_peak("NVIDIA H100 80GB HBM3", None) == 989.0
    assert mod.gpu_peak("Some GPU", 100.0) == 100.0 and mod.gpu_peak("Some GPU", None) is None


def test_dry_run_writes_json_and_markdown(tmp_path: Path) -> None:
    mod = load()
    out = tmp_path / "out"
    assert mod.main([str(out), "--dry-run", "--batches", "1", "--warmup", "0", "--ckpt", "on"]) == 0
    report = json.loads((out / "gpu_model_check.json").read_text())
    assert report["dry_run"] and report["clip"] == [2, 16, 16]
    assert [(s["batch"], s["checkpointing"]) for s in report["settings"]] == [(1, True)]
    for s in report["settings"]:
        assert s["status"] == "ok" and s["step_ms"] > 0 and s["final_loss"] > 0
        assert s["heaviest_forward_stage"].startswith("vrt/stage")
        assert 0 < s["shares"]["forward"] < 1 and 0 < s["shares"]["backward"] < 1
        assert "backward/vrt/stage8" in s["shares"]
    assert "backward/vrt/stage8/recompute" in report["settings"][0]["shares"]
    fl = report["flops"]
    assert fl["forward+backward"] > fl["forward"] > 0
    # forward + backward is counted in one context: ~3x the forward, not the backward alone
    assert fl["forward+backward"] == fl["forward"] + fl["backward"]
    assert 2.5 < fl["forward+backward"] / fl["forward"] < 3.3
    stages = sum(fl[f"forward/vrt/stage{i}"] for i in range(1, 9))
    assert stages < fl["forward/vrt"] <= fl["forward"]
    md = (out / "gpu_model_check.md").read_text()
    assert "| 1 | on | ok |" in md and "vrt/stage8" in md
    assert len(list((out / "logs").glob("*/rank0.jsonl"))) == 1


def test_peak_memory_is_the_largest_step_peak_not_the_counter_after_reset() -> None:
    """A fake allocator behind the timing core's per-step reset (GPU-NOTES #3): 50.4 GB at
    the peak of a step, 0.4 GB allocated once it ends."""
    from stagewatch.timing import TimingLogger

    mod = load()
    state = {"peak": 0, "now": 0}

    def step_alloc(peak: int, after: int) -> None:
        state["peak"], state["now"] = max(state["peak"], peak), after

    def read() -> dict[str, int]:  # as cuda_memory_reader: read, then reset the peak
        out = {"allocated": state["now"], "reserved": 60_000_000_000, "peak": state["peak"]}
        state["peak"] = state["now"]
        return out

    log = TimingLogger(enable_console=False, enable_file=False, enable_jsonl=False)
    log._memory = read
    for _ in range(3):
        step_alloc(50_400_000_000, 400_000_000)
        log.step(samples=1)
    log.close()
    assert state["peak"] == 400_000_000  # what max_memory_allocated() reports now
    assert mod.run_peak(log, "peak", state["peak"]) == 50_400_000_000
    assert mod.run_peak(None, "peak", 7) == 7
