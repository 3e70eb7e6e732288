"""The timed forward (stagewatch/timing/forward.py) where module hooks behaved well for free:
copies of a timed module, DataParallel's replicas, a ``forward`` the class makes a property."""

from __future__ import annotations

import copy
import pickle
import typing
import warnings
from typing import Any

import pytest
import torch
from torch import nn

from stagewatch import TimingLogger, TimingWarning, instrument, set_global_timing_logger, timed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def memory_logger() -> TimingLogger:
    log = TimingLogger(enable_console=False, enable_file=False, enable_jsonl=False)
    set_global_timing_logger(log)
    return log


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.k = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.k


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = Scale()
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def forward_regions(log: TimingLogger) -> set[str]:
    log.step()
    return {k for k in log.get_summary() if k.startswith("forward/")}


def test_a_shallow_copy_runs_its_own_forward_untimed() -> None:
    log = memory_logger()
    m = Net()
    x = torch.randn(3, 4)
    with instrument(m):
        c = copy.copy(m.a)
        c.k = 2.0  # the copy's own attribute: the original's forward would ignore it
        assert torch.allclose(c(x), m.a.lin(x) * 2.0)
        assert "forward" not in vars(c) and "__getstate__" not in vars(c)
        with timed("forward"):
            m(x)
        assert forward_regions(log) == {"forward/a", "forward/a/lin", "forward/b"}


def test_deep_copies_and_pickles_hold_no_trace_of_the_timed_forward() -> None:
    memory_logger()
    m = Net()
    x = torch.randn(3, 4)
    with instrument(m):
        for c in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
            assert not any(k in vars(c.a) for k in ("forward", "__getstate__"))
            assert torch.allclose(c(x), m(x))
        assert b"stagewatch" not in pickle.dumps(m)  # loads where stagewatch is not installed
        assert "forward" in vars(m.a)  # the original is still timed
    assert not any(k in vars(m.a) for k in ("forward", "__getstate__"))


def test_a_forward_the_instance_had_goes_to_the_copy() -> None:
    memory_logger()
    m = Net()
    m.a.forward = lambda x: x + 1.0  # accelerate-style, set on the instance before instrument
    with instrument(m):
        c = copy.copy(m.a)
        assert c.forward is m.a.forward.__wrapped__
        assert torch.equal(c(torch.zeros(1)), torch.ones(1))
    assert torch.equal(m.a(torch.zeros(1)), torch.ones(1))


def test_data_parallel_replicas_run_and_time_their_own_forward() -> None:
    log = memory_logger()
    m = Net()
    x = torch.randn(3, 4)
    with instrument(m):
        r = m.a._replicate_for_data_parallel()  # what nn.parallel.replicate calls per module
        r.k = 3.0
        assert r.forward.module is r and r.forward.probe is m.a.forward.probe
        with timed("forward"):
            out = r(x)
        assert torch.allclose(out, m.a.lin(x) * 3.0)
        assert "forward/a" in forward_regions(log)
        assert "__getstate__" not in vars(copy.copy(r)) and "forward" not in vars(copy.copy(r))


class PropertyForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    @property
    def forward(self) -> Any:  # type: ignore[override]
        return self.lin


class Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p = PropertyForward()
        self.q = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(self.p(x))


def test_a_forward_property_is_refused_with_a_warning_not_left_silently_untimed() -> None:
    memory_logger()
    m = Holder()
    with pytest.warns(TimingWarning, match="'p' has a `forward` its class defines as a prop"):
        h = instrument(m, depth=1)
    assert h.regions == ["q"] and "forward" not in vars(m.p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(torch.randn(2, 4)).sum().backward()
    h.remove()


def test_parameters_put_in_after_instrument_are_the_ones_waited_for() -> None:
    # FSDP2 swaps each module's sharded parameters for unsharded ones around its forward
    # (and ``module.weight = nn.Parameter(...)`` does the same by hand): a module whose inputs
    # need no gradient ends its backward on the gradients of the parameters it used
    log = memory_logger()
    m = Net()
    x = torch.randn(3, 4)
    with instrument(m, depth=1), warnings.catch_warnings():
        warnings.simplefilter("error")  # not "ended without the gradients of ..."
        for i in range(3):
            m.a.lin.weight = nn.Parameter(torch.randn(4, 4))
            if i == 2:
                m.a.lin.bias = nn.Parameter(torch.zeros(4))
            with timed("forward"):
                out = m(x)
            with timed("backward"):
                out.sum().backward()
            log.step()
    regions = log.get_summary()
    assert {"backward/a", "backward/b"} <= set(regions)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return torch.relu(self.lin(x)) * scale


def test_the_timed_forward_reads_as_the_function_it_wraps() -> None:
    memory_logger()
    m = nn.Sequential(Block(), nn.Linear(4, 2))
    x = torch.randn(3, 4)
    with instrument(m):
        fwd = m[0].forward
        assert (fwd.__name__, fwd.__qualname__) == ("forward", "Block.forward")
        assert fwd.__code__ is Block.forward.__code__ and fwd.__defaults__ == (1.0,)
        assert not hasattr(fwd, "__self__")  # not a method: none rebinds past it
        hints = typing.get_type_hints(fwd)
        assert hints == typing.get_type_hints(Block.forward)
        # non-strict export reads the exported module's forward.__code__
        exported = torch.export.export(m[0], (x,), strict=False)
        assert torch.allclose(exported.module()(x), m[0](x))


def test_a_hook_put_on_top_and_taken_off_after_remove_leaves_no_timed_forward() -> None:
    hooks = pytest.importorskip("accelerate.hooks")
    log = memory_logger()
    m = Net()
    x = torch.randn(3, 4)
    h = instrument(m)
    hooks.add_hook_to_module(m.a, hooks.ModelHook())  # keeps ours as m.a._old_forward
    with timed("forward"):
        m(x)
    assert "forward/a" in forward_regions(log)
    h.remove()
    hooks.remove_hook_from_module(m.a)  # puts _old_forward back as m.a.forward
    assert m.a.forward == Scale.forward.__get__(m.a)  # as without instrument: no dead wrapper
    assert b"stagewatch" not in pickle.dumps(m)
    with instrument(m):
        assert m.a.forward.__wrapped__ == Scale.forward.__get__(m.a)  # wrapped once


def test_a_forward_replaced_after_instrument_is_timed_from_the_next_step() -> None:
    log = memory_logger()
    m = Net()
    x = torch.randn(3, 4)

    def doubled(self: Scale, x: torch.Tensor) -> torch.Tensor:  # a kernel patch, say
        return self.lin(x) * 2.0

    h = instrument(m)
    m.a.forward = doubled.__get__(m.a)  # replaces the timed forward (module hooks stayed)
    for _ in range(2):
        with timed("forward"):
            out = m(x)
        with timed("backward"):
            out.sum().backward()
        got = forward_regions(log)
    assert "forward/a" in got and "backward/a" in log.get_summary()
    assert torch.allclose(out, m.b(m.a.lin(x) * 2.0))
    h.remove()
    assert m.a.forward == doubled.__get__(m.a) and "__getstate__" not in vars(m.a)


class Symmetric(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w.triu() + w.triu(1).T


def test_a_deep_copy_that_copies_the_dict_as_it_is_gets_working_methods() -> None:
    # parametrize's modules deep-copy their __dict__ directly (not through __getstate__)
    from torch.nn.utils import parametrize

    memory_logger()
    m = Net()
    parametrize.register_parametrization(m.a.lin, "weight", Symmetric())
    with instrument(m, depth=2):
        c = copy.deepcopy(m)
    r = c.a.lin._replicate_for_data_parallel()
    assert r.forward.__self__ is r  # its class's method, bound to the replica
    with pytest.raises(RuntimeError, match="parametrized modules"):  # parametrize's own
        c.a.lin.__getstate__()
    x = torch.randn(3, 4)
    assert torch.allclose(c(x), m(x))


def test_a_view_standing_in_for_a_parameter_is_waited_for_not_refused() -> None:
    # FSDP1 with use_orig_params puts views of its flat parameter in for the forward: they
    # are not leaves, so a post-accumulate hook cannot go on them (it raised in the loop)
    log = memory_logger()
    m = Net()
    flat = nn.Parameter(torch.randn(16))

    def put_view(mod: nn.Module, _args: Any) -> None:
        mod._parameters["weight"] = flat.view(4, 4)

    m.a.lin.register_forward_pre_hook(put_view)
    x = torch.randn(3, 4)
    with instrument(m, depth=1), warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            with timed("forward"):
                out = m(x)
            with timed("backward"):
                out.sum().backward()
            log.step()
    assert flat.grad is not None and "backward/a" in log.get_summary()


def test_a_class_swapped_in_after_instrument_runs_its_own_forward() -> None:
    # FSDP2's fully_shard swaps in a subclass (module hooks always found its forward)
    log = memory_logger()
    m = Net()
    x = torch.randn(3, 4)

    class Tripled(Scale):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 3.0

    with instrument(m):
        m.a.__class__ = Tripled
        with timed("forward"):
            out = m.a(x)
        assert torch.allclose(out, m.a.lin(x) * 3.0)
        assert "forward/a" in forward_regions(log)


def test_hugging_face_checkpointed_layers_still_checkpoint_in_an_fsdp2_subclass() -> None:
    # transformers wraps each GradientCheckpointingLayer subclass's forward; only the
    # outermost (type(self).forward) checkpoints: the forward bound at instrument (the
    # parent class's) ran the layer without checkpointing once fully_shard swapped the class
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    cfg = llama.LlamaConfig(
        num_hidden_layers=1,
        hidden_size=16,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        vocab_size=32,
    )
    memory_logger()
    model = llama.LlamaForCausalLM(cfg)
    model.train()
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)({"use_reentrant": False})
    layer = model.model.layers[0]
    runs = []
    layer.input_layernorm.register_forward_pre_hook(lambda *_: runs.append(1))
    ids = torch.randint(0, 32, (1, 6))
    with instrument(model, depth=3):
        layer.__class__ = type("FSDPLlamaDecoderLayer", (type(layer),), {})
        model(input_ids=ids, labels=ids).loss.backward()
    assert len(runs) == 2  # the forward and its re-run in the backward
