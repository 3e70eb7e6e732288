"""Achieved TFLOP/s per region and MFU: from run_start FLOPs and measured times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stagewatch.records import RunStart, Step, encode
from tui.cli import main
from tui.model.efficiency import efficiency, region_line
from tui.report.summary import open_run, summary_text
from tui.view.widgets.ranks import rank_text

FLOPS = {
    "PRECISION": "bf16",
    "MICRO_BATCHES": 1,
    "BATCH": 1,
    "FLOW_FROZEN": False,
    "STEP": 3e13,  # floats, as the trainer writes them (beyond the format's int limit)
    "REGIONS": {
        "forward": 1e13,
        "forward/vrt": 1e13,
        "forward/vrt/stage8": 4e12,
        "backward": 2e13,
        "backward/vrt/stage8": 3e11,
        "not/measured": 5.0,
    },
}


def _run(tmp_path: Path, flops: object = FLOPS, gpu: str | None = "NVIDIA H200") -> Path:
    run = tmp_path / "20261201-120000-eff-0001"
    run.mkdir(parents=True)
    cfg = {"PARAMS": {"TOTAL": 1, "TRAINABLE": 1}}
    if flops is not None:
        cfg["FLOPS"] = flops
    lines = [
        encode(
            RunStart(
                run_id=run.name,
                rank=0,
                world_size=1,
                time=1.0,
                device="cuda:0",
                gpu_name=gpu,
                config=cfg,
                total_steps=10,
                samples_per_step=1,
            )
        )
    ]
    for i in (1, 2):
        lines.append(
            encode(
                Step(
                    step=i,
                    time=float(i),
                    wall_ms=1000.0,
                    samples=1,
                    regions={
                        "forward": (400.0, 1),
                        "forward/vrt": (400.0, 1),
                        "forward/vrt/stage8": (100.0, 1),
                        "backward": (500.0, 1),
                        "backward/vrt/stage8": (300.0, 1),
                    },
                )
            )
        )
    (run / "rank0.jsonl").write_text("".join(lines))
    return run


def test_efficiency_per_region_and_mfu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STAGEWATCH_PEAK_TFLOPS", raising=False)
    snap = open_run(_run(tmp_path))
    eff = efficiency(snap)
    assert eff is not None
    assert eff.step_tflops == pytest.approx(30.0)  # 30 TFLOP in 1 s
    assert eff.peak_tflops == pytest.approx(989.4) and "H200" in eff.peak_source
    assert eff.mfu == pytest.approx(30.0 / 989.4)
    st8 = eff.region("forward/vrt/stage8")
    assert st8.tflops == pytest.approx(40.0) and not st8.low
    bw8 = eff.region("backward/vrt/stage8")
    assert bw8.tflops == pytest.approx(1.0) and bw8.low  # 30 % of the step at 1/30 of its rate
    assert eff.region("not/measured") is None
    assert efficiency(snap, peak_tflops=100.0).mfu == pytest.approx(0.3)
    monkeypatch.setenv("STAGEWATCH_PEAK_TFLOPS", "bf16=60,fp32=10")
    assert efficiency(snap).mfu == pytest.approx(0.5)
    monkeypatch.delenv("STAGEWATCH_PEAK_TFLOPS")
    fp32 = efficiency(open_run(_run(tmp_path / "f", {**FLOPS, "PRECISION": "fp32"})))
    assert fp32.peak_tflops == pytest.approx(66.9)
    tf32 = efficiency(open_run(_run(tmp_path / "t", {**FLOPS, "PRECISION": "fp32", "TF32": True})))
    assert tf32.peak_tflops == pytest.approx(494.7) and tf32.precision == "tf32"


def test_no_flops_or_unknown_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STAGEWATCH_PEAK_TFLOPS", raising=False)
    assert efficiency(open_run(_run(tmp_path / "a", flops=None))) is None
    assert efficiency(open_run(_run(tmp_path / "b", flops={"STEP": "x"}))) is None
    eff = efficiency(open_run(_run(tmp_path / "c", gpu=None)))
    assert eff is not None and eff.mfu is None and eff.step_tflops == pytest.approx(30.0)


def test_summary_json_and_text_have_tflops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STAGEWATCH_PEAK_TFLOPS", raising=False)
    run = _run(tmp_path)
    assert main(["summary", str(run), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    by = {r["name"]: r for r in d["regions"]}
    assert by["forward/vrt/stage8"]["tflops"] == pytest.approx(40.0)
    assert by["backward"]["tflops"] == pytest.approx(40.0)
    e = d["efficiency"]
    assert e["step_tflops"] == pytest.approx(30.0) and e["mfu"] == pytest.approx(30 / 989.4, 1e-4)
    assert e["regions"]["backward/vrt/stage8"]["low"] is True
    assert main(["summary", str(run), "--peak-tflops", "300"]) == 0
    out = capsys.readouterr().out
    assert "MFU 10.00% of 300 TFLOP/s" in out and "far below the step's average" in out
    assert main(["summary", str(run), "--peak-tflops", "-1"]) == 2
    # a run without FLOPs: the key is there, empty
    assert main(["summary", str(_run(tmp_path / "n", flops=None)), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["efficiency"] is None
    assert "efficiency" not in summary_text(open_run(_run(tmp_path / "m", flops=None))).plain


def test_monitor_panel_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STAGEWATCH_PEAK_TFLOPS", raising=False)
    snap = open_run(_run(tmp_path))
    _, text = rank_text(snap, "backward/vrt/stage8", False, 0.4, 0.1)
    assert "1 TFLOP/s" in text.plain and "far below" in text.plain
    _, text = rank_text(snap, None, False, 0.4, 0.1)
    assert "step 30 TFLOP/s · MFU 3.03%" in text.plain
    assert region_line(None, "x") is None
    _, text = rank_text(open_run(_run(tmp_path / "n", flops=None)), None, False, 0.4, 0.1)
    assert "TFLOP/s" not in text.plain
