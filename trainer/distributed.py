"""Process groups under ``torchrun`` and gradient-communication timing.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them the trainer runs
as a single process. NCCL is used on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from stagewatch.ddp import CommWatch


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        from stagewatch.errors import ConfigError

        raise ConfigError("TRAIN.DEVICE", "cuda requested but no CUDA device is available")
    if use_cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if use_cuda else {}
        dist.init_process_group(backend=backend, **kwargs)
    return DistInfo(rank, world, local, device)


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on any rank (keeps ranks in step)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class GradSyncTimer(CommWatch):
    """Times ``backward`` and DDP's gradient allreduce without counting their overlap twice
    (the library's :class:`stagewatch.ddp.CommWatch` in its split form):

    * ``backward``: from the call until the *last* bucket's gradients are ready (the end of
      gradient computation; communication overlapped with it is hidden inside);
    * ``allreduce``: from there until ``backward()`` returns, i.e. the communication still
      exposed after compute finished.

    The total time buckets spent in communication (union of their intervals, overlapped or
    not) is kept as :attr:`comm_ms` for the step's scalars. Without DDP, or on a
    ``no_sync`` micro-step, the whole call is ``backward``.
    """

    def __init__(self, log: Any, world_size: int, cuda: bool) -> None:
        super().__init__(log, world_size, cuda, split=True)
