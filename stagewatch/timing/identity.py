"""Who a rank is: its rank and world size, the run id all ranks share, its run_start record."""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from stagewatch import records as R
from stagewatch.records import make_run_id
from stagewatch.timing import clean
from stagewatch.timing.jsonl import warn

RUN_ID_ENV = "STAGEWATCH_RUN_ID"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _initialized_dist() -> object | None:
    """``torch.distributed`` if it is already imported and initialised (never imports it)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return None
    try:
        if dist.is_available() and dist.is_initialized():  # type: ignore[attr-defined]
            return dist
    except Exception:
        return None
    return None


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values, else torch.distributed (if initialised), else ``RANK``/``WORLD_SIZE``."""
    if rank is not None and world_size is not None:
        return rank, world_size
    dist = _initialized_dist()
    if dist is not None:
        try:
            r, w = dist.get_rank(), dist.get_world_size()  # type: ignore[attr-defined]
        except Exception:
            r, w = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    else:
        r, w = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    return (r if rank is None else rank), (w if world_size is None else world_size)


def safe_run_id(run_id: str) -> str:
    """A run id usable as one folder name (no separators, no ``..``)."""
    s = _UNSAFE.sub("_", run_id).strip("._") or "run"
    return s[:120]


def resolve_run_id(run_id: str | None, run_name: str, world_size: int) -> str:
    """The run id all ranks share.

    Order: ``run_id`` given; else env ``STAGEWATCH_RUN_ID``; else, when torch.distributed
    is initialised, rank 0's new id broadcast to every rank (a collective: every rank must
    create its logger at the same point); else a new id (with a warning when several ranks
    exist but cannot agree, since each would then start its own folder).
    """
    if run_id:
        return safe_run_id(run_id)
    env = os.environ.get(RUN_ID_ENV)
    if env:
        return safe_run_id(env)
    rid = make_run_id(run_name)
    if world_size > 1:
        dist = _initialized_dist()
        if dist is not None:
            try:
                box = [rid]
                dist.broadcast_object_list(box, src=0)  # type: ignore[attr-defined]
                return safe_run_id(str(box[0]))
            except Exception as e:
                warn(f"could not share the run id between ranks ({e}); each rank uses its own")
        else:
            warn(
                f"{world_size} ranks but torch.distributed is not initialised and "
                f"{RUN_ID_ENV} is not set: ranks will write separate run folders. Create the "
                "logger after init_process_group, or set the variable for all ranks"
            )
    return rid


def run_start(
    run_id: str,
    rank: int,
    world_size: int,
    device: str,
    *,
    config: Mapping[str, Any] | None,
    total_steps: int | None,
    samples_per_step: int | None,
    start_step: int,
    gpu: tuple[str | None, int | None] | None = None,
    clock_ms: tuple[float, float] | None = None,
) -> R.RunStart:
    """The ``run_start`` record of this process (``gpu``: its name and memory, when known);
    user values are cleaned to the record limits first."""
    gpu_name, memory_total = gpu or (None, None)
    torch_mod = sys.modules.get("torch")  # reported only if the program imported it
    torch_version = getattr(torch_mod, "__version__", None) if torch_mod else None
    return R.RunStart(
        run_id=run_id,
        rank=rank,
        world_size=world_size,
        time=time.time(),
        host=socket.gethostname(),
        pid=os.getpid(),
        device=device,
        gpu_name=gpu_name,
        torch_version=str(torch_version) if torch_version else None,
        config=clean.config(config),
        total_steps=total_steps,
        samples_per_step=samples_per_step,
        device_memory_total=memory_total,
        start_step=start_step,
        clock_offset_ms=clock_ms[0] if clock_ms else msgspec.UNSET,
        clock_error_ms=clock_ms[1] if clock_ms else msgspec.UNSET,
    )
