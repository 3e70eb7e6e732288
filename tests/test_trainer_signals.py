"""SIGTERM / SIGINT during ``trainer train``: finish the step, checkpoint, run_end interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from _trainer_helpers import MICRO, ROOT, TINY, env_for_subprocess, records

from trainer.checkpoint import list_checkpoints


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_finishes_step_checkpoints_and_ends_interrupted(tmp_path, sig, code):
    logs = tmp_path / "logs"
    cmd = [
        sys.executable,
        "-m",
        "trainer",
        "train",
        "--cfg",
        TINY,
        "--log-dir",
        str(logs),
        *_sets([*MICRO, "TRAIN.MAX_STEPS=10000", "TRAIN.EPOCHS=10000"]),
    ]
    p = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env_for_subprocess(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        rank0 = None
        while time.monotonic() < deadline and p.poll() is None:
            runs = list(logs.glob("*/rank0.jsonl")) if logs.exists() else []
            if runs and '"kind":"step"' in runs[0].read_text():
                rank0 = runs[0]
                break
            time.sleep(0.2)
        assert rank0 is not None, p.stderr.read() if p.poll() is not None else "no step in time"
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == code, err
    recs = records(rank0)
    end = recs[-1]
    assert end["kind"] == "run_end" and end["status"] == "interrupted", end
    last_step = [r for r in recs if r["kind"] == "step"][-1]["step"]
    assert end["steps"] == last_step >= 1
    ckpts = list_checkpoints(str(rank0.parent / "checkpoints"))
    assert ckpts and ckpts[-1][0] == last_step  # the finished step was saved
    assert "finishing this step" in err
    assert "Traceback" not in err
    assert os.path.isfile(rank0.parent / "config.yaml")


def test_system_exit_during_training_ends_the_run_interrupted(tmp_path, monkeypatch):
    # e.g. the program's own SIGTERM handler calling sys.exit(): the run did not complete
    import trainer.train as T
    from trainer.config import apply_overrides, from_raw, load_config

    base = load_config(TINY)
    cfg = from_raw(apply_overrides(base.raw, [*MICRO, "TRAIN.MAX_STEPS=50"]), TINY)
    real = T.train_step
    calls = []

    def step(ctx):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise SystemExit(0)
        return real(ctx)

    monkeypatch.setattr(T, "train_step", step)
    with pytest.raises(SystemExit):
        T.train(cfg, log_dir=str(tmp_path / "logs"), write_checkpoints=False, console=False)
    (rank0,) = (tmp_path / "logs").glob("*/rank0.jsonl")
    end = records(rank0)[-1]
    assert end["kind"] == "run_end" and end["status"] == "interrupted" and end["steps"] == 2
