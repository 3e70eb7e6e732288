"""instrument's backward regions for modules whose output is not a bare tensor: a dict (as
Hugging Face's ModelOutput), a named tuple, a dataclass of the model's own, a list."""

from __future__ import annotations

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
