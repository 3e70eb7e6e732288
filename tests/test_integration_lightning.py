"""StagewatchCallback on the real Lightning: phases, steps, module regions, DDP, failures."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import pytest
from _integration_helpers import run_end, run_records, steps
from _lightning_job import BATCH, LR, fit
from _trainer_helpers import ROOT, env_for_subprocess

from stagewatch import TimingWarning
from stagewatch.integrations.lightning import StagewatchCallback

PHASES = ("data/wait", "data/h2d", "forward", "backward", "optimizer")


def test_phases_and_one_record_per_optimizer_step(tmp_path, one_torch_thread):
    # accumulation: 2 batches per optimizer step; validation between steps is in no phase
    trainer = fit(str(tmp_path), max_steps=3, accumulate=2, val_every=4)
    recs = run_records(tmp_path)
    assert list(recs) == [0]
    got = steps(recs[0])
    assert [s.step for s in got] == [1, 2, 3] == list(range(1, trainer.global_step + 1))
    for s in got:
        assert s.samples == 2 * BATCH
        counts = {name: s.regions[name][1] for name in PHASES}
        assert counts == {
            "data/wait": 2,
            "data/h2d": 2,
            "forward": 2,  # two training_steps; the validation's forwards are not here
            "backward": 2,
            "optimizer": 1,
        }
        top = sum(ms for name, (ms, _) in s.regions.items() if "/" not in name)
        top += s.regions["data/wait"][0] + s.regions["data/h2d"][0]
        assert top <= s.wall_ms * 1.001
        # block runs twice per training_step: 4 calls; the validation's calls are not here
        assert s.regions["forward/block"][1] == 4
        assert s.scalars is not None and s.scalars["lr"] == LR
        assert math.isfinite(s.scalars["loss"]) and s.scalars["loss"] > 0
    # the evaluation after step 2 is the region "eval" of the step it ran in
    assert [("eval" in s.regions) for s in got] == [False, False, True]
    assert got[2].regions["eval/block"][1] == 2 * 2  # 2 val batches, block twice in each
    assert run_end(recs[0]).status == "completed" and run_end(recs[0]).steps == 3


def test_loss_is_the_step_mean_of_the_training_steps(tmp_path, one_torch_thread):
    seen: list[float] = []

    class Spy(StagewatchCallback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(float(outputs["loss"]) * 2)  # Lightning divides by the accumulation
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    cb = Spy(str(tmp_path), enable_console=False)
    fit(str(tmp_path), max_steps=2, accumulate=2, callback=cb)
    got = [s.scalars["loss"] for s in steps(run_records(tmp_path)[0])]
    want = [(seen[0] + seen[1]) / 2, (seen[2] + seen[3]) / 2]
    assert got == pytest.approx(want, rel=1e-5)


def test_module_regions_count_a_module_called_twice(tmp_path, one_torch_thread):
    fit(str(tmp_path), max_steps=2)
    for s in steps(run_records(tmp_path)[0]):
        assert s.regions["forward/block"][1] == 2  # block runs twice per training_step
        assert s.regions["forward/inp"][1] == 1
        assert s.regions["backward/block"][1] == 2
        assert s.regions["forward/block"][0] <= s.regions["forward"][0]


def test_no_module_regions_at_depth_0(tmp_path, one_torch_thread):
    cb = StagewatchCallback(str(tmp_path), depth=0, enable_console=False)
    fit(str(tmp_path), max_steps=2, callback=cb)
    for s in steps(run_records(tmp_path)[0]):
        assert set(s.regions) == set(PHASES)


def test_a_failing_hook_warns_once_and_training_goes_on(tmp_path, one_torch_thread, monkeypatch):
    from stagewatch.timing.logger import TimingLogger

    def broken(self, *a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(TimingLogger, "step", broken)
    cb = StagewatchCallback(str(tmp_path), enable_console=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(str(tmp_path), max_steps=3, callback=cb)
    assert trainer.global_step == 3
    ours = [w for w in caught if issubclass(w.category, TimingWarning) and "disk" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "on_train_batch_end" in str(ours[0].message)


@pytest.mark.slow
def test_two_process_ddp_on_gloo(tmp_path):
    # Lightning's own strategy="ddp", which runs the script again for the second rank
    r = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_lightning_job.py"), str(tmp_path / "logs")],
        cwd=tmp_path,
        env=env_for_subprocess(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    recs = run_records(tmp_path / "logs")  # both ranks in one run folder
    assert sorted(recs) == [0, 1]
    for rank, rank_recs in recs.items():
        start = rank_recs[0]
        assert start.rank == rank and start.world_size == 2
        got = steps(rank_recs)
        assert [s.step for s in got] == [1, 2, 3]
        for s in got:
            assert s.samples == BATCH  # each rank's own share of the batch
            assert {n: c for n, (_, c) in s.regions.items() if n in PHASES} == dict.fromkeys(
                PHASES, 1
            )
            assert s.regions["forward/block"][1] == 2 and s.regions["backward/block"][1] == 2
            # the strategy's DDP all-reduce, watched by the callback (issue 22)
            exposed, calls = s.regions["comm/exposed"]
            assert calls == 1 and 0.0 <= exposed <= s.regions["backward"][0]
        assert run_end(rank_recs).status == "completed"


_BLOCKED = "import sys; sys.modules['{0}'] = None; sys.modules['pytorch_lightning'] = None\n"


def test_import_without_lightning_names_the_extra():
    code = _BLOCKED.format("lightning") + (
        "try:\n"
        "    import stagewatch.integrations.lightning\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    msg = out.stdout.strip()
    assert "\n" not in msg and "pip install 'stagewatch[lightning]'" in msg, out


def test_importing_stagewatch_imports_no_framework():
    code = (
        "import sys, stagewatch, stagewatch.integrations\n"
        "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers', 'torch')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out


def test_timed_regions_in_user_code_land_in_the_callbacks_logger(tmp_path, one_torch_thread):
    import torch
    from _lightning_job import TinyModule, loader

    from stagewatch import get_global_timing_logger, timed

    class Timed(TinyModule):
        def training_step(self, batch, batch_idx):
            x, y = batch
            out = self(x)
            with timed("/forward/loss"):
                return torch.nn.functional.mse_loss(out, y)

    cb = StagewatchCallback(str(tmp_path), depth=0, enable_console=False)
    import lightning as L

    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
    )  # fmt: skip
    trainer.fit(Timed(), loader())
    for s in steps(run_records(tmp_path)[0]):
        assert s.regions["forward/loss"][1] == 1
        assert s.regions["forward/loss"][0] <= s.regions["forward"][0]
    assert get_global_timing_logger() is None  # given back at the end of the fit


def test_a_bad_instrument_argument_warns_and_the_phases_remain(tmp_path, one_torch_thread):
    cb = StagewatchCallback(str(tmp_path), depth=1.5, enable_console=False)
    with pytest.warns(TimingWarning, match=r"instrument failed .*depth"):
        fit(str(tmp_path), max_steps=2, callback=cb)
    for s in steps(run_records(tmp_path)[0]):
        assert set(s.regions) == set(PHASES)
