"""stagewatch.instrument on model shapes the other tests do not build: modules that return
their input, re-entrant activation checkpointing, ..."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from stagewatch import TimingLogger, TimingWarning, instrument, set_global_timing_logger, timed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def memory_logger() -> TimingLogger:
    return TimingLogger(enable_console=False, enable_file=False, enable_jsonl=False)


def summary(model: nn.Module, x: torch.Tensor, steps: int = 2, **kw: Any) -> dict[str, Any]:
    log = memory_logger()
    set_global_timing_logger(log)
    with instrument(model, **kw), warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: nothing left open, nothing refused
        for _ in range(steps):
            with timed("forward"):
                out = model(x)
            with timed("backward"):
                out.square().mean().backward()
            log.step()
    return log.get_summary()


class Block(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.drop = nn.Dropout(p)  # p=0: returns its input as it is
        self.skip = nn.Identity()
        self.b = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.a(x))
        return self.skip(x) + self.drop(self.b(h))


def test_a_module_returning_its_input_gets_its_backward_regions() -> None:
    """nn.Identity, Dropout(p=0): start and end hooks on one node, the end's first."""
    got = summary(nn.Sequential(nn.Linear(8, 8), Block()), torch.randn(2, 8), depth=3)
    assert got["forward/1/drop"]["calls"] == got["backward/1/drop"]["calls"] == 4
    assert got["forward/1/skip"]["calls"] == got["backward/1/skip"]["calls"] == 2
    assert got["backward/1/drop"]["total"] >= 0.0
    assert got["backward/1/a"]["calls"] == got["backward/1/b"]["calls"] == 2


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.inp = nn.Linear(8, 8)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)) for _ in range(2)
        )
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for b in self.blocks:
            x = x + checkpoint(b, x, use_reentrant=self.reentrant)
        return self.head(x)


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpointed_modules_get_backward_regions_either_way(reentrant: bool) -> None:
    """A re-entrant checkpoint runs its forward without gradients and backwards through the
    re-run: the re-run's calls carry the backward regions."""
    got = summary(Checkpointed(reentrant), torch.randn(2, 8), steps=3, depth=3)
    for b in ("blocks/0", "blocks/1"):
        assert got[f"forward/{b}"]["calls"] == got[f"backward/{b}"]["calls"] == 3
        for i in range(3):
            assert got[f"backward/{b}/{i}"]["calls"] == 3
            assert got[f"backward/{b}/{i}"]["total"] <= got[f"backward/{b}"]["total"]
        rec = got[f"backward/{b}/recompute"]
        assert rec["calls"] == 3 and rec["total"] <= got[f"backward/{b}"]["total"]
        assert got[f"backward/{b}"]["total"] <= got["backward"]["total"]
    assert not any(n.startswith("forward") and "recompute" in n for n in got)


def test_torchscript_modules_are_refused_with_a_warning_not_a_crash() -> None:
    class WithScript(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.js = torch.jit.script(nn.Sequential(nn.Linear(8, 8), nn.ReLU()))
            self.b = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.js(self.a(x)))

    log = memory_logger()
    set_global_timing_logger(log)
    model = WithScript()
    with pytest.warns(TimingWarning, match="'js' .*TorchScript") as got:
        h = instrument(model, depth=2)
    assert len(got) == 1 and h.regions == ["a", "b"]
    with h:
        model(torch.randn(2, 8)).sum().backward()
        log.step()
    assert {"forward/a", "backward/a", "forward/b", "backward/b"} <= set(log.get_summary())
    scripted = torch.jit.script(nn.Sequential(nn.Linear(8, 8)))
    with pytest.warns(TimingWarning, match="the model is a TorchScript module"):
        h = instrument(scripted)
    assert not h.active
    with pytest.warns(TimingWarning, match="'js' is a TorchScript"):
        h = instrument(nn.Module(), modules={"js": scripted, "lin": nn.Linear(8, 8)})
    assert h.regions == ["lin"]
    h.remove()


def test_a_module_called_inside_the_backward_region_is_a_forward() -> None:
    """A loss module of the model called inside ``timed("backward")``: its forward is not
    merged into its own backward region."""

    class WithLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.crit = nn.MSELoss()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x)

    log = memory_logger()
    set_global_timing_logger(log)
    model = WithLoss()
    with instrument(model):
        for _ in range(2):
            with timed("forward"):
                out = model(torch.randn(2, 8))
            with timed("backward"):
                model.crit(out, torch.zeros(2, 8)).backward()
            log.step()
    got = log.get_summary()
    assert got["forward/crit"]["calls"] == got["backward/crit"]["calls"] == 2


class Layer(nn.Module):
    """As Hugging Face's layers: the layer's ``forward`` is checkpointed, not its call, so
    its own hooks stay outside and its children re-run one after another."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.norm = nn.LayerNorm(8)
        self.attn = nn.Linear(8, 8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attn(self.norm(x))
        return h + self.mlp(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, x, use_reentrant=self.reentrant)


def layers(reentrant: bool, out: int = 2) -> nn.Module:
    return nn.Sequential(nn.Linear(8, 8), Layer(reentrant), Layer(reentrant), nn.Linear(8, out))


@pytest.mark.parametrize("reentrant", [True, False])
def test_a_layer_whose_children_re_run_has_one_recompute_per_re_run(reentrant: bool) -> None:
    got = summary(layers(reentrant), torch.randn(2, 8), steps=3, depth=1)
    for i in (1, 2):
        rec = got[f"backward/{i}/recompute"]
        assert rec["calls"] == got[f"backward/{i}"]["calls"] == 3  # not one per child
        assert rec["total"] <= got[f"backward/{i}"]["total"]
    deeper = summary(layers(reentrant), torch.randn(2, 8), steps=2, depth=2)
    for child in ("norm", "attn", "mlp"):
        assert deeper[f"backward/1/{child}"]["calls"] == 2
        assert deeper[f"backward/1/{child}/recompute"]["calls"] == 2


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpoint_regions_on_a_cuda_logger(reentrant: bool, tmp_path: Any) -> None:
    from test_timing_cuda import FakeGPU, make

    gpu = FakeGPU()
    log = make(tmp_path, gpu)  # a CUDA logger on fake events, set as the global one
    model = nn.Sequential(layers(reentrant, 8), Checkpointed(reentrant))
    with instrument(model, depth=3), warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            with timed("forward"):
                out = model(torch.randn(2, 8))
            with timed("backward"):
                out.square().mean().backward()
            log.step()
    assert gpu.syncs == 0
    log.close()
    got = log.get_summary()
    for name in ("0/1/attn", "0/2/mlp", "1/blocks/0", "1/blocks/1"):
        assert got[f"backward/{name}"]["calls"] == 2, sorted(got)
        assert got[f"backward/{name}/recompute"]["calls"] == 2


class LearnedPositions(nn.Embedding):
    """As BART's encoder: called with the embeddings' last channel, for the shape only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(torch.arange(x.shape[1]))


class Gate(nn.Module):
    """Takes two inputs that need gradients and uses only the first."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, ignored: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * ignored.shape[-1]


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.pos = LearnedPositions(16, 8)
        self.gate = Gate()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.pos(h[:, :, -1])
        return self.head(self.gate(h, h * 2))


def test_an_input_read_for_its_shape_only_neither_warns_nor_stretches_the_region() -> None:
    got = summary(Encoder(), torch.randn(2, 5, 8), steps=3)  # a warning would raise
    for name in ("embed", "pos", "gate", "head"):
        assert got[f"forward/{name}"]["calls"] == got[f"backward/{name}"]["calls"] == 3


class LayerDrop(nn.Module):
    """Token ids in (no input gradient: the module ends on its parameters' gradients), and a
    layer skipped at random, as wav2vec2's LayerDrop or an expert no token chose."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.skip = 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        for i, layer in enumerate(self.layers):
            if i != self.skip:
                h = layer(h)
        self.skip = (self.skip + 1) % 3
        return h


def test_parameters_without_gradients_in_a_step_do_not_warn() -> None:
    model = nn.Sequential(LayerDrop(), nn.Linear(8, 2))
    got = summary(model, torch.randint(0, 16, (2, 5)), steps=3, depth=1)  # a warning raises
    assert got["forward/0"]["calls"] == got["backward/0"]["calls"] == 3
    assert got["backward/0"]["total"] <= got["backward"]["total"]
