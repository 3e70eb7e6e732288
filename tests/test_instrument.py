"""stagewatch.instrument and stagewatch.timed_loader with real torch on CPU."""

from __future__ import annotations

import copy
import inspect
import pickle
import warnings
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import stagewatch
from stagewatch import TimingLogger, instrument, set_global_timing_logger, timed, timed_loader
from stagewatch.timing.instrument import InstrumentHandle, select_modules, unwrap
from trainer.models.instrument import hook_count

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def memory_logger(**kw: Any) -> TimingLogger:
    return TimingLogger(enable_console=False, enable_file=False, enable_jsonl=False, **kw)


class Block(nn.Module):
    def __init__(self, d: int, ckpt: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.ckpt = ckpt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        if self.ckpt and torch.is_grad_enabled():
            return x + checkpoint(self.mlp, h, use_reentrant=False)
        return x + self.mlp(h)


class Net(nn.Module):
    """Token embedding (its input needs no gradient), blocks, a head."""

    def __init__(self, d: int = 16, n: int = 2, ckpt: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, d)
        self.blocks = nn.ModuleList(Block(d, ckpt) for _ in range(n))
        self.head = nn.Linear(d, 32)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def ids() -> torch.Tensor:
    return torch.randint(0, 32, (2, 8))


def run_step(model: nn.Module, log: TimingLogger, x: torch.Tensor | None = None) -> None:
    with timed("forward"):
        out = model(ids() if x is None else x)
    with timed("backward"):
        out.float().square().mean().backward()
    log.step()


def step_regions(
    model: nn.Module, x: torch.Tensor | None = None, **kw: Any
) -> dict[str, dict[str, float]]:
    log = memory_logger()
    set_global_timing_logger(log)
    with instrument(model, **kw):
        run_step(model, log, x)
    return log.get_summary()


def test_tree_to_depth_two_forward_and_backward() -> None:
    got = step_regions(Net(), depth=2)
    mods = ["embed", "blocks/0", "blocks/1", "head"]
    assert set(got) == {"forward", "backward"} | {f"{p}/{m}" for p in got for m in mods} & {
        f"{ph}/{m}" for ph in ("forward", "backward") for m in mods
    }
    assert all(got[n]["calls"] == 1 for n in got)


def test_depth_three_nests_as_the_module_tree_and_children_fit() -> None:
    got = step_regions(Net(), depth=3)
    for m in ("blocks/0/norm", "blocks/0/mlp", "blocks/1/mlp"):
        assert f"forward/{m}" in got and f"backward/{m}" in got
    assert "forward/blocks/0/mlp/0" not in got  # depth 4
    for name in got:
        parent = name.rsplit("/", 1)[0]
        while parent not in got:  # "blocks" is a ModuleList: never called, no region
            parent = parent.rsplit("/", 1)[0]
        if parent != name:
            assert got[name]["total"] <= got[parent]["total"] * 1.05 + 0.3, name


def test_depth_none_include_exclude() -> None:
    got = step_regions(Net(), depth=None, include="blocks/1", exclude=["*/norm"])
    names = {n.split("/", 1)[1] for n in got if "/" in n}
    assert names == {"blocks/1", "blocks/1/mlp"} | {f"blocks/1/mlp/{i}" for i in range(3)}
    sel = select_modules(Net(), 1, (), ("head",))
    assert list(sel) == ["embed"]  # ModuleList "blocks" has no forward: never a region


def test_modules_mapping_names_the_regions() -> None:
    net = Net()
    got = step_regions(net, modules={"tok": net.embed, "stack.first": net.blocks[0]})
    assert {n for n in got if "/" in n} == {
        "forward/tok",
        "backward/tok",
        "forward/stack/first",
        "backward/stack/first",
    }


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.f = nn.Linear(8, 8)
        self.alias = self.f  # the same module under a second name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.f(torch.relu(self.alias(h))) + h  # f twice, and a skip around it


def test_module_called_twice_adds_up_with_a_count() -> None:
    log = memory_logger()
    set_global_timing_logger(log)
    model = Twice()
    with instrument(model):
        for _ in range(3):
            run_step(model, log, torch.randn(4, 8))
    got = log.get_summary()
    assert "forward/alias" not in got  # a shared module is timed once, under its first name
    assert got["forward/f"]["calls"] == 6 and got["backward/f"]["calls"] == 6
    assert got["forward/inp"]["calls"] == 3 and got["backward/inp"]["calls"] == 3
    assert got["backward/f"]["total"] <= got["backward"]["total"]


class Recursive(nn.Module):
    """Re-enters itself: the outer call's region covers the inner ones."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, n: int = 2) -> torch.Tensor:
        x = self.lin(x)
        return self(x, n - 1) if n > 0 else x


def test_re_entered_module_pairs_with_its_outer_call() -> None:
    outer = nn.Sequential(Recursive())
    log = memory_logger()
    set_global_timing_logger(log)
    with instrument(outer, depth=2):
        run_step(outer, log, torch.randn(2, 4, requires_grad=True))
    got = log.get_summary()
    assert got["forward/0"]["calls"] == 1 and got["backward/0"]["calls"] == 1
    assert got["forward/0/lin"]["calls"] == 3 and got["backward/0/lin"]["calls"] == 3
    assert "forward/0/0" not in got


def test_checkpoint_recompute_is_charged_to_the_module() -> None:
    got = step_regions(Net(ckpt=True), depth=3)
    for i in (0, 1):
        rec = got[f"backward/blocks/{i}/mlp/recompute"]
        assert rec["calls"] == 1
        assert rec["total"] <= got[f"backward/blocks/{i}"]["total"] * 1.05 + 0.3
    assert not any(n.startswith("forward") and "recompute" in n for n in got)
    assert got["forward/blocks/0/mlp"]["calls"] == 1  # the re-run is not a forward


def test_recompute_below_the_depth_goes_to_the_nearest_timed_module() -> None:
    got = step_regions(Net(ckpt=True), depth=2)
    assert got["backward/blocks/0/recompute"]["calls"] == 1
    assert got["backward/blocks/1/recompute"]["calls"] == 1


def test_reentrant_checkpoint_recompute() -> None:
    class R(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(checkpoint(self.a, x, use_reentrant=True))

    log = memory_logger()
    set_global_timing_logger(log)
    model = R()
    with instrument(model):
        run_step(model, log, torch.randn(2, 8, requires_grad=True))
    assert log.get_summary()["backward/a/recompute"]["calls"] == 1


def test_remove_and_context_manager_leave_no_hooks() -> None:
    set_global_timing_logger(memory_logger())
    model = Net(ckpt=True)
    h = instrument(model, depth=3)
    assert h.active and hook_count(model) > 0
    model(ids()).sum().backward()
    h.remove()
    h.remove()  # idempotent
    assert not h.active and hook_count(model) == 0
    assert not torch.nn.modules.module._global_forward_hooks
    with instrument(model, depth=3):
        assert hook_count(model) > 0
    assert hook_count(model) == 0


@pytest.mark.parametrize("how", ["no logger", "disabled", "env"])
def test_timing_off_installs_nothing(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "disabled":
        set_global_timing_logger(memory_logger(enabled=False))
    elif how == "env":
        monkeypatch.setenv("STAGEWATCH_TIMING", "0")
        set_global_timing_logger(memory_logger())
    model = Net()
    h = instrument(model, depth=3)
    assert isinstance(h, InstrumentHandle) and not h.active and h.regions == []
    model(ids()).sum().backward()
    assert hook_count(model) == 0
    h.remove()


def test_a_closed_logger_takes_the_hooks_away() -> None:
    log = memory_logger()
    model = Net()
    h = instrument(model, logger=log)
    assert hook_count(model) > 0
    log.close()
    model(ids()).sum().backward()
    assert hook_count(model) == 0 and not h.active


def test_ddp_and_fsdp_names_are_unwrapped() -> None:
    class FakeFsdp(nn.Module):  # FSDP (1) keeps the user's module as _fsdp_wrapped_module
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._fsdp_wrapped_module = inner

        def forward(self, *a: Any) -> Any:
            return self._fsdp_wrapped_module(*a)

    net = Net()
    net.blocks[0] = FakeFsdp(net.blocks[0])
    wrapped = FakeFsdp(net)
    assert unwrap(wrapped) is net
    got = step_regions(wrapped, depth=2)
    assert "forward/blocks/0" in got and "backward/blocks/0" in got
    assert not any("_fsdp" in n for n in got)


# ----------------------------------------------------------------------------- pitfalls


class InplaceAfter(nn.Module):
    """A hooked module's output modified in place (what breaks full backward hooks)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.act = nn.ReLU(inplace=True)  # modifies its own input in place
        self.out = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        h.mul_(2.0)
        return self.out(self.act(h))


def test_in_place_ops_on_outputs_and_inputs_do_not_break() -> None:
    model = InplaceAfter()
    x = torch.randn(3, 8, requires_grad=True)
    ref = torch.autograd.grad(model(x).sum(), x)[0]
    log = memory_logger()
    set_global_timing_logger(log)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with instrument(model):
            got = torch.autograd.grad(model(x).sum(), x)[0]
            run_step(model, log, x)
    assert torch.allclose(ref, got)
    summary = log.get_summary()
    for m in ("lin", "act", "out"):
        assert f"forward/{m}" in summary
    assert "backward/lin" in summary and "backward/out" in summary


class BasicBlock(nn.Module):
    """torchvision's ResNet block: one in-place ReLU module called twice, ``out +=`` on the
    output of a timed BatchNorm."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


def test_resnet_block_with_in_place_relu_keeps_gradients_and_regions() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), BasicBlock(4), BasicBlock(4))
    x = torch.randn(2, 3, 8, 8)
    model(x).square().mean().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    log = memory_logger()
    set_global_timing_logger(log)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with instrument(model, depth=None):
            run_step(model, log, x)
    for p, r in zip(model.parameters(), ref, strict=True):
        assert torch.allclose(p.grad, r, atol=1e-6)
    got = log.get_summary()
    assert got["forward/1/relu"]["calls"] == 2 and got["backward/1/relu"]["calls"] == 2
    for m in ("1", "1/bn2", "2/conv1", "0"):
        assert got[f"backward/{m}"]["calls"] == 1, m
    assert got["backward/1/bn2"]["total"] <= got["backward/1"]["total"]


def test_inputs_that_need_no_gradient_close_on_parameter_gradients() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(2, 8)
    got = step_regions(model, x, depth=1)  # the first layer's input needs no gradient
    assert got["backward/0"]["calls"] == 1
    assert "backward/1" in got  # Tanh: no parameters, its input needs a gradient
    frozen = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    frozen[0].requires_grad_(False)
    got = step_regions(frozen, x, depth=1)
    assert "backward/0" not in got and "backward/1" in got


def test_a_module_ignoring_its_input_closes_with_the_backward() -> None:
    class Pos(nn.Module):  # takes x for its length only: x's gradient never comes through it
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.randn(16, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.table[: x.shape[1]]

    class WithPos(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(8, 8)
            self.pos = Pos()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x)
            # h + ... consumes h before pos does: pos's input gets a view, which pos ignores
            return h + h.mean(-1, keepdim=True) + self.pos(h)

    log = memory_logger()
    set_global_timing_logger(log)
    model = WithPos()
    with instrument(model), warnings.catch_warnings():
        # seen at its forward: pos's output does not depend on its input, so its backward
        # ends on its parameter's gradient, not with the backward pass (and no warning)
        warnings.simplefilter("error")
        for _ in range(2):
            run_step(model, log, torch.randn(2, 5, 8))
    got = log.get_summary()
    assert got["backward/pos"]["calls"] == 2 and got["backward/inp"]["calls"] == 2
    assert got["backward/pos"]["total"] <= got["backward"]["total"]


def test_a_fresh_input_is_hooked_without_a_view() -> None:
    """A module's one input made by the last autograd node (``x = layer(x)``) is passed as
    it is: its backward ends when that node runs; an input consumed before gets a view."""
    seen: list[bool] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x._base is None)  # no view of the caller's tensor
            return x * 2

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(8, 8)
            self.a = Probe()
            self.b = Probe()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x)
            return self.a(h) + self.b(h)  # b's input was consumed by a first

    log = memory_logger()
    set_global_timing_logger(log)
    model = Twice()
    with instrument(model), warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left unfinished
        for _ in range(2):
            run_step(model, log, torch.randn(2, 8))
    assert seen == [True, False, True, False]  # a: the caller's tensor; b: a view
    got = log.get_summary()
    for name in ("inp", "a", "b"):
        assert got[f"backward/{name}"]["calls"] == 2
    assert got["backward/a"]["total"] <= got["backward"]["total"]


def test_no_grad_forward_times_forward_only() -> None:
    log = memory_logger()
    set_global_timing_logger(log)
    model = Net()
    with instrument(model), torch.no_grad(), timed("eval"):
        model(ids())
    log.step()
    got = log.get_summary()
    assert "eval/blocks/0" in got and not any(n.startswith("backward") for n in got)


def test_compiled_model_is_refused_with_one_warning() -> None:
    set_global_timing_logger(memory_logger())
    model = torch.compile(Net())  # compiling is lazy: nothing runs here
    with pytest.warns(stagewatch.TimingWarning, match="torch.compile"):
        h = instrument(model)
    assert not h.active


def test_instrument_then_compile_does_not_break_the_graph() -> None:
    """Hooks do nothing inside code torch.compile traces: fullgraph compiles, and runs."""
    log = memory_logger()
    set_global_timing_logger(log)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with instrument(model):
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        compiled(torch.randn(2, 8)).sum().backward()
    log.step()
    assert not any("/" in n for n in log.get_summary())  # nothing timed inside the graph


def test_direct_forward_call_is_timed_and_keeps_the_signature() -> None:
    """``self.b.forward(...)`` runs the timed forward too (it is the module's ``forward``),
    and ``inspect.signature`` still sees the module's own (Hugging Face's Trainer reads it
    to keep a dataset's columns)."""

    class Direct(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b.forward(self.a(x))

    log = memory_logger()
    set_global_timing_logger(log)
    model = Direct()
    before = inspect.signature(model.b.forward)
    with warnings.catch_warnings():
        warnings.simplefilter("error", stagewatch.TimingWarning)
        h = instrument(model)
    assert model.b.forward is not nn.Linear.forward.__get__(model.b)
    assert inspect.signature(model.b.forward) == before
    with h:
        run_step(model, log, torch.randn(2, 4))
    got = log.get_summary()
    assert {"forward/a", "forward/b", "backward/a", "backward/b"} <= set(got)
    assert "forward" not in model.b.__dict__  # taken away by remove()


def test_pickled_or_copied_model_keeps_no_live_hooks() -> None:
    log = memory_logger()
    set_global_timing_logger(log)
    model = Net()
    with instrument(model):
        twin = copy.deepcopy(model)
        again = pickle.loads(pickle.dumps(model))
        run_step(twin, log)
        run_step(again, log)
        assert not any("/" in n for n in log.get_summary())
        # each copy computes with its own weights, not the original's
        x = ids()
        for c in (twin, again):
            with torch.no_grad():
                c.head.bias.add_(1.0)
                assert torch.allclose(c(x), model(x) + 1.0, atol=1e-5)
        run_step(model, log)  # the original is still timed
        assert "forward/head" in log.get_summary()


def test_a_module_is_never_timed_twice() -> None:
    log = memory_logger()
    set_global_timing_logger(log)
    model = Net()
    with instrument(model, depth=1) as first:
        with pytest.warns(stagewatch.TimingWarning, match="already timed"):
            second = instrument(model, depth=2)
        assert set(second.regions) == {"blocks/0", "blocks/1"}
        run_step(model, log)
        second.remove()
    assert all(v["calls"] == 1 for v in log.get_summary().values())
    assert not first.active and hook_count(model) == 0


def test_bad_arguments_raise_clear_errors() -> None:
    set_global_timing_logger(memory_logger())
    with pytest.raises(ValueError, match="depth"):
        instrument(Net(), depth=0)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        instrument(object())
    with pytest.raises(TypeError, match="include"):
        instrument(Net(), include=[3])


# ----------------------------------------------------------------------------- loader


def test_timed_loader_splits_wait_and_copy() -> None:
    log = memory_logger()
    set_global_timing_logger(log)
    data = [({"x": torch.ones(2, 3), "meta": "a"}, [torch.zeros(2)]) for _ in range(3)]
    seen = []
    for batch in timed_loader(data, device="cpu"):
        seen.append(batch)
        log.step()
    assert len(seen) == 3 and seen[0][0]["meta"] == "a"
    assert torch.equal(seen[0][1][0], torch.zeros(2))
    got = log.get_summary()
    assert got["data/wait"]["count"] == 3 and got["data/h2d"]["count"] == 3
    assert len(timed_loader(data)) == 3


def test_timed_loader_without_device_or_timing() -> None:
    data = [torch.ones(1)] * 2
    assert [b.item() for b in timed_loader(data, device="cpu")] == [1.0, 1.0]  # timing off
    log = memory_logger()
    set_global_timing_logger(log)
    for _ in timed_loader(iter(data)):
        log.step()
    got = log.get_summary()
    assert "data/wait" in got and "data/h2d" not in got


def test_cuda_event_path_times_every_region_with_events_and_no_synchronize(tmp_path) -> None:
    """A CUDA logger (fake events on a CPU): forward and backward regions from pooled events,
    nested as on a CPU logger, and no synchronize before the logger closes."""
    from test_timing_cuda import FakeGPU, make

    gpu = FakeGPU()
    log = make(tmp_path, gpu)  # a CUDA logger on fake events, set as the global one
    model = Net()
    with instrument(model, depth=3):
        for _ in range(2):
            run_step(model, log)
    assert gpu.syncs == 0 and gpu.created > 0
    log.close()
    got = log.get_summary()
    for name in ("forward/embed", "forward/blocks/1/norm", "backward/blocks/0", "backward/head"):
        assert name in got, sorted(got)
    assert got["forward/blocks/0"]["calls"] == 2


def test_a_step_on_another_thread_gets_its_own_state() -> None:
    """The hooks keep one state per thread (the handle's thread's without a thread-local):
    a step on a second thread, then one on the handle's thread, are each timed in full."""
    import threading

    model = Net()
    log = memory_logger()
    set_global_timing_logger(log)
    with instrument(model, depth=2) as h:
        t = threading.Thread(target=run_step, args=(model, log))
        t.start()
        t.join()
        assert h.stack() == []  # this thread's frames: none opened here
        run_step(model, log)
    s = log.get_summary()
    for name in ("forward/blocks/1", "backward/blocks/1", "backward/embed", "forward/head"):
        assert s[name]["calls"] == 2, name


def test_mark_step_start_discards_module_regions_timed_before_it() -> None:
    """The hooks' regions wait in a list until step() folds them: mark_step_start() drops
    them with the rest, and the next step has only its own."""
    model = Net()
    log = memory_logger()
    set_global_timing_logger(log)
    with instrument(model, depth=1):
        model(ids()).sum().backward()  # before the loop: discarded
        log.mark_step_start()
        run_step(model, log)
    s = log.get_summary()
    assert s["forward/head"]["calls"] == 1 and s["backward/head"]["calls"] == 1


def test_regions_waiting_for_step_stay_bounded_without_step() -> None:
    """Without step(), the hooks' list of regions is folded past a bound, not kept growing;
    the step that comes counts every call."""
    from stagewatch.timing.probe import MAX_RAW

    model = nn.Sequential(nn.Linear(2, 2))
    log = memory_logger()
    x = torch.randn(1, 2, requires_grad=True)
    with instrument(model, depth=1, logger=log):
        for _ in range(MAX_RAW):
            model(x).sum().backward()
        assert len(log._raw) <= MAX_RAW + 2
        log.step()
    s = log.get_summary()
    assert s["forward/0"]["calls"] == MAX_RAW and s["backward/0"]["calls"] == MAX_RAW
