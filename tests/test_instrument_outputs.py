"""instrument's backward regions for modules whose output is not a bare tensor: a dict (as
Hugging Face's ModelOutput), a named tuple, a dataclass of the model's own, a list."""

from __future__ import annotations

import gc
import warnings
from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from stagewatch import TimingLogger, instrument, set_global_timing_logger, timed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Pair = namedtuple("Pair", "y z")


@dataclass
class Out:
    logits: torch.Tensor
    aux: torch.Tensor | None = None


class AsDict(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"hidden": self.lin(x), "count": torch.tensor(x.shape[0])}


class AsPair(AsDict):
    def forward(self, x: torch.Tensor) -> Pair:  # type: ignore[override]
        y = self.lin(x)
        return Pair(y, 2 * y)


class AsDataclass(AsDict):
    def forward(self, x: torch.Tensor) -> Out:  # type: ignore[override]
        return Out(self.lin(x))


class AsList(AsDict):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return [self.lin(x)]


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.d, self.p, self.c, self.l = AsDict(), AsPair(), AsDataclass(), AsList()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.d(x)["hidden"]
        b = self.p(a)
        c = self.c(b.y + b.z).logits
        return self.l(c)[0]


def test_every_kind_of_output_gets_its_backward_region() -> None:
    log = TimingLogger(enable_console=False, enable_file=False, enable_jsonl=False)
    set_global_timing_logger(log)
    model = Model()
    x = torch.randn(4, 8, requires_grad=True)
    with instrument(model, depth=1):
        for _ in range(2):
            with timed("forward"):
                out = model(x)
            with timed("backward"):
                out.square().mean().backward()
            log.step()
    got = log.get_summary()
    set_global_timing_logger(None)
    for name in ("d", "p", "c", "l"):
        assert got[f"forward/{name}"]["calls"] == 2, name
        assert got[f"backward/{name}"]["calls"] == 2, name


class LeavesOpen(nn.Module):
    """Its forward opens a region and leaves it open, or raises with one open."""

    def __init__(self, log: TimingLogger, fail: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.log, self.fail = log, fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.begin("inner")  # never ended
        if self.fail:
            raise ValueError("boom")
        return self.lin(x)


@pytest.mark.parametrize("fail", [False, True])
def test_a_region_left_open_inside_a_module_still_closes_its_forward(fail: bool) -> None:
    """The module's frame is then not on top of the logger's region stack: its region ends
    through the general exit path (the hooks' inline one needs it on top)."""
    log = TimingLogger(enable_console=False, enable_file=False, enable_jsonl=False)
    model = nn.Sequential(LeavesOpen(log, fail))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with instrument(model, depth=1, logger=log):
            for _ in range(2):
                try:
                    model(torch.randn(2, 4)).sum().backward()
                except ValueError:
                    pass
                log.step()
    got = log.get_summary()
    assert got["forward/0"]["calls"] == 2


def test_hooks_leave_no_garbage_cycles() -> None:
    """Each call's records are freed by reference counting (a frame that referred to itself
    left two objects per module call to the garbage collector)."""
    log = TimingLogger(enable_console=False, enable_file=False, enable_jsonl=False)
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 4))
    x = torch.randn(2, 4, requires_grad=True)
    with instrument(model, depth=1, logger=log):
        model(x).sum().backward()
        gc.collect()
        gc.disable()
        try:
            gc.set_debug(gc.DEBUG_SAVEALL)
            for _ in range(3):
                model(x).sum().backward()
                log.step()
            gc.collect()
            kinds = {type(o).__name__ for o in gc.garbage}
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert not kinds & {"Frame", "Call"}, kinds
