"""The timing benchmarks: the CPU benchmark runs (quick), the GPU script's CPU parts work."""

from __future__ import annotations

import importlib.util
import json
import py_compile
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_script_compiles_and_imports_without_torch():
    py_compile.compile(str(BENCH / "gpu_timing_check.py"), doraise=True)
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location("
        f"'g', {str(BENCH / 'gpu_timing_check.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "assert 'torch' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_gpu_script_cpu_helpers(tmp_path):
    g = load("gpu_timing_check")
    args = g.parse_args(["--out", str(tmp_path), "--regions", "3"])
    assert (args.size, args.regions, args.dtype) == (4096, 3, "float32")
    with pytest.raises(SystemExit):
        g.parse_args(["--out", str(tmp_path), "--regions", "0"])
    names = g.region_names(3)
    assert names == ["mm00", "mm01", "mm02"]

    def ev(name, us, device="DeviceType.CPU"):
        return SimpleNamespace(name=name, device_time_total=us, device_type=device)

    events = [
        ev("mm00", 2000.0),
        ev("mm00", 2200.0),
        ev("mm01", 1000.0),
        ev("mm01", 999999.0, device="DeviceType.CUDA"),  # the GPU-side annotation: ignored
        ev("aten::mm", 5.0),
        ev("mm02", 0.0),
    ]
    kernel = g.kernel_ms_by_region(events, names)
    assert kernel == {"mm00": pytest.approx(2.1), "mm01": pytest.approx(1.0), "mm02": 0.0}
    rows = g.compare_regions({"mm00": 2.15, "mm01": 1.2, "mm02": 0.1, "mm03": 1.0}, kernel)
    by = {r["region"]: r for r in rows}
    assert by["mm00"]["ok"] and by["mm00"]["rel_error"] == pytest.approx(0.05 / 2.1)
    assert not by["mm01"]["ok"] and by["mm01"]["rel_error"] == pytest.approx(0.2)
    assert not by["mm02"]["ok"] and by["mm02"]["rel_error"] is None  # no kernel time
    assert not by["mm03"]["ok"] and by["mm03"]["kernel_ms"] is None
    ov = g.overhead([100.0, 101.0, 99.0], [100.2, 100.4, 100.3])
    assert ov["overhead"] == pytest.approx(0.003)
    result = {
        "gpu": "Fake GPU",
        "torch": "0",
        "config": {"regions": 3, "size": 8, "dtype": "float32"},
        "step": ov,
        "regions": rows[:1],
    }
    result["verdict"] = g.verdict(result)
    assert result["verdict"] == {"overhead_ok": True, "regions_ok": True}
    text = g.format_summary(result)
    assert "overhead +0.300%" in text and "max |error| 2.38%" in text
    path = g.write_result(tmp_path / "out", result)
    assert json.loads(path.read_text())["verdict"]["regions_ok"] is True


def test_gpu_script_without_a_gpu_exits_2(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run the script itself")
    g = load("gpu_timing_check")
    assert g.main(["--out", str(tmp_path)]) == 2


def test_gpu_script_cpu_dry_run(tmp_path, capsys):
    """Every phase of the script on the CPU: plumbing, JSON and logs (no GPU figures)."""
    torch = pytest.importorskip("torch")
    g = load("gpu_timing_check")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: thread hand-offs would dominate on a busy box
    args = "--cpu-dry-run --size 32 --regions 4 --steps 3 --rounds 2 --profile-steps 3"
    try:
        rc = g.main(["--out", str(tmp_path), *args.split(), "--warmup", "1"])
    finally:
        torch.set_num_threads(threads)
    assert rc in (0, 1)  # CPU timings are not held to the GPU targets
    res = json.loads((tmp_path / "gpu_timing_check.json").read_text())
    assert res["mode"] == "cpu-dry-run"
    assert len(res["step"]["on_blocks_ms"]) == len(res["step"]["off_blocks_ms"]) == 2
    assert [r["region"] for r in res["regions"]] == ["mm00", "mm01", "mm02", "mm03"]
    assert all(r["event_ms"] > 0 and r["kernel_ms"] > 0 for r in res["regions"])
    assert len(list((tmp_path / "logs").iterdir())) == 2  # the overhead and accuracy runs
    assert "step time: off" in capsys.readouterr().out


def test_cpu_benchmark_smoke_run(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_timing.py"),
            "--smoke",
            "--no-write",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    calls = data["calls_ns"]
    for key in ("region_ns", "log_timing_ns", "off_no_logger_region_ns", "off_disabled_region_ns"):
        assert calls[key] > 0
    # disabled must be far cheaper than enabled, whatever the machine's load
    assert calls["off_disabled_region_ns"] < calls["region_ns"]
    assert calls["off_no_logger_log_timing_ns"] < calls["log_timing_ns"]
    for res in data["per_step"].values():
        assert len(res["windows"]) == 2
    assert "## Timing core, CPU cost" in proc.stdout
