"""Checkpoints: atomic writes (temp file + rename), keep-last-N, exact resume state.

A checkpoint holds the model (unwrapped), optimizer, scheduler, step, data position, the
RNG states of every rank, the run id and the configuration. Files are
``<dir>/ckpt_step<NNNNNNNN>.pt``; the newest is the one with the highest step.
"""

from __future__ import annotations

import glob
import os
import random
import re
import time
from typing import Any

import numpy as np
import torch

from stagewatch.errors import UsageError

CKPT_RE = re.compile(r"^ckpt_step(\d+)\.pt$")
TMP_RE = re.compile(r"^\.ckpt_step(\d+)\.pt\.tmp(\d+)$")  # a save in progress, or left by a kill
STALE_TMP_S = 3600.0  # a temp file of a live process untouched this long is abandoned too


def checkpoint_name(step: int) -> str:
    return f"ckpt_step{step:08d}.pt"


def list_checkpoints(folder: str) -> list[tuple[int, str]]:
    """``(step, path)`` of the checkpoints in ``folder``, oldest first."""
    if not os.path.isdir(folder):
        return []
    out = []
    for name in os.listdir(folder):
        m = CKPT_RE.match(name)
        if m:
            out.append((int(m.group(1)), os.path.join(folder, name)))
    return sorted(out)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process (or unknowable): assume alive
    return True


def remove_stale_temps(folder: str, step: int) -> list[str]:
    """Delete half-written ``.ckpt_step*.pt.tmp<pid>`` files: those of a process that is gone
    (killed mid-save), of this process (its saves run one at a time), or of an earlier
    step untouched for an hour. Returns the paths removed."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    me, now = os.getpid(), time.time()
    for name in names:
        m = TMP_RE.match(name)
        if not m:
            continue
        path = os.path.join(folder, name)
        tmp_step, pid = int(m.group(1)), int(m.group(2))
        try:
            old = tmp_step <= step and now - os.path.getmtime(path) > STALE_TMP_S
            if pid == me or not _pid_alive(pid) or old:
                os.remove(path)
                removed.append(path)
        except OSError:
            continue
    return removed


def save_checkpoint(folder: str, step: int, state: dict[str, Any], keep_last: int) -> str:
    """Write ``state`` atomically as the checkpoint of ``step``; keep the newest ``keep_last``.

    Half-written temp files left by earlier saves (a kill mid-save) are removed first."""
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(folder, step)
    path = os.path.join(folder, checkpoint_name(step))
    tmp = os.path.join(folder, f".{checkpoint_name(step)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:  # make the rename durable too
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    for _, old in list_checkpoints(folder)[:-keep_last]:
        try:
            os.remove(old)
        except OSError:
            pass
    return path


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (on the CPU)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # corrupt or foreign file
        raise UsageError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise UsageError(f"{path}: not a stagewatch checkpoint")
    return state


def resolve_resume(
    spec: str | None, log_dir: str, run_name: str, ckpt_dir: str | None
) -> str | None:
    """Which checkpoint to resume from.

    ``spec`` is a checkpoint file, a folder of checkpoints, a run folder (its
    ``checkpoints/``), or ``auto``: the newest checkpoint of the newest run named
    ``run_name`` under ``log_dir`` (or of ``ckpt_dir`` when configured); None if there is none.
    """
    if not spec:
        return None
    if spec == "auto":
        if ckpt_dir:
            found = list_checkpoints(ckpt_dir)
            return found[-1][1] if found else None
        runs = sorted(glob.glob(os.path.join(glob.escape(log_dir), f"*-{glob.escape(run_name)}-*")))
        for run in reversed(runs):
            found = list_checkpoints(os.path.join(run, "checkpoints"))
            if found:
                return found[-1][1]
        return None
    if os.path.isfile(spec):
        return spec
    for folder in (spec, os.path.join(spec, "checkpoints")):
        found = list_checkpoints(folder)
        if found:
            return found[-1][1]
    raise UsageError(f"{spec}: no checkpoint found (TRAIN.RESUME)")


def rng_state() -> dict[str, Any]:
    """RNG states of this process (python, numpy, torch CPU and CUDA)."""
    st: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
