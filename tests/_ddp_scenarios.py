"""TEST-ONLY fault injection: DDP loops (gloo, CPU) of other shapes than tests/_ddp_faults.py.

Run under ``torchrun --nproc_per_node=N`` (N = 2..4) by tests/test_ddp_scenarios.py. Each
case in the comma-separated env var ``DDP_SCN_CASES`` (read by this script only, never by
the library) trains a tiny model for ``DDP_SCN_STEPS`` steps into run folder
``<DDP_SCN_ROOT>/<case>``. A case is ``<place>-r<rank>[-<flag>...]``: rank ``<rank>`` sleeps
``DDP_SCN_MS`` per step in ``<place>``:

* ``fwd``: the top-level ``forward`` region (no nested region);
* ``enc``: the nested ``forward/encoder`` region;
* ``bwd``: inside the top-level ``backward`` region (a gradient hook), in no nested region;
* ``opt``: the ``optimizer`` region (after the all-reduce: the others wait a step later);
* ``data`` / ``h2d``: inside ``timed("data")`` / ``timed("h2d")``;
* ``untimed``: between the regions, in no region at all;
* ``every3``: ``forward/encoder``, every third step only;
* ``jitter``: every rank sleeps a random 0..``DDP_SCN_MS``/2 in ``forward`` (no culprit);
* ``noisy``: ``jitter``, and rank ``<rank>`` slowed in ``forward/encoder`` too;
* ``pair``: ranks ``<rank>`` and ``<rank>+1`` both slowed in ``data``;
* ``move``: rank ``<rank>`` for the first half of the steps, rank ``<rank>+1`` after.

Flags: ``plain`` (no ``stagewatch.watch_ddp``: the wait is not measured), ``nodata`` (the
loop times only forward/backward/optimizer), ``accum`` (2 micro-batches per step, the first
under ``no_sync``), ``tree`` (every region nested under one ``train`` region), ``bare`` (no
region but the model's ``encoder``), ``instr`` (no region of the loop's or the model's:
``stagewatch.instrument(model, depth=2)`` only, ``enc`` sleeping in the encoder's first
module, ``forward/encoder/0``), ``bn`` (a
BatchNorm: buffers DDP broadcasts from rank 0 at the start of each forward), ``lossar`` (the
loop all-reduces a copy of its loss between forward and backward, in no region, as loops do
to log the mean loss: the ranks waiting for a slow forward wait there, not in DDP's
all-reduce), ``lossreg`` / ``lossfwd`` (the same all-reduce in a ``loss`` region of its own /
inside the ``forward`` region).
"""

from __future__ import annotations

import os
import random
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import stagewatch
from stagewatch import TimingLogger, set_global_timing_logger, timed

RANK = int(os.environ["RANK"])
WORLD = int(os.environ["WORLD_SIZE"])
DELAY = float(os.environ.get("DDP_SCN_MS", "40")) / 1000.0
STEPS = int(os.environ.get("DDP_SCN_STEPS", "40"))
BASE = 0.010


class Case:
    """A case name parsed: where the sleep goes, on which rank, and the loop's shape."""

    def __init__(self, name: str) -> None:
        parts = name.split("-")
        self.name, self.place = name, parts[0]
        self.rank = int(parts[1][1:]) if len(parts) > 1 and parts[1].startswith("r") else -1
        self.flags = set(parts[2:])
        self.step = 0
        self.rng = random.Random(1000 + RANK)

    def slow(self, place: str) -> None:
        """Sleep when this rank is slowed in ``place`` at this step."""
        p, r, s = self.place, self.rank, self.step
        if p in ("jitter", "noisy") and place == "fwd":
            time.sleep(self.rng.uniform(0.0, DELAY / 2))
            return
        if p == "noisy":
            hit = place == "enc" and r == RANK
        elif p == "pair":
            hit = place == "data" and RANK in (r, r + 1)
        elif p == "every3":
            hit = place == "enc" and s % 3 == 0 and r == RANK
        elif p == "move":
            hit = place == "enc" and (r if s < STEPS // 2 else r + 1) == RANK
        else:
            hit = p == place and r == RANK
        if hit:
            time.sleep(DELAY)


class _Sleep(nn.Module):
    """The encoder's first module under ``instr``: where ``enc`` sleeps."""

    def __init__(self, case: Case) -> None:
        super().__init__()
        self.case = case

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.case.slow("enc")
        return x


class Net(nn.Module):
    def __init__(self, case: Case) -> None:
        super().__init__()
        self.case = case
        enc: list[nn.Module] = [nn.Linear(32, 64), nn.ReLU()]
        if "instr" in case.flags:
            enc.insert(0, _Sleep(case))
        if "bn" in case.flags:  # buffers: DDP broadcasts them at each forward
            enc.insert(1, nn.BatchNorm1d(64))
        self.encoder = nn.Sequential(*enc)
        self.head = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "instr" in self.case.flags:  # instrument's forward/encoder, the sleep in its 0
            h = self.encoder(x)
        else:
            with timed("encoder"):  # nested in the loop's forward: forward/encoder
                self.case.slow("enc")
                h = self.encoder(x)
        if h.requires_grad:
            h.register_hook(self._grad_hook)
        return self.head(h)

    def _grad_hook(self, g: torch.Tensor) -> torch.Tensor:
        self.case.slow("bwd")  # inside backward, in no region of its own
        return g


def _region(case: Case, name: str) -> object:
    if ("nodata" in case.flags and name in ("data", "h2d")) or case.flags & {"bare", "instr"}:
        return nullcontext()
    return timed(name)


def _mean_loss(loss: torch.Tensor) -> None:
    mean = loss.detach().clone()
    dist.all_reduce(mean)


def _micro(case: Case, model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int) -> float:
    with _region(case, "forward"):
        time.sleep(BASE / n)  # every rank: a step long enough that noise stays small
        case.slow("fwd")
        loss = nn.functional.mse_loss(model(x), y) / n
        if "lossfwd" in case.flags:  # ... inside the forward region
            _mean_loss(loss)
    if "lossar" in case.flags:  # the mean loss for logging, outside every region
        _mean_loss(loss)
    if "lossreg" in case.flags:  # ... in a region of its own
        with timed("loss"):
            _mean_loss(loss)
    with _region(case, "backward"):
        loss.backward()
    return float(loss.detach())


def _one_step(case: Case, model: DDP, opt: torch.optim.Optimizer) -> float:
    with _region(case, "data"):
        x, y = torch.randn(8, 32), torch.randn(8, 1)
        case.slow("data")
    with _region(case, "h2d"):
        x, y = x.to("cpu"), y.to("cpu")
        case.slow("h2d")
    case.slow("untimed")
    n = 2 if "accum" in case.flags else 1
    loss = 0.0
    for i in range(n):
        sync = nullcontext() if i == n - 1 else model.no_sync()
        with sync:
            loss += _micro(case, model, x[i::n], y[i::n], n)
    with _region(case, "optimizer"):
        case.slow("opt")
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss


def run_case(root: str, name: str) -> None:
    case = Case(name)
    torch.manual_seed(0)
    model = DDP(Net(case))
    if "plain" not in case.flags:
        assert stagewatch.watch_ddp(model) is not None
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    log = TimingLogger(
        root,
        enable_console=False,
        run_id=name,
        rank=RANK,
        world_size=WORLD,
        total_steps=STEPS,
        samples_per_step=8,
        handle_sigterm=False,
    )
    set_global_timing_logger(log)
    if "instr" in case.flags:
        stagewatch.instrument(model, depth=2)
    dist.barrier()
    log.mark_step_start()
    for s in range(STEPS):
        case.step = s
        with timed("train") if "tree" in case.flags else nullcontext():
            loss = _one_step(case, model, opt)
        log.step(scalars={"loss": loss})
    log.close()
    set_global_timing_logger(None)


def main() -> None:
    dist.init_process_group("gloo")
    root = os.environ["DDP_SCN_ROOT"]
    for name in os.environ["DDP_SCN_CASES"].split(","):
        run_case(root, name)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
