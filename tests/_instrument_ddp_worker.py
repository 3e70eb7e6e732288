"""Two gloo processes (torch.multiprocessing): instrument a DDP model (wrapped before, or
after ``instrument``; with the user's own comm hook), an FSDP2 model and an FSDP1 one.

Run as ``python tests/_instrument_ddp_worker.py LOG_DIR PORT``; each rank writes its own
rank file under LOG_DIR (runs "ddp" and "fsdp"). Used by tests/test_instrument_ddp.py.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16))
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def _steps(model: Any, log: object, rank: int) -> None:
    import stagewatch

    later = model if isinstance(model, _Later) else None
    with stagewatch.instrument(later.net if later else model, depth=2, logger=log):
        if later is not None:
            model = later.ddp(later.net)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            x = torch.randn(4, 8, generator=torch.Generator().manual_seed(rank))
            with log.region("forward"):
                loss = model(x).square().mean()
            with log.region("backward"):
                loss.backward()
            opt.step()
            opt.zero_grad()
            log.step(samples=4)


def worker(rank: int, world: int, log_dir: str, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.nn.parallel import DistributedDataParallel as DDP

    import stagewatch

    torch.manual_seed(0)
    runs = (("ddp", _ddp), ("inner", _inner), ("ownhook", _own_hook), ("fsdp", _fsdp))
    for run, wrap in (*runs, ("fsdp1", _fsdp1)):
        log = stagewatch.TimingLogger(
            log_dir,
            enable_console=False,
            enable_file=False,
            run_id=run,
            rank=rank,
            world_size=world,
        )
        try:
            model = wrap(Net(), DDP)
        except Exception as e:  # FSDP2 on CPU may be missing in this torch build
            print(f"rank{rank}: {run} skipped: {e}", file=sys.stderr)
            log.close()
            continue
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            _steps(model, log, rank)
        for w in got:
            print(f"rank{rank}: {run} warning: {w.message}", file=sys.stderr)
        log.close()
    dist.destroy_process_group()


def _ddp(net: nn.Module, ddp: type) -> nn.Module:
    return ddp(net)


class _Later:
    """``instrument(net)`` first, ``DistributedDataParallel(net)`` after (see _steps)."""

    def __init__(self, net: nn.Module, ddp: type) -> None:
        self.net, self.ddp = net, ddp


def _inner(net: nn.Module, ddp: type) -> _Later:
    return _Later(net, ddp)


def _own_hook(net: nn.Module, ddp: type) -> nn.Module:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    model = ddp(net)
    model.register_comm_hook(None, default_hooks.allreduce_hook)  # the user's own hook
    return model


def _fsdp(net: nn.Module, ddp: type) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    fully_shard(net.encoder, mesh=mesh)
    fully_shard(net, mesh=mesh)
    return net


def _fsdp1(net: nn.Module, ddp: type) -> nn.Module:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    # use_orig_params: the modules' parameters are views of the flat one in the forward
    cpu = torch.device("cpu")
    net.encoder = FSDP(net.encoder, use_orig_params=True, device_id=cpu)
    return FSDP(net, use_orig_params=True, device_id=cpu)


if __name__ == "__main__":
    mp.spawn(worker, args=(2, sys.argv[1], sys.argv[2]), nprocs=2, join=True)
