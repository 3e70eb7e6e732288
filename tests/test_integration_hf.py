"""StagewatchCallback on the real Hugging Face Trainer with a tiny random GPT-2: phases,
steps, loss and lr as the Trainer logs them, checkpointing, module regions, DDP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from _hf_job import BATCH, train
from _integration_helpers import run_end, run_records, steps
from _trainer_helpers import ROOT, env_for_subprocess

from stagewatch.integrations.hf import StagewatchCallback

PHASES = ("data/wait", "data/h2d", "forward", "backward", "optimizer")


def _losses_logged(history: list[dict]) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in history if "loss" in h and "train_loss" not in h}


def test_phases_loss_and_lr_as_the_trainer_logs_them(tmp_path, one_torch_thread):
    # 2 micro-batches per step; evaluation every 2 steps is in no phase
    trainer = train(
        str(tmp_path / "logs"), str(tmp_path / "out"), max_steps=3, accumulate=2, eval_every=2
    )
    recs = run_records(tmp_path / "logs")
    got = steps(recs[0])
    assert [s.step for s in got] == [1, 2, 3] == list(range(1, trainer.state.global_step + 1))
    logged = _losses_logged(trainer.state.log_history)
    lrs = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}
    # one wait per batch the loader fetches (accelerate's loader fetches one ahead: 3 in
    # step 1); the evaluation's loader is not timed
    assert [s.regions["data/wait"][1] for s in got] == [3, 2, 2]
    for s in got:
        assert s.samples == 2 * BATCH
        counts = {name: s.regions[name][1] for name in PHASES if name != "data/wait"}
        # forward twice (the micro-batches); the evaluation's forwards are not counted
        assert counts == {
            "data/h2d": 2,
            "forward": 2,
            "backward": 2,
            "optimizer": 1,
        }
        top = sum(ms for name, (ms, _) in s.regions.items() if "/" not in name)
        top += s.regions["data/wait"][0] + s.regions["data/h2d"][0]
        assert top <= s.wall_ms * 1.001
        assert s.scalars["loss"] == pytest.approx(logged[s.step], rel=1e-3)
        assert s.scalars["lr"] == pytest.approx(lrs[s.step], rel=1e-6)
    # the loader's own iterator is back after training
    assert "__iter__" not in vars(trainer.callback_handler.train_dataloader.base_dataloader)
    # the evaluation after step 2 is the region "eval" of the step it ran in
    assert [("eval" in s.regions) for s in got] == [False, False, True]
    end = run_end(recs[0])
    assert end.status == "completed" and end.steps == 3


def test_checkpointing_and_module_regions(tmp_path, one_torch_thread):
    # depth 3 reaches the blocks transformer/h/0 (transformer/h is a ModuleList, not timed)
    ends: list[str | None] = []

    class Spy(StagewatchCallback):
        def _backward_done(self):
            ends.append(self._sw._phases.current)  # the phase open when autograd finished
            super()._backward_done()

    cb = Spy(str(tmp_path / "logs"), depth=3, enable_console=False)
    train(str(tmp_path / "logs"), str(tmp_path / "out"), max_steps=2, accumulate=2,
          checkpointing=True, callback=cb)  # fmt: skip
    for s in steps(run_records(tmp_path / "logs")[0]):
        names = set(s.regions)
        for block in ("transformer/h/0", "transformer/h/1"):
            # each micro-batch runs every block once: two calls per step
            assert s.regions[f"forward/{block}"][1] == 2, sorted(names)
            assert s.regions[f"backward/{block}"][1] == 2, sorted(names)
            # checkpointing re-runs each block's forward in the backward (the count is of the
            # re-run calls instrument charged to the block: at least one per micro-batch)
            assert s.regions[f"backward/{block}/recompute"][1] >= 2, sorted(names)
            assert s.regions[f"backward/{block}/recompute"][0] <= s.regions[f"backward/{block}"][0]
        assert s.regions["forward/transformer"][0] <= s.regions["forward"][0]
        assert s.regions["backward/transformer"][0] <= s.regions["backward"][0] * 1.001
    # the backward ends when autograd is done with each micro-batch, not at the next event
    assert ends == ["backward"] * 4


def test_depth_0_records_only_the_phases(tmp_path, one_torch_thread):
    cb = StagewatchCallback(str(tmp_path / "logs"), depth=0, enable_console=False)
    train(str(tmp_path / "logs"), str(tmp_path / "out"), max_steps=2, callback=cb)
    for s in steps(run_records(tmp_path / "logs")[0]):
        assert set(s.regions) == set(PHASES)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_under_torchrun(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(ROOT / "tests" / "_hf_job.py"),
        str(tmp_path / "logs"),
        str(tmp_path / "out"),
    ]
    r = subprocess.run(
        cmd, cwd=tmp_path, env=env_for_subprocess(), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-4000:]
    recs = run_records(tmp_path / "logs")  # both ranks in one run folder
    assert sorted(recs) == [0, 1]
    history = json.loads((tmp_path / "out" / "log_history.json").read_text())
    logged = _losses_logged(history)
    per_rank = {rank: steps(rank_recs) for rank, rank_recs in recs.items()}
    for rank, got in per_rank.items():
        assert recs[rank][0].rank == rank and recs[rank][0].world_size == 2
        assert [s.step for s in got] == [1, 2, 3]
        for s in got:
            assert s.samples == 2 * BATCH
            assert s.regions["forward"][1] == 2 and s.regions["optimizer"][1] == 1
            # module regions and checkpoint recompute under the Trainer's DDP (depth 2)
            assert s.regions["forward/transformer"][1] == 2
            assert s.regions["backward/transformer/recompute"][1] >= 2
            # accelerate's DDP all-reduce, found at the first forward (issue 22): one per
            # optimizer step (the first micro-batch runs under no_sync). DDP waits for it in
            # an autograd callback queued after the one that ends `backward` here, so the
            # exposed part lies after that region, within the step
            exposed, calls = s.regions["comm/exposed"]
            assert calls == 1 and 0.0 <= exposed <= s.wall_ms
        assert run_end(recs[rank]).status == "completed"
    for i in range(3):  # the Trainer logs the mean of the ranks' losses
        mean = (per_rank[0][i].scalars["loss"] + per_rank[1][i].scalars["loss"]) / 2
        assert mean == pytest.approx(logged[i + 1], rel=1e-3)


def test_import_without_transformers_names_the_extra():
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "try:\n"
        "    import stagewatch.integrations.hf\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    msg = out.stdout.strip()
    assert "\n" not in msg and "pip install 'stagewatch[hf]'" in msg, out


def test_a_failing_hook_warns_once_and_training_goes_on(tmp_path, one_torch_thread, monkeypatch):
    from stagewatch import TimingWarning
    from stagewatch.timing.logger import TimingLogger

    def broken(self, *a, **k):
        raise OSError("disk on fire")

    monkeypatch.setattr(TimingLogger, "step", broken)
    with pytest.warns(TimingWarning, match=r"on_step_end failed \(OSError: disk on fire\)") as rec:
        trainer = train(str(tmp_path / "logs"), str(tmp_path / "out"), max_steps=3)
    assert trainer.state.global_step == 3
    assert sum("disk on fire" in str(w.message) for w in rec) == 1


def test_the_loss_is_found_where_the_trainer_finds_it():
    import torch
    from transformers.modeling_outputs import CausalLMOutput

    from stagewatch.integrations.hf import _output_loss

    loss, logits = torch.tensor(2.5), torch.zeros(2, 3)
    assert _output_loss(CausalLMOutput(loss=loss, logits=logits)) is loss
    assert _output_loss({"loss": loss}) is loss
    assert _output_loss((loss, logits)) is loss  # return_dict=False
    assert _output_loss((logits,)) is None  # no labels: no loss first
    assert _output_loss(CausalLMOutput(logits=logits)) is None
    assert _output_loss(logits) is None


def test_torch_compile_is_said_to_leave_no_module_regions(tmp_path):
    from types import SimpleNamespace

    from _hf_job import tiny_gpt2

    from stagewatch import TimingWarning

    args = SimpleNamespace(torch_compile=True, process_index=0, world_size=1, device="cpu")
    state = SimpleNamespace(max_steps=1)
    cb = StagewatchCallback(str(tmp_path), enable_console=False)
    with pytest.warns(TimingWarning, match=r"torch_compile=True.*module regions not"):
        cb.on_train_begin(args, state, None, model=tiny_gpt2())
    cb.on_train_end(args, state, None)
    assert cb.logger is None  # closed
