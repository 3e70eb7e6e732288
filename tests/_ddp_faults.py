"""TEST-ONLY fault injection: a plain DDP loop (gloo, CPU) with one rank slowed on purpose.

Run under ``torchrun --nproc_per_node=2`` by tests/test_ddp_causes.py. Each case in the
comma-separated env var ``DDP_FAULT_CASES`` (read by this script only, never by the
library) trains a tiny model for ``DDP_FAULT_STEPS`` steps into run folder
``<DDP_FAULT_ROOT>/<case>``; rank ``DDP_FAULT_RANK`` is slowed by ``DDP_FAULT_MS`` per
step in the case's place:

* ``none``: no fault (noise only);
* ``input``: a sleep inside ``timed("data")`` (a slow input pipeline);
* ``h2d``: a sleep inside ``timed("h2d")`` (on CPU the copy is simulated: no device);
* ``compute``: a sleep inside the backward of one block, timed as ``backward/block2``;
* ``comm``: a sleep inside the rank's comm hook, before it launches the all-reduce;
* ``*-plain`` (``input-plain``, ``compute-plain``): no ``stagewatch.watch_ddp``, so the
  wait at the all-reduce is not measured (the loop of issue 22); ``compute-plain`` sleeps
  in ``forward/block2``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import stagewatch
from stagewatch import TimingLogger, set_global_timing_logger, timed

RANK = int(os.environ["RANK"])
SLOW_RANK = int(os.environ.get("DDP_FAULT_RANK", "1"))
DELAY = float(os.environ.get("DDP_FAULT_MS", "50")) / 1000.0
STEPS = int(os.environ.get("DDP_FAULT_STEPS", "20"))
BASE = 0.010


def _sleep_if(fault: str, case: str) -> None:
    if case.split("-")[0] == fault and RANK == SLOW_RANK:
        time.sleep(DELAY)


class _SlowBackward(torch.autograd.Function):
    """Identity whose backward is a named region (slowed in the ``compute`` case)."""

    case = ""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        with timed("block2"):  # nested in the loop's "backward" region: backward/block2
            if _SlowBackward.case == "compute":
                _sleep_if("compute", "compute")
            return g


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(32, 64), nn.ReLU())
        self.b = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
        self.case = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        with timed("block2"):
            if self.case == "compute-plain":
                _sleep_if("compute", self.case)
            h = _SlowBackward.apply(h)
        return self.b(h)


def _slow_hook(state: Any, bucket: Any) -> Any:
    time.sleep(DELAY)  # this rank's own communication work, before the collective
    buf = bucket.buffer().div_(dist.get_world_size())
    return dist.all_reduce(buf, async_op=True).get_future()


def run_case(root: str, case: str) -> None:
    torch.manual_seed(0)
    net = Net()
    net.case = case
    _SlowBackward.case = case
    model = DDP(net)
    if not case.endswith("-plain"):
        slow = case == "comm" and RANK == SLOW_RANK
        assert stagewatch.watch_ddp(model, hook=_slow_hook if slow else None) is not None
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    log = TimingLogger(
        root,
        enable_console=False,
        run_id=case,
        rank=RANK,
        world_size=2,
        total_steps=STEPS,
        samples_per_step=8,
        handle_sigterm=False,
    )
    set_global_timing_logger(log)
    dist.barrier()
    log.mark_step_start()
    for _ in range(STEPS):
        with timed("data"):
            x, y = torch.randn(8, 32), torch.randn(8, 1)
            _sleep_if("input", case)
        with timed("h2d"):
            x, y = x.to("cpu"), y.to("cpu")
            _sleep_if("h2d", case)
        with timed("forward"):
            time.sleep(BASE)  # every rank: a step long enough that noise stays small
            loss = nn.functional.mse_loss(model(x), y)
        with timed("backward"):
            loss.backward()
        with timed("optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)
        log.step(scalars={"loss": float(loss.detach())})
    log.close()
    set_global_timing_logger(None)


def main() -> None:
    dist.init_process_group("gloo")
    root = os.environ["DDP_FAULT_ROOT"]
    for case in os.environ["DDP_FAULT_CASES"].split(","):
        run_case(root, case)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
