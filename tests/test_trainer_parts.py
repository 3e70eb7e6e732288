"""Trainer parts: schedule, optimizers, checkpoints, comm timing, metrics, losses, progress."""

from __future__ import annotations

import io
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from stagewatch.errors import UsageError
from trainer.checkpoint import list_checkpoints, load_checkpoint, resolve_resume, save_checkpoint
from trainer.config import TrainConfig, from_raw
from trainer.distributed import GradSyncTimer
from trainer.losses import PerceptualLoss, VGGFeatures, build_perceptual, charbonnier
from trainer.metrics import psnr, ssim
from trainer.optim import WarmupCosine, build_optimizer, import_bnb, optimizer_state_bytes
from trainer.progress import Progress

ROOT = Path(__file__).resolve().parent.parent


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(64, 128)
        self.spynet = nn.Linear(64, 64)  # stands for the flow net (by name)
        self.norm = nn.LayerNorm(128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.body(x)) + self.spynet(x).sum()


def test_warmup_cosine_schedule_and_flow_freeze():
    m = Tiny()
    opt = build_optimizer(m, TrainConfig())
    s = WarmupCosine(
        opt, 1e-3, total_steps=100, warmup=10, min_lr=1e-5, freeze_flow_steps=20, flow_lr_mult=0.125
    )
    assert s.lr_at(0) == pytest.approx(1e-4)  # first step of warm-up
    assert s.lr_at(9) == pytest.approx(1e-3)
    assert s.lr_at(10) == pytest.approx(1e-3)
    assert s.lr_at(55) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5, rel=1e-6)
    assert s.lr_at(100) == pytest.approx(1e-5)
    flow = [g for g in opt.param_groups if g["flow"]]
    main = [g for g in opt.param_groups if not g["flow"]]
    assert flow and main
    for _ in range(20):
        assert all(g["lr"] == 0 for g in flow)
        s.step()
    assert flow[0]["lr"] == pytest.approx(main[0]["lr"] * 0.125)
    st = s.state_dict()
    s2 = WarmupCosine(opt, 1e-3, 100, 10, 1e-5)
    s2.load_state_dict(st)
    assert s2.done == 20
    # no weight decay on biases and norms
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays[id(m.norm.weight)] == 0 and decays[id(m.body.bias)] == 0
    assert decays[id(m.body.weight)] == TrainConfig().OPTIM.WEIGHT_DECAY


def test_adamw8bit_on_cpu_is_quiet_and_small(capfd):
    import_bnb()
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    m = nn.Linear(256, 256)
    cfg = from_raw({"TRAIN": {"OPTIM": {"TYPE": "adamw8bit"}}}).TRAIN
    opt8 = build_optimizer(m, cfg)
    opt32 = build_optimizer(nn.Linear(256, 256), TrainConfig())
    for o, mod in ((opt8, m), (opt32, None)):
        mod = mod or o.param_groups[0]["params"][0]
        for p in (x for g in o.param_groups for x in g["params"]):
            p.grad = torch.randn_like(p)
        o.step()
    w = m.weight.numel()
    assert optimizer_state_bytes(opt8) < 3 * w  # two uint8 states + block maxima
    assert optimizer_state_bytes(opt32) >= 8 * w  # two fp32 states


def test_checkpoints_atomic_keep_last_and_resolve(tmp_path):
    d = str(tmp_path / "ck")
    for step in (1, 2, 3, 4):
        save_checkpoint(d, step, {"model": {}, "step": step}, keep_last=2)
    assert [s for s, _ in list_checkpoints(d)] == [3, 4]
    assert not [f for f in os.listdir(d) if f.startswith(".")]  # no temp files left
    assert load_checkpoint(resolve_resume(d, "", "", None))["step"] == 4
    # a run folder and 'auto' (newest run of the name) work too
    run = tmp_path / "logs" / "20260101-000000-myrun-abcd"
    save_checkpoint(str(run / "checkpoints"), 7, {"model": {}, "step": 7}, 3)
    assert resolve_resume(str(run), "", "", None).endswith("ckpt_step00000007.pt")
    assert resolve_resume("auto", str(tmp_path / "logs"), "myrun", None).endswith("00000007.pt")
    assert resolve_resume("auto", str(tmp_path / "logs"), "other", None) is None
    with pytest.raises(UsageError, match="no checkpoint"):
        resolve_resume(str(tmp_path), "", "", None)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(UsageError, match=r"bad\.pt"):
        load_checkpoint(str(bad))


def test_grad_sync_timer_union_of_intervals():
    t = GradSyncTimer(None, 2, cuda=False)
    t._spans = [(0.000, 0.010), (0.005, 0.020), (0.030, 0.035), (0.040, None)]
    assert t.collect() == pytest.approx(25.0)  # [0,20] + [30,35]; unfinished ignored
    assert t.collect() == 0.0


def test_metrics():
    x = torch.rand(2, 3, 3, 32, 32)
    assert torch.all(psnr(x, x) > 100)
    noisy = (x + 0.1).clamp(0, 1)
    mse = ((noisy - x) ** 2).flatten(-3).mean(-1)
    assert torch.allclose(psnr(noisy, x), 10 * torch.log10(1 / mse), atol=1e-4)
    assert torch.allclose(ssim(x, x), torch.ones(2, 3))
    assert torch.all(ssim(x + 0.2 * torch.randn_like(x), x) < 0.9)


def test_losses(tmp_path):
    a, b = torch.zeros(4), torch.full((4,), 3.0)
    assert charbonnier(a, b, eps=0.0).item() == pytest.approx(3.0)
    assert charbonnier(a, a, eps=1e-3).item() == pytest.approx(1e-3)
    with pytest.raises(UsageError, match="WEIGHTS"):
        PerceptualLoss()  # never random weights by accident
    # a torchvision-format state dict is read from a local file
    ref = VGGFeatures("vgg16", "relu2_2")
    sd = {f"features.{k}": v.clone() + 1 for k, v in ref.features.state_dict().items()}
    path = tmp_path / "vgg.pth"
    torch.save(sd, path)
    loss = PerceptualLoss("vgg16", "relu2_2", str(path))
    assert torch.equal(loss.vgg.features[0].weight, sd["features.0.weight"])
    assert all(not p.requires_grad for p in loss.parameters())
    x = torch.rand(1, 2, 3, 16, 16, requires_grad=True)
    loss(x, torch.rand(1, 2, 3, 16, 16)).backward()
    assert x.grad is not None
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(UsageError, match="shape"):
        PerceptualLoss("vgg16", "relu2_2", str(path))
    cfg = from_raw({"LOSS": {"VGG_PERCEPTUAL": {"WEIGHT": 0.1, "ALLOW_RANDOM_WEIGHTS": True}}})
    with pytest.warns(UserWarning, match="RANDOM"):
        assert build_perceptual(cfg.LOSS.VGG_PERCEPTUAL) is not None


def test_progress_line_tty_and_lines():
    s = io.StringIO()
    p = Progress(total=100, interval=5, stream=s, tty=True)
    for i in range(1, 4):
        p.update(i, 2, 0.5, 1e-4)
    text = s.getvalue()
    assert "\n" not in text and text.count("\r") == 3
    assert "step   3/100" in text and "loss 0.5000" in text and "ETA" in text
    p.clear()
    assert s.getvalue().endswith("\r\x1b[K")
    s2 = io.StringIO()
    p2 = Progress(total=10, interval=5, stream=s2, tty=False)
    for i in range(1, 11):
        p2.update(i, 1, 0.1, 1e-3)
    assert s2.getvalue().count("\n") == 2  # steps 5 and 10
    assert "\r" not in s2.getvalue()


def test_gpu_trainer_check_dry_run(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_trainer_check as g
    finally:
        sys.path.pop(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert g.main([str(tmp_path), "--dry-run", "--steps", "2", "--warmup", "1"]) == 0
    finally:
        torch.set_num_threads(n)
    import json

    rep = json.loads((tmp_path / "gpu_trainer_check.json").read_text())
    assert [r["config"] for r in rep["results"]] == ["baseline", "fast"]
    for r in rep["results"]:
        assert r["status"] == "ok" and r["steps_measured"] == 1
        assert r["step_ms_median"] > 0 and r["samples_per_s"] > 0
        assert r["optimizer_state_bytes"] > 0
        assert math.isclose(sum(r["shares"].values()), 1.0, abs_tol=0.2)
    base, fast = rep["results"]
    assert base["optimizer"] == fast["optimizer"] == "adamw"
    assert not base["checkpoint_align"] and fast["checkpoint_align"] and not fast["checkpointing"]
    md = (tmp_path / "gpu_trainer_check.md").read_text()
    assert "| baseline |" in md and "predicted" in md
    assert "| fast | 1 | adamw | off |" in md and "| – | – | – |" in md  # no user prediction


def test_stale_checkpoint_temp_files_are_removed_at_the_next_save(tmp_path):
    import subprocess

    d = tmp_path / "ck"
    d.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is gone: its save was killed half-way
    (d / f".ckpt_step00000050.pt.tmp{dead.pid}").write_bytes(b"half")
    (d / f".ckpt_step00000040.pt.tmp{os.getpid()}").write_bytes(b"ours, earlier")
    live = d / f".ckpt_step00000060.pt.tmp{os.getppid()}"  # a live process saving right now
    live.write_bytes(b"in progress")
    old_live = d / f".ckpt_step00000010.pt.tmp{os.getppid()}"
    old_live.write_bytes(b"abandoned long ago")
    os.utime(old_live, (1.0, 1.0))
    (d / "notes.tmp123").write_bytes(b"not ours")
    save_checkpoint(str(d), 60, {"model": {}, "step": 60}, keep_last=2)
    assert sorted(os.listdir(d)) == sorted(["ckpt_step00000060.pt", live.name, "notes.tmp123"])


def test_a_batch_larger_than_the_clips_names_batch_size():
    from stagewatch.errors import ConfigError
    from trainer.train_setup import plan_steps

    cfg = from_raw({"TRAIN": {"BATCH_SIZE": 100000}}, "c.yaml")
    with pytest.raises(ConfigError) as ei:
        plan_steps(cfg, 0, 64)
    msg = str(ei.value)
    assert msg.startswith(
        "c.yaml: TRAIN.BATCH_SIZE: 100000 is more than the 64 training clip(s)"
    ), msg
    cfg = from_raw({"TRAIN": {"BATCH_SIZE": 2, "GRADIENT_ACCUMULATION_STEPS": 8}}, "c.yaml")
    with pytest.raises(UsageError, match="GRADIENT_ACCUMULATION_STEPS"):
        plan_steps(cfg, 4, 8)


def test_throughput_says_per_rank_or_global():
    from stagewatch.timing.console import samples_rate_label

    assert samples_rate_label(12.5) == "12.50 samples/s"
    assert samples_rate_label(12.5, 4) == "50.00 samples/s global (12.50/rank × 4)"
    s = io.StringIO()
    p = Progress(total=10, interval=1, stream=s, tty=False, world_size=2)
    p.update(1, 3, 0.5, 1e-4)
    p.update(2, 3, 0.5, 1e-4)
    assert "samples/s global (" in s.getvalue() and "/rank × 2)" in s.getvalue()


def test_adamw8bit_falls_back_to_adamw_with_one_warning_and_diagnostics(monkeypatch):
    """A bitsandbytes that cannot run: one RuntimeWarning carrying bnb's own output."""
    import bitsandbytes as bnb

    class Broken:
        def __init__(self, *a, **k):
            print("CUDA SETUP: libbitsandbytes_cuda130.so not found")
            raise RuntimeError("no kernel image")

    monkeypatch.setattr(bnb.optim, "AdamW8bit", Broken)
    m = nn.Linear(256, 256)
    cfg = from_raw({"TRAIN": {"OPTIM": {"TYPE": "adamw8bit", "LR": 0.01}}}).TRAIN
    with pytest.warns(RuntimeWarning) as rec:
        opt = build_optimizer(m, cfg)
    assert len(rec) == 1
    text = str(rec[0].message)
    assert "no kernel image" in text and "libbitsandbytes_cuda130.so not found" in text
    assert "Falling back to torch AdamW" in text
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["lr"] == 0.01


def test_import_bnb_failure_keeps_its_diagnostics(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "bitsandbytes":
            print("bnb: could not find the CUDA library")
            raise OSError("libcudart.so.13: cannot open shared object file")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError) as e:
        import_bnb()
    assert "could not find the CUDA library" in str(e.value) and "libcudart" in str(e.value)


def test_tf32_key_sets_the_cuda_backends_only_on_cuda(monkeypatch):
    from trainer.train_setup import apply_tf32

    assert TrainConfig().TF32 is True
    assert from_raw({"TRAIN": {"TF32": False}}).TRAIN.TF32 is False
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    apply_tf32(True, torch.device("cpu"))  # CPU: nothing changes
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    apply_tf32(True, torch.device("cuda"))  # flags only: no CUDA needed to set them
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    apply_tf32(False, torch.device("cuda"))
    assert not torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


def test_progress_eta_of_a_time_limited_run_is_its_time_left(monkeypatch):
    # TRAIN.MAX_MINUTES (the demo's 3 minutes): the run ends then, not after its 3000 steps
    import trainer.progress as prog

    now = [1000.0]
    monkeypatch.setattr(prog.time, "perf_counter", lambda: now[0])
    p = Progress(total=3000, interval=1, stream=io.StringIO(), tty=False, max_minutes=3.0)
    for i in range(1, 11):
        now[0] += 1.0  # 1 s a step: 2990 s by the steps, 170 s by the clock
        p.update(i, 1, 0.1, 1e-3)
    assert "ETA 02:50" in p.line(10, 0.1, 1e-3)
    q = Progress(total=3000, interval=1, stream=io.StringIO(), tty=False)
    q._times.append((now[0] + 10.0, 10, 10))
    assert "ETA 49:50" in q.line(10, 0.1, 1e-3)
