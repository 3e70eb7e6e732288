"""``instrument`` on a module that returns a tensor of its own (its parameter, e.g. a learned
positional embedding ``forward(self): return self.pos``): no autograd node made the output,
so its backward region was never opened (was: ``forward/pos`` timed, ``backward/pos``
missing). Its backward now starts at the leaf's gradient and ends when it is accumulated."""

from __future__ import annotations

from pathlib import Path

import pytest
from _trainer_helpers import records

torch = pytest.importorskip("torch")

import stagewatch  # noqa: E402
from stagewatch import TimingLogger, set_global_timing_logger  # noqa: E402


class _Pos(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.randn(4, 8))

    def forward(self) -> torch.Tensor:
        return self.p


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos = _Pos()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x + self.pos())


def test_a_module_returning_its_parameter_gets_a_backward_region(tmp_path: Path) -> None:
    log = TimingLogger(tmp_path, enable_console=False, run_id="leaf", handle_sigterm=False)
    set_global_timing_logger(log)
    try:
        net = _Net()
        h = stagewatch.instrument(net, depth=1)
        for _ in range(3):
            net(torch.randn(4, 8)).sum().backward()
            log.step()
        assert not net.pos.p._backward_hooks  # the tensor hooks are taken away each step
        with torch.no_grad():  # an evaluation forward: no backward, no hook left behind
            net(torch.randn(4, 8))
        net(torch.randn(4, 8))  # a forward whose backward never comes: remove() takes it
        h.remove()
        assert not net.pos.p._backward_hooks
    finally:
        set_global_timing_logger(None)
        log.close()
    steps = [r for r in records(tmp_path / "leaf" / "rank0.jsonl") if r["kind"] == "step"]
    assert len(steps) == 3
    for s in steps:
        assert s["regions"]["backward/pos"][1] == 1, sorted(s["regions"])
        assert s["regions"]["backward/lin"][1] == 1
