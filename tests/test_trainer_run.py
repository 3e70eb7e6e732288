"""End-to-end training runs in-process: records, checkpoints, resume, failure."""

from __future__ import annotations

import os

import pytest
from _trainer_helpers import MICRO, TINY, records

from trainer import train_step as step_mod
from trainer.checkpoint import list_checkpoints
from trainer.config import load_config
from trainer.train import train

STEP_REGIONS = {"data", "h2d", "forward", "loss", "loss/charbonnier", "backward", "optimizer"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rank0(run_dir: str) -> list[dict]:
    return records(os.path.join(run_dir, "rank0.jsonl"))


def test_run_records_checkpoint_and_resume(tmp_path):
    logs = str(tmp_path / "logs")
    cfg = load_config(TINY, [*MICRO, "TRAIN.MAX_STEPS=3", "TRAIN.EPOCHS=1"])
    r1 = train(cfg, log_dir=logs)
    assert r1.status == "completed" and r1.steps == 3
    recs = _rank0(r1.run_dir)
    assert recs[0]["kind"] == "run_start" and recs[0]["start_step"] == 0
    assert recs[0]["config"]["TRAIN"]["MAX_STEPS"] == 3  # the YAML after overrides
    steps = [r for r in recs if r["kind"] == "step"]
    assert [s["step"] for s in steps] == [1, 2, 3]
    for s in steps:
        assert set(s["regions"]) >= STEP_REGIONS, s["regions"].keys()
        assert any(k.startswith("forward/vrt/stage") for k in s["regions"])
        assert any(k.startswith("backward/vrt/") for k in s["regions"])
        assert s["scalars"]["loss"] > 0 and s["scalars"]["lr"] > 0
        assert s["memory"]["rss"] > 0
        top = sum(v[0] for k, v in s["regions"].items() if "/" not in k)
        assert top <= s["wall_ms"] * 1.001  # regions nest, never double counted
    assert "validation" in steps[-1]["regions"] and "checkpoint" in steps[-1]["regions"]
    ev = [r for r in recs if r["kind"] == "eval"]
    assert len(ev) == 1 and ev[0]["step"] == 3
    assert {"psnr", "ssim", "psnr_blurry", "ssim_blurry"} <= set(ev[0]["metrics"])
    assert recs[-1] == {**recs[-1], "kind": "run_end", "status": "completed", "steps": 3}
    assert os.path.isfile(os.path.join(r1.run_dir, "config.yaml"))
    ckpts = list_checkpoints(os.path.join(r1.run_dir, "checkpoints"))
    assert [s for s, _ in ckpts] == [3]

    # resume from the run folder for 2 more steps: same run id, same file, steps 4 and 5
    cfg2 = load_config(
        TINY, [*MICRO, "TRAIN.MAX_STEPS=5", "TRAIN.EPOCHS=5", "TRAIN.CHECKPOINT.KEEP_LAST=1"]
    )
    r2 = train(cfg2, log_dir=logs, resume=r1.run_dir)
    assert r2.run_id == r1.run_id and r2.steps == 5
    recs = _rank0(r1.run_dir)
    starts = [r for r in recs if r["kind"] == "run_start"]
    assert [s["start_step"] for s in starts] == [0, 3]
    nums = [r["step"] for r in recs if r["kind"] == "step"]
    assert nums == [1, 2, 3, 4, 5]  # continued, never repeated
    assert recs[-1]["kind"] == "run_end" and recs[-1]["steps"] == 5
    assert [s for s, _ in list_checkpoints(os.path.join(r1.run_dir, "checkpoints"))] == [5]
    # resuming with nothing left to do is a clear error
    with pytest.raises(Exception, match="nothing to resume"):
        train(cfg2, log_dir=logs, resume=r1.run_dir)


def test_resume_restores_exact_state(tmp_path):
    """Two steps + resume for two more = four steps straight (model, optimizer, data, RNG)."""
    logs = str(tmp_path / "logs")
    over = [*MICRO, "TRAIN.EPOCHS=3", "TRAIN.VAL.MAX_CLIPS=1", "DATA.SYNTHETIC.TRAIN_CLIPS=3"]
    straight = train(load_config(TINY, [*over, "TRAIN.MAX_STEPS=4"]), log_dir=logs)
    first = train(load_config(TINY, [*over, "TRAIN.MAX_STEPS=2"]), log_dir=logs)
    # same plan (total steps) as the straight run, so the schedule matches too
    second = train(
        load_config(TINY, [*over, "TRAIN.MAX_STEPS=4"]), log_dir=logs, resume=first.checkpoint
    )
    assert first.losses == pytest.approx(straight.losses[:2], rel=1e-5)
    assert second.losses == pytest.approx(straight.losses[2:], rel=1e-4)


def test_failed_run_ends_with_error_record(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = step_mod.compute_loss

    def boom(ctx, out, sharp):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("synthetic failure in the loss")
        return real(ctx, out, sharp)

    monkeypatch.setattr(step_mod, "compute_loss", boom)
    cfg = load_config(TINY, [*MICRO, "TRAIN.MAX_STEPS=4"])
    with pytest.raises(RuntimeError, match="synthetic failure"):
        train(cfg, log_dir=str(tmp_path))
    (run,) = os.listdir(tmp_path)
    recs = _rank0(tmp_path / run)
    end = recs[-1]
    assert end["kind"] == "run_end" and end["status"] == "failed"
    assert end["error"] == {"type": "RuntimeError", "message": "synthetic failure in the loss"}
    assert end["steps"] == 1


def test_gradient_accumulation_and_8bit_adamw(tmp_path):
    cfg = load_config(
        TINY,
        [
            *MICRO,
            "TRAIN.MAX_STEPS=2",
            "TRAIN.GRADIENT_ACCUMULATION_STEPS=2",
            "TRAIN.OPTIM.TYPE=adamw8bit",
            "TRAIN.FREEZE_FLOW_STEPS=1",
        ],
    )
    r = train(cfg, log_dir=str(tmp_path))
    steps = [x for x in _rank0(r.run_dir) if x["kind"] == "step"]
    assert [s["regions"]["forward"][1] for s in steps] == [2, 2]  # two micro-batches each
    assert [s["samples"] for s in steps] == [2, 2]
    # frozen flow in step 1: no backward region for it; trained in step 2
    assert "backward/vrt/flow" not in steps[0]["regions"]
    assert "backward/vrt/flow" in steps[1]["regions"]


def test_training_on_a_gopro_spike_folder(tmp_path):
    """``trainer synth`` output trains through the real folder loader."""
    from trainer.commands.synth import write_dataset
    from trainer.data import synth_params

    base = load_config(TINY, MICRO)
    root = tmp_path / "ds"
    write_dataset(str(root), synth_params(base.DATA), sequences=2, val_sequences=1, frames=4)
    cfg = load_config(
        TINY, [*MICRO, "DATA.TYPE=gopro_spike", f"DATA.ROOT={root}", "TRAIN.MAX_STEPS=2"]
    )
    r = train(cfg, log_dir=str(tmp_path / "logs"))
    assert r.status == "completed" and r.steps == 2
    assert r.evals and r.evals[-1]["psnr_blurry"] > 0


def test_profile_prints_debug_pass_and_step_breakdown(tmp_path, capsys):
    from trainer.cli import main

    sets = [a for s in MICRO for a in ("--set", s)]
    assert main(["profile", "--cfg", TINY, "--steps", "2", "--log-dir", str(tmp_path), *sets]) == 0
    out = capsys.readouterr().out
    assert "Model debug forward" in out and "spike_tsa" in out and "stage8" in out
    assert "Training step breakdown over 2 step(s)" in out
    for region in ("forward", "backward", "optimizer", "data", "Unaccounted"):
        assert region in out
    (run,) = os.listdir(tmp_path)
    recs = _rank0(tmp_path / run)
    assert [r["step"] for r in recs if r["kind"] == "step"] == [1, 2]
    assert not os.path.exists(tmp_path / run / "checkpoints")  # profiling writes none


def test_a_time_limited_run_ends_completed_with_validation_and_checkpoint(tmp_path):
    # TRAIN.MAX_MINUTES (the demo's ~3 minutes): the step in progress finishes, then the end's
    # validation and checkpoint; the run is complete, and promises no step count it won't reach
    cfg = load_config(TINY, [*MICRO, "TRAIN.MAX_STEPS=50", "TRAIN.MAX_MINUTES=0"])
    r = train(cfg, log_dir=str(tmp_path / "logs"))
    assert r.status == "completed" and r.steps == 1
    recs = _rank0(r.run_dir)
    assert recs[0]["total_steps"] is None
    steps = [x for x in recs if x["kind"] == "step"]
    assert [s["step"] for s in steps] == [1]
    assert "validation" in steps[0]["regions"] and "checkpoint" in steps[0]["regions"]
    assert [e["step"] for e in recs if e["kind"] == "eval"] == [1]
    assert recs[-1]["kind"] == "run_end" and recs[-1]["status"] == "completed"
