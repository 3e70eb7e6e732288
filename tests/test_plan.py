"""``trainer plan``: kernel choice, FLOP counts, recompute, memory prediction, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stagewatch.gpus import GIB, GpuSpec, lookup, parse_gpu, peak_override
from trainer.cli import main as trainer_main
from trainer.config import load_config
from trainer.plan import (
    RESERVE_BYTES,
    choose_sdpa_kernel,
    count_flops,
    fit,
    optimizer_state_bytes,
    simulate,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "deblur", "vrt_spike_tiny.yaml")
BF16, FP32 = torch.bfloat16, torch.float32


@pytest.fixture(scope="module")
def tiny_plans() -> dict[bool, object]:
    torch.set_num_threads(1)
    cfg = load_config(TINY)
    return {ck: simulate(cfg, checkpointing=ck) for ck in (False, True)}


# ------------------------------------------------------------------ SDPA kernel choice


@pytest.mark.parametrize(
    ("kw", "sm90", "sm80"),
    [
        # stage 8 of the full model: head size 20, bf16, a learned bias (needs grad)
        (
            {"dtype": BF16, "head_dim": 20, "has_mask": True, "mask_requires_grad": True},
            "math",
            "math",
        ),
        # the same padded to 24 (what the model does on CUDA once padded): memory-efficient
        (
            {"dtype": BF16, "head_dim": 24, "has_mask": True, "mask_requires_grad": True},
            "efficient",
            "efficient",
        ),
        # fp32 takes the memory-efficient kernel at head size 20 (alignment 4)
        (
            {"dtype": FP32, "head_dim": 20, "has_mask": True, "mask_requires_grad": True},
            "efficient",
            "efficient",
        ),
        ({"dtype": FP32, "head_dim": 18, "has_mask": False}, "math", "math"),
        # stages 1-7 self attention: d 16 with a grad-requiring bias
        (
            {"dtype": BF16, "head_dim": 16, "has_mask": True, "mask_requires_grad": True},
            "efficient",
            "efficient",
        ),
        # mutual attention with a constant mask: cuDNN on sm90 only
        (
            {"dtype": BF16, "head_dim": 16, "has_mask": True, "mask_requires_grad": False},
            "cudnn",
            "efficient",
        ),
        # spike TSA / fusion: no mask
        ({"dtype": BF16, "head_dim": 24, "has_mask": False}, "cudnn", "flash"),
        # head size above cuDNN's limit, no mask: flash
        ({"dtype": BF16, "head_dim": 160, "has_mask": False}, "flash", "flash"),
        ({"dtype": BF16, "head_dim": 20, "has_mask": False}, "flash", "flash"),
    ],
)
def test_sdpa_kernel_choice(kw: dict, sm90: str, sm80: str) -> None:
    assert choose_sdpa_kernel(arch="sm90", **kw) == sm90
    assert choose_sdpa_kernel(arch="sm80", **kw) == sm80


def test_sdpa_kernel_choice_cpu() -> None:
    assert (
        choose_sdpa_kernel(
            dtype=FP32, head_dim=8, has_mask=True, mask_requires_grad=True, arch="cpu"
        )
        == "math"
    )
    assert choose_sdpa_kernel(dtype=FP32, head_dim=8, has_mask=True, arch="cpu") == "flash_cpu"
    assert choose_sdpa_kernel(dtype=FP32, head_dim=8, arch="cpu") == "flash_cpu"


def test_cuda_only_head_padding_applies_in_the_gpu_simulation(monkeypatch) -> None:
    """The model pads head sizes no fused kernel takes only for CUDA tensors (q.is_cuda):
    simulating a GPU on meta tensors must take that path too, a CPU plan must not."""
    from trainer.models import attention
    from trainer.plan.simulation import _as_on_cuda

    orig = lambda q: q.is_cuda  # noqa: E731 - stands in for attention._pad_heads
    monkeypatch.setattr(attention, "_pad_heads", orig, raising=False)
    q20 = torch.empty(2, 1, 4, 20, device="meta", dtype=BF16)
    with _as_on_cuda("cuda"):
        assert attention._pad_heads(q20)
        assert not attention._pad_heads(torch.empty(2, 1, 4, 24, device="meta", dtype=BF16))
        assert not attention._pad_heads(torch.empty(2, 1, 4, 20, device="meta"))  # fp32: no
    assert attention._pad_heads is orig
    with _as_on_cuda("cpu"):
        assert attention._pad_heads is orig


# ------------------------------------------------------------------ FLOPs


def _meta(*shape: int, grad: bool = True) -> torch.Tensor:
    return torch.empty(*shape, device="meta", requires_grad=grad)


def test_linear_flops_are_analytic() -> None:
    with torch.device("meta"):
        lin = nn.Linear(64, 32)
    x = _meta(8, 64)
    f = count_flops(lin, x)
    assert f["forward"] == 2 * 8 * 64 * 32
    assert f["backward"] == 2 * (2 * 8 * 64 * 32)  # grad input + grad weight


def test_conv3d_flops_are_analytic() -> None:
    with torch.device("meta"):
        conv = nn.Conv3d(4, 6, (1, 3, 3), padding=(0, 1, 1))
    x = _meta(2, 4, 3, 16, 16, grad=False)
    f = count_flops(conv, x)
    n_out = 2 * 6 * 3 * 16 * 16
    assert f["forward"] == 2 * n_out * 4 * 1 * 3 * 3
    assert f["backward"] == f["forward"]  # weight gradient only: the input needs none


@pytest.mark.parametrize(
    ("amp", "d", "kernel_fwd_matmuls"), [(BF16, 16, 2), (BF16, 20, 2), (None, 20, 2)]
)
def test_attention_flops_are_analytic(
    amp: torch.dtype | None, d: int, kernel_fwd_matmuls: int
) -> None:
    b, h, n = 3, 2, 32
    q, k, v = (_meta(b, h, n, d) for _ in range(3))
    bias = _meta(1, h, n, n)
    f = count_flops(
        lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
        q,
        k,
        v,
        bias,
        amp=amp,
    )
    assert f["forward"] == kernel_fwd_matmuls * 2 * b * h * n * n * d
    # backward: dV, dP, dQ, dK (+ the recomputed scores in the fused kernels)
    assert f["backward"] >= 4 * 2 * b * h * n * n * d


def test_recompute_flops_exactly_when_checkpointing(tiny_plans: dict) -> None:
    off, on = tiny_plans[False], tiny_plans[True]
    stages = [r for r in on.regions if r.name.startswith("vrt/stage")]
    assert len(stages) == 8
    for r in stages:
        assert 0 < r.recompute_flops <= r.forward_flops
    assert all(r.recompute_flops == 0 for r in off.regions)
    assert all(r.recompute_flops == 0 for r in on.regions if not r.name.startswith("vrt/stage"))
    # checkpointing changes neither the forward nor the backward work
    by = {r.name: r for r in off.regions}
    for r in on.regions:
        assert r.forward_flops == by[r.name].forward_flops
        assert r.backward_flops == by[r.name].backward_flops
    assert on.totals()["recompute_flops"] == sum(r.recompute_flops for r in stages)
    assert on.memory["saved_activations"] < off.memory["saved_activations"]


def test_alignment_checkpointing_recomputes_in_stages_1_to_7() -> None:
    cfg = load_config(TINY, ["MODEL.VRT.USE_CHECKPOINT_ALIGN=true"])
    p = simulate(cfg, checkpointing=False)
    assert p.checkpointing == {"attention": False, "ffn": False, "align": True}
    rec = {r.name: r.recompute_flops for r in p.regions if r.name.startswith("vrt/stage")}
    assert all(rec[f"vrt/stage{i}"] > 0 for i in range(1, 8)) and rec["vrt/stage8"] == 0


def test_step_flops_count_all_micro_batches() -> None:
    from tests._trainer_helpers import MICRO

    cfg = load_config(TINY, [*MICRO, "TRAIN.GRADIENT_ACCUMULATION_STEPS=3"])
    p = simulate(cfg, device="cpu")
    tot = p.totals()
    assert tot["step_flops"] == 3 * (tot["forward_flops"] + tot["backward_flops"])
    assert p.step_flops()["forward/vrt/stage1"] == 3 * p.flops["forward/vrt/stage1"]
    assert p.memory["grads_from_earlier_micro_batches"] == p.memory["gradients"]


# ------------------------------------------------------------------ memory


def test_optimizer_state_as_bitsandbytes_stores_it() -> None:
    big, small = torch.empty(4096, device="meta"), torch.empty(4095, device="meta")
    assert optimizer_state_bytes([big], "adamw") == 8 * 4096
    # two uint8 states + two fp32 absmax per 256-element block + the two shared qmaps
    assert optimizer_state_bytes([big], "adamw8bit") == 2 * 4096 + 2 * 4 * 16 + 2 * 256 * 4
    assert optimizer_state_bytes([small], "adamw8bit") == 8 * 4095
    odd = torch.empty(4097, device="meta")
    assert optimizer_state_bytes([odd], "adamw8bit") == 2 * 4097 + 2 * 4 * 17 + 2 * 256 * 4


def test_predicted_cpu_peak_within_15_percent_of_measured() -> None:
    """One real CPU training step of the tiny model at 2×64×64, batch 2: the growth of the
    resident set (allocations ≥ 64 KiB mmapped, so freed memory leaves it) against the
    plan's peak minus what exists before the step (benchmarks/plan_cpu_peak.py)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    sets = [
        "DATA.CROP_SIZE=64",
        "DATA.SYNTHETIC.HEIGHT=64",
        "DATA.SYNTHETIC.WIDTH=64",
        "DATA.CLIP_LEN=2",
        "TRAIN.BATCH_SIZE=2",
    ]
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "plan_cpu_peak.py"), "--cfg", TINY]
    for s in sets:
        cmd += ["--set", s]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["measured_step_bytes"] > 50e6  # large enough to dwarf allocator noise
    err = abs(r["predicted_step_bytes"] - r["measured_step_bytes"]) / r["measured_step_bytes"]
    assert err < 0.15, r


def test_fit_finds_the_largest_batch(tiny_plans: dict) -> None:
    cfg = load_config(TINY)
    plan = tiny_plans[False]
    p1 = simulate(cfg, batch=1, checkpointing=False, count_saved=False).peak
    slope = plan.peak - p1  # the tiny config trains batch 2
    gpu = GpuSpec("test", RESERVE_BYTES + p1 + int(2.5 * slope), 1.0, 1.0, "sm90")
    f = fit(cfg, gpu, plan, settings=(False,))
    off = next(r for r in f["max_batch"] if not r["checkpointing"])
    assert off["max_batch"] == 3
    assert off["peak_at_max"] <= f["usable"]
    assert f["fits"] and f["headroom"] > 0
    tiny_gpu = GpuSpec("small", RESERVE_BYTES + p1 // 2, 1.0, 1.0, "sm90")
    g = fit(cfg, tiny_gpu, plan, settings=(False,))
    assert not g["fits"] and all(r["max_batch"] == 0 for r in g["max_batch"])


# ------------------------------------------------------------------ GPUs table


def test_gpu_lookup_and_parse() -> None:
    assert lookup("NVIDIA H200").name == "NVIDIA H200"
    assert lookup("NVIDIA A100-SXM4-40GB").memory < 50 * GIB
    assert lookup("NVIDIA A100-SXM4-80GB").arch == "sm80"
    assert lookup("Some other card") is None
    assert parse_gpu("h100").arch == "sm90"
    assert parse_gpu("80").memory == 80 * GIB
    with pytest.raises(ValueError, match="unknown GPU"):
        parse_gpu("Voodoo2")
    assert peak_override("bf16", {"STAGEWATCH_PEAK_TFLOPS": "500"}) == 500.0
    env = {"STAGEWATCH_PEAK_TFLOPS": "bf16=400,fp32=50"}
    assert peak_override("fp32", env) == 50.0
    assert peak_override("bf16", {"STAGEWATCH_PEAK_TFLOPS": "x"}) is None


# ------------------------------------------------------------------ CLI


def test_plan_cli_json_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    assert trainer_main(["plan", "--cfg", TINY, "--json", "--set", "TRAIN.BATCH_SIZE=1"]) == 0
    d = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in d["regions"]]
    for want in (
        "spike_encoder",
        "spike_tsa",
        "vrt/flow",
        "vrt/stage1",
        "vrt/stage8",
        "vrt/fusion1",
        "vrt/head",
    ):
        assert want in names
    assert d["shape"]["batch"] == 1 and d["precision"] == "bf16"
    assert d["memory"]["peak"] > d["memory"]["parameters"] > 0
    assert d["flops_by_region"]["forward/vrt/stage8"] > 0
    assert {c["kernel"] for c in d["sdpa"]} <= {"cudnn", "flash", "efficient", "math"}
    assert trainer_main(["plan", "--cfg", TINY, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "predicted peak" in out and "vrt/stage8" in out and "fp32 on cpu" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--cfg", "no/such.yaml"],
        ["--cfg", TINY, "--set", "TRAIN.AMP=fp8"],
        ["--cfg", TINY, "--set", "MODEL.VRT.EMBED_DIMS=7"],
        ["--cfg", TINY, "--gpu", "Voodoo2"],
    ],
)
def test_plan_cli_bad_input_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert trainer_main(["plan", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trainer plan: error:") and "\n" not in err


@pytest.mark.slow
def test_plan_of_full_configs() -> None:
    """Every shipped full-size config plans (the timing is in docs/benchmarks.md)."""
    import glob

    torch.set_num_threads(1)
    names = sorted(glob.glob(os.path.join(ROOT, "configs", "deblur", "*.yaml")))
    names = [n for n in names if not n.endswith("_tiny.yaml")]
    assert len(names) >= 2
    for name in names:
        cfg = load_config(name)
        p = simulate(cfg)
        st8 = next(r for r in p.regions if r.name == "vrt/stage8")
        # design/GPU-NOTES.md §2.1: 2.04 TF forward in stage 8 at 5×256², 8.5 TF in all
        assert 1.9e12 < st8.forward_flops / p.batch < 2.2e12, name
        assert 8.0e12 < p.totals()["forward_flops"] / p.batch < 9.0e12, name


# ------------------------------------------------------------------ run_start


def test_run_start_carries_flops_per_region(tmp_path) -> None:
    from tests._trainer_helpers import MICRO, records
    from trainer.train import train

    torch.set_num_threads(1)
    cfg = load_config(
        TINY, [*MICRO, "TRAIN.MAX_STEPS=1", "TRAIN.EPOCHS=1", "TRAIN.GRADIENT_ACCUMULATION_STEPS=2"]
    )
    r = train(cfg, log_dir=str(tmp_path / "logs"), write_checkpoints=False, validate_at_end=False)
    recs = records(os.path.join(r.run_dir, "rank0.jsonl"))
    fl = recs[0]["config"]["FLOPS"]
    assert fl["MICRO_BATCHES"] == 2 and fl["PRECISION"] == "fp32" and fl["FLOW_FROZEN"]
    regs = fl["REGIONS"]
    step = next(x for x in recs if x["kind"] == "step")
    # every region with FLOPs is one the step measured, under the same name
    assert "forward/vrt/stage8" in regs and "backward/vrt/stage8" in regs
    assert "backward/vrt/flow" not in regs  # frozen at the start (FREEZE_FLOW_STEPS)
    for name in ("forward/vrt/stage1", "backward/vrt/stage1", "forward/spike_encoder"):
        assert name in step["regions"] and regs[name] > 0
    assert fl["STEP"] == regs["forward"] + regs.get("loss", 0) + regs["backward"]
    assert all(isinstance(v, float) for v in regs.values())  # past the format's int limit


def test_full_size_flops_survive_the_record_format(tmp_path) -> None:
    """A full-size count (~1.8e14 per step) is past the format's integer limit: the
    run_start the trainer writes must still be read back, FLOPs included."""
    from stagewatch.records import RunStart, encode
    from tui.report.summary import open_run

    run = tmp_path / "20261201-000000-big-0001"
    run.mkdir()
    cfg = {
        "FLOPS": {
            "PRECISION": "bf16",
            "STEP": 1.77e14,
            "REGIONS": {"forward": float(176_631_000_000_000)},
        }
    }
    (run / "rank0.jsonl").write_text(
        encode(RunStart(run_id=run.name, rank=0, world_size=1, time=1.0, config=cfg))
    )
    snap = open_run(run)
    assert snap.config["FLOPS"]["REGIONS"]["forward"] == 176_631_000_000_000


# ------------------------------------------------------------------ trainer bench


def test_bench_predicts_and_skips_rows_that_do_not_fit(tmp_path, monkeypatch) -> None:
    from trainer import bench
    from trainer.bench_report import fmt_bytes, markdown
    from trainer.bench_results import FAILED, SKIPPED

    torch.set_num_threads(1)
    ran: list[list[str]] = []

    def command(cfg: str, overrides: list[str], log_dir: str) -> list[str]:
        ran.append(list(overrides))
        return [sys.executable, "-c", "raise SystemExit(5)"]

    from tests._trainer_helpers import MICRO

    sets = [*MICRO, "TRAIN.BATCH_SIZE=1"]
    monkeypatch.setattr(bench, "_device_and_capacity", lambda cfg: ("cpu", 1000))
    rep = bench.run_bench(
        TINY, [()], log_dir=str(tmp_path / "logs"), command=command, extra=sets, echo=lambda s: None
    )
    r = rep.results[0]
    assert not ran and r.status == SKIPPED and r.mem_predicted > 1000
    assert r.outcome.startswith("not run: predicted peak") and "--force" in r.outcome
    md = markdown(rep)
    assert fmt_bytes(r.mem_predicted) in md and "not run" in md
    rep = bench.run_bench(
        TINY,
        [()],
        log_dir=str(tmp_path / "logs"),
        command=command,
        extra=sets,
        echo=lambda s: None,
        force=True,
    )
    assert len(ran) == 1 and rep.results[0].status == FAILED
    monkeypatch.setattr(bench, "_device_and_capacity", lambda cfg: ("cpu", 10**15))
    rep = bench.run_bench(
        TINY, [()], log_dir=str(tmp_path / "logs"), command=command, extra=sets, echo=lambda s: None
    )
    assert len(ran) == 2 and rep.results[0].mem_predicted == r.mem_predicted


def test_fit_rows_say_does_not_fit_and_name_alignment_checkpointing(
    tiny_plans: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 20: "largest batch 0" for a step that does not fit at all; the rows named only
    # "checkpointing on/off" though alignment checkpointing stays as configured
    from trainer.plan import fitting
    from trainer.plan.report import _fit_lines

    gib = 2**30

    def at(self: fitting._Peaks, b: int) -> int:  # linear in the batch, no simulation
        return self.known.setdefault(b, (10 + 5 * b) * gib)

    monkeypatch.setattr(fitting._Peaks, "at", at)
    cfg = load_config(TINY)
    plan = tiny_plans[False]
    g = fit(cfg, GpuSpec("small", RESERVE_BYTES + 12 * gib, 1.0, 1.0, "sm90"), plan, (False,))
    row = _fit_lines(g)[1]
    assert "does not fit, even at batch 1" in row and "largest batch 0" not in row
    align = "on" if plan.checkpointing["align"] else "off"
    assert f"attention+FFN off, alignment {align} (as configured)" in row
    assert g["max_batch"][0]["align"] == plan.checkpointing["align"]
    big = fit(cfg, GpuSpec("big", RESERVE_BYTES + 31 * gib, 1.0, 1.0, "sm90"), plan, (False,))
    row = _fit_lines(big)[1]
    assert "largest batch " in row and "does not fit" not in row and f"alignment {align}" in row
