"""Process groups under ``torchrun`` and gradient-communication timing.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them the trainer runs
as a single process. NCCL is used on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


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


class GradSyncTimer:
    """Times ``backward`` and DDP's gradient allreduce without counting their overlap twice.

    DDP launches each gradient bucket's allreduce from a communication hook while backward
    is still computing earlier layers, then waits for all of them before ``backward()``
    returns. This hook splits that call in two regions:

    * ``backward``: from the call until the *last* bucket's gradients are ready (the end of
      gradient computation; communication overlapped with it is hidden inside);
    * ``allreduce``: from there until ``backward()`` returns, i.e. the communication still
      exposed after compute finished.

    The total time buckets spent in communication (union of their intervals, overlapped or
    not) is kept as :attr:`comm_ms` for the step's scalars. Without DDP, or on a
    ``no_sync`` micro-step, the whole call is ``backward``.
    """

    def __init__(self, log: Any, world_size: int, cuda: bool) -> None:
        self.log = log if log is not None and getattr(log, "enabled", False) else None
        self.world_size, self.cuda = world_size, cuda
        self._bwd: Any = None
        self._ar: Any = None
        self._spans: list[tuple[Any, Any]] = []
        self.comm_ms = 0.0

    def attach(self, ddp_model: torch.nn.parallel.DistributedDataParallel) -> None:
        ddp_model.register_comm_hook(None, self._hook)

    def _now(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    # no annotations: DDP compares them with the real classes, and this module's are strings
    def _hook(self, _state, bucket):  # type: ignore[no-untyped-def]
        if bucket.is_last() and self.log is not None and self._bwd is not None:
            self.log.end(self._bwd)  # gradient computation is over: the rest is exposed comm
            self._bwd = None
            self._ar = self.log.begin("allreduce")
        span = [self._now(), None]
        self._spans.append(span)  # type: ignore[arg-type]
        buf = bucket.buffer().div_(self.world_size)
        fut = dist.all_reduce(buf, async_op=True).get_future()

        def done(f: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
            span[1] = self._now()
            return f.value()[0]

        return fut.then(done)

    def begin(self) -> None:
        """Call right before ``loss.backward()``."""
        if self.log is not None:
            self._bwd = self.log.begin("backward")

    def end(self) -> None:
        """Call right after ``loss.backward()`` returns."""
        if self.log is not None:
            if self._bwd is not None:
                self.log.end(self._bwd)
            if self._ar is not None:
                self.log.end(self._ar)
        self._bwd = self._ar = None

    def collect(self) -> float:
        """Total communication milliseconds since the last call (CUDA: call after a sync)."""
        spans = [(a, b) for a, b in self._spans if b is not None]
        self._spans = []
        if not spans:
            self.comm_ms = 0.0
            return 0.0
        if self.cuda:
            ref = spans[0][0]
            iv = sorted((ref.elapsed_time(a), ref.elapsed_time(b)) for a, b in spans)
        else:
            iv = sorted((a * 1e3, b * 1e3) for a, b in spans)
        total, cur_s, cur_e = 0.0, iv[0][0], iv[0][1]
        for s, e in iv[1:]:
            if s > cur_e:
                total += cur_e - cur_s
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        self.comm_ms = total + (cur_e - cur_s)
        return self.comm_ms
