"""The GPU-path fixes (shared/design/GPU-NOTES.md section 1), each proven on CPU to leave the
maths unchanged: padded heads, chunked bias gradient, grouped shift masks, alignment
checkpointing, SpyNet without host syncs, no RNG stash in checkpoints, regional compile."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _attention_ref import softmax_attn as _softmax_attn

from stagewatch.timing import TimingLogger, set_global_timing_logger, timed
from trainer.models import attention as A
from trainer.models import build_model, compile_regions, region_names, tmsa, vrt
from trainer.models.config import VRTConfig
from trainer.models.presets import TINY, example_inputs, load_model_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _grads(out, tensors):
    g = torch.randn_like(out, generator=torch.Generator().manual_seed(1))
    return torch.autograd.grad(out, tensors, g)


# ------------------------------------------------------------------ #1 padded heads


def test_padded_heads_equal_the_unpadded_math_path(monkeypatch) -> None:
    """d = 20 zero-padded to 24 with scale 20**-0.5: forward and every gradient (bias too)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(6, 3, 40, 20, dtype=torch.float64, requires_grad=True) for _ in range(3))
    bias = (0.5 * torch.randn(1, 3, 40, 40, dtype=torch.float64)).requires_grad_()
    seen: list[tuple[int, float | None]] = []
    real = F.scaled_dot_product_attention

    def spy(q_, k_, v_, attn_mask=None, scale=None, **kw):
        seen.append((q_.shape[-1], scale))
        return real(q_, k_, v_, attn_mask=attn_mask, scale=scale, **kw)

    monkeypatch.setattr(A.F, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(A, "PAD_HEADS", True)
    got = A._attend(q, k, v, bias)
    assert seen == [(24, 20**-0.5)] and got.shape == (6, 3, 40, 20)
    ref = _softmax_attn(q, k, v, bias)
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)
    for a, b in zip(_grads(got, (q, k, v, bias)), _grads(ref, (q, k, v, bias)), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    # automatic choice: only CUDA 16-bit tensors with a head size off the multiple of 8
    monkeypatch.setattr(A, "PAD_HEADS", None)
    assert not A._pad_heads(q) and not A._pad_heads(q.float().bfloat16())
    assert not A._pad_heads(torch.zeros(1, 1, 4, 24))


def test_stage8_block_with_padded_heads_equals_unpadded(monkeypatch) -> None:
    """A whole shifted TMSA block at head size 20, fp32: padded == unpadded (fwd + grads)."""
    torch.manual_seed(0)
    blk = tmsa.TMSA(40, 2, (2, 4, 4), (1, 2, 2), False, 2.0, True, 0.0, False, False)
    x = torch.randn(1, 4, 8, 8, 40, requires_grad=True)
    params = [x, *blk.parameters()]

    def run(pad: bool):
        monkeypatch.setattr(A, "PAD_HEADS", pad)
        out = blk(x)
        return out, _grads(out, params)

    o1, g1 = run(False)
    o2, g2 = run(True)
    torch.testing.assert_close(o2, o1, atol=1e-5, rtol=1e-5)
    for a, b in zip(g2, g1, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ #6 chunked bias gradient


def test_bias_gradient_chunks_equal_one_call(monkeypatch) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 10, 2, 16, 4, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, 2, 16, 16, requires_grad=True)
    calls: list[int] = []
    real = A._attend

    def count(q_, *a):
        calls.append(q_.shape[0])
        return real(q_, *a)

    monkeypatch.setattr(A, "_attend", count)
    full = A._sdpa(q, k, v, bias)
    g_full = _grads(full, (q, k, v, bias))
    assert calls == [10]
    calls.clear()
    monkeypatch.setattr(A, "BIAS_GRAD_CHUNK_BYTES", 3 * 2 * 16 * 16 * 4)  # 3 windows
    part = A._sdpa(q, k, v, bias)
    assert calls == [3, 3, 3, 1]
    torch.testing.assert_close(part, full)
    for a, b in zip(_grads(part, (q, k, v, bias)), g_full, strict=True):
        torch.testing.assert_close(a, b)
    calls.clear()
    A._sdpa(q, k, v, bias.detach())  # a bias without a gradient is never chunked
    assert calls == [10]


# ------------------------------------------------------------------ #7 grouped shift masks


def _dense_attn_path(blk: tmsa.TMSA, x: torch.Tensor) -> torch.Tensor:
    """The block's shifted attention path written with one dense per-window mask."""
    b, d, h, w, c = x.shape
    win, shift, att = blk.window, blk.shift, blk.attn
    y = torch.roll(blk.norm1(x), shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    yw = A._partition(y, win)
    nw, n = yw.shape[1:3]
    q, k, v = att._qkv(att.qkv_self, yw)
    bias = att.relative_position_bias_table[att.rel_index].view(n, n, -1).permute(2, 0, 1)
    mask = A._shift_mask((d, h, w), win, shift, "cpu")
    out = _softmax_attn(q, k, v, (bias[None] + mask[:, None])[None])
    out = att.proj(out.transpose(2, 3).reshape(b, nw, n, c))
    return torch.roll(A._unpartition(out, win, (d, h, w)), shifts=shift, dims=(1, 2, 3))


@pytest.mark.parametrize("b", [1, 2])
def test_grouped_shifted_block_equals_dense_mask_maths(b: int) -> None:
    torch.manual_seed(0)
    blk = tmsa.TMSA(8, 2, (2, 4, 4), (1, 2, 2), False, 2.0, True, 0.0, False, False)
    x = torch.randn(b, 4, 8, 12, 8, requires_grad=True)
    params = [x, *blk.norm1.parameters(), *blk.attn.parameters()]
    got = blk._attn_path(x)
    ref = _dense_attn_path(blk, x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for a, r in zip(_grads(got, params), _grads(ref, params), strict=True):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-4)


def test_masks_and_relative_index_are_built_at_construction() -> None:
    blk = tmsa.TMSA(8, 2, (2, 4, 4), (1, 2, 2), True, 2.0, True, 0.0, False, False)
    assert blk.shift_masks.shape == (7, 32, 32)
    assert torch.equal(blk.attn.rel_index, A._rel_index((2, 4, 4), (2, 4, 4), "cpu"))
    assert "shift_masks" not in blk.state_dict() and "attn.rel_index" not in blk.state_dict()
    with torch.device("meta"):  # built on the construction device, never cached there
        meta = tmsa.TMSA(8, 2, (2, 4, 4), (1, 2, 2), True, 2.0, True, 0.0, False, False)
    assert meta.shift_masks.is_meta and meta.attn.rel_index.is_meta
    assert not A._rel_index((2, 4, 4), (2, 4, 4), "cpu").is_meta


# ------------------------------------------------------------------ #8 alignment checkpointing


def _tiny(**vrt: object):
    cfg = load_model_config(TINY)
    for key, val in vrt.items():
        setattr(cfg.VRT, key, val)
    return cfg


def test_alignment_checkpoint_keeps_outputs_and_gradients() -> None:
    results = []
    for on in (False, True):
        cfg = _tiny(USE_CHECKPOINT_ALIGN=on, USE_CHECKPOINT_ATTN=False, USE_CHECKPOINT_FFN=False)
        torch.manual_seed(0)
        model = build_model(cfg)
        rgb, spikes = example_inputs(cfg, 1, 3, 16, 16)
        out = model(rgb, spikes)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (o1, g1), (o2, g2) = results
    torch.testing.assert_close(o2, o1)
    assert g1.keys() == g2.keys()
    for name in g1:
        if g1[name] is None:
            assert g2[name] is None, name
        else:
            torch.testing.assert_close(g2[name], g1[name], atol=1e-6, rtol=1e-5, msg=name)


def test_alignment_recompute_is_charged_to_backward() -> None:
    cfg = _tiny(USE_CHECKPOINT_ALIGN=True, USE_CHECKPOINT_ATTN=False, USE_CHECKPOINT_FFN=False)
    model = build_model(cfg)
    rgb, spikes = example_inputs(cfg, 1, 3, 16, 16)
    log = TimingLogger(enable_console=False, enable_file=False, enable_jsonl=False)
    set_global_timing_logger(log)
    with timed("forward"):
        out = model(rgb, spikes)
    with timed("backward"):
        out.square().mean().backward()
    log.step(samples=1)
    summary = log.get_summary()
    assert set(summary) - {"forward", "backward"} == set(region_names(cfg))
    for i in range(1, 8):  # one re-run alignment per stage, inside its backward region
        rec = summary[f"backward/vrt/stage{i}/recompute"]
        assert rec["calls"] == 1 and rec["total"] <= summary[f"backward/vrt/stage{i}"]["total"]
        assert summary[f"forward/vrt/stage{i}"]["calls"] == 1
    assert "backward/vrt/stage8/recompute" not in summary


# ------------------------------------------------------------------ #9, #14


def test_spynet_scales_flows_without_a_tensor_from_a_list(monkeypatch) -> None:
    from trainer.models.spynet import SpyNet

    torch.manual_seed(0)
    net = SpyNet()
    for level in net.basic_module:  # non-zero flows
        torch.nn.init.normal_(level.basic_module[-1].weight, std=0.01)
    a, z = torch.rand(1, 3, 40, 24), torch.rand(1, 3, 40, 24)

    def banned(*a, **k):
        raise AssertionError("new_tensor builds a device tensor from a host list (a sync)")

    monkeypatch.setattr(torch.Tensor, "new_tensor", banned)
    flows = net(a, z)
    monkeypatch.undo()
    assert [tuple(f.shape) for f in flows] == [(1, 2, 40 >> s, 24 >> s) for s in range(4)]
    # full scale: the 48x32 pyramid's flow resized to 40x24, dx times 24/32, dy times 40/48
    ref = net(a, z)[0]
    torch.testing.assert_close(flows[0], ref)
    assert flows[0].abs().max() > 0


def test_checkpoints_do_not_stash_rng_state(monkeypatch) -> None:
    seen: list[tuple[str, dict[str, object]]] = []

    def spying(mod):
        real = mod.checkpoint

        def spy(fn, *args, **kw):
            seen.append((mod.__name__, kw))
            return real(fn, *args, **kw)

        return spy

    for mod in (tmsa, vrt):  # the TMSA paths' checkpoints, and the alignment's
        monkeypatch.setattr(mod, "checkpoint", spying(mod))
    cfg = _tiny(USE_CHECKPOINT_ALIGN=True, USE_CHECKPOINT_ATTN=True, USE_CHECKPOINT_FFN=True)
    model = build_model(cfg)
    rgb, spikes = example_inputs(cfg, 1, 2, 16, 16)
    model(rgb, spikes).mean().backward()
    assert {name for name, _ in seen} == {tmsa.__name__, vrt.__name__}
    assert all(kw == {"use_reentrant": False, "preserve_rng_state": False} for _, kw in seen)


# ------------------------------------------------------------------ regional compile


def test_regional_compile_runs_and_matches() -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    blk = tmsa.TMSA(8, 2, (2, 4, 4), (1, 2, 2), True, 2.0, True, 0.0, True, True)
    ref_blk = copy.deepcopy(blk)
    compile_regions(blk, backend="aot_eager", dynamic=False)
    assert blk._attn_compiled is not None and blk._ffn_compiled is not None
    x = torch.randn(1, 4, 8, 8, 8, requires_grad=True)
    got, ref = blk(x), ref_blk(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    g1 = _grads(got, [x, *blk.parameters()])
    g2 = _grads(ref, [x, *ref_blk.parameters()])
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert blk.state_dict().keys() == ref_blk.state_dict().keys()


def test_compile_config_key_builds_a_compiled_model_with_timing_outside() -> None:
    torch._dynamo.reset()
    cfg = _tiny()
    cfg.COMPILE, cfg.COMPILE_BACKEND = True, "eager"
    model = build_model(cfg)
    blocks = [m for m in model.modules() if isinstance(m, tmsa.TMSA)]
    assert blocks and all(
        b._attn_compiled is not None and b._ffn_compiled is not None for b in blocks
    )
    # a forward + backward with stage 8 compiled (the cheap part to trace on CPU): the
    # timing regions are the same as without compile
    cfg.COMPILE = False
    model = build_model(cfg)
    assert compile_regions(model.vrt.stages[7], backend="eager") > 0
    rgb, spikes = example_inputs(cfg, 1, 2, 16, 16)
    log = TimingLogger(enable_console=False, enable_file=False, enable_jsonl=False)
    set_global_timing_logger(log)
    with timed("forward"):
        out = model(rgb, spikes)
    with timed("backward"):
        out.square().mean().backward()
    log.step(samples=1)
    assert set(log.get_summary()) - {"forward", "backward"} == set(region_names(cfg))


def test_new_config_keys_default_off() -> None:
    assert VRTConfig().USE_CHECKPOINT_ALIGN is False
    cfg = load_model_config(TINY)
    assert cfg.COMPILE is False and cfg.COMPILE_BACKEND == "inductor"


def test_regional_compile_never_traces_the_position_encoding_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # issue 20: Dynamo warned of "potential silent incorrectness" at the lru_cache of
    # _sine_cached under regional compile; the full window's encoding is now a buffer built
    # at construction, a smaller window's is computed in the traced code
    warned: list[str] = []
    monkeypatch.setattr(torch._dynamo.utils, "warn_once", lambda msg, *a, **k: warned.append(msg))
    torch._dynamo.reset()
    torch.manual_seed(0)
    blk = tmsa.TMSA(8, 2, (2, 4, 4), (1, 2, 2), True, 2.0, True, 0.0, False, False)
    ref_blk = copy.deepcopy(blk)
    compile_regions(blk, backend="eager", dynamic=False)
    for shape in ((1, 2, 8, 8, 8), (1, 2, 2, 2, 8)):  # a full window, then a smaller clip
        x = torch.randn(*shape)
        torch.testing.assert_close(blk(x), ref_blk(x), atol=1e-6, rtol=1e-6)
    assert not [m for m in warned if "lru_cache" in m], warned


def test_the_position_encoding_buffer_keeps_the_numerics() -> None:
    torch.manual_seed(0)
    att = A.WindowAttention(8, (2, 4, 4), 2, True, True)
    assert torch.equal(att.pe, A._sine_cached(4, 4, 8, "cpu"))  # the same values as before
    assert "pe" not in att.state_dict()  # not a weight: old checkpoints load unchanged
    x = torch.randn(1, 3, 32, 8)
    got = att(x, (2, 4, 4), None)
    old = copy.deepcopy(att)
    old.pe = None  # the cached path the model used before
    assert torch.equal(got, old(x, (2, 4, 4), None))
    with torch.device("meta"):
        assert A.WindowAttention(8, (2, 4, 4), 2, True, True).pe.is_meta
