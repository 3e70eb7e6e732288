"""Model instrumentation with the real timing core: region tree, recompute, no-hooks-off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stagewatch.timing import TimingLogger, set_global_timing_logger, timed
from trainer.models import ModelConfig, build_model, region_names, set_flow_and_deform_trainable
from trainer.models.debug import debug_forward, format_debug
from trainer.models.instrument import hook_count
from trainer.models.presets import TINY, example_inputs, load_model_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(ckpt: bool, use_spike: bool = True) -> ModelConfig:
    cfg = load_model_config(TINY)
    cfg.USE_SPIKE = use_spike
    cfg.VRT.USE_CHECKPOINT_ATTN = cfg.VRT.USE_CHECKPOINT_FFN = ckpt
    return cfg


def memory_logger(**kw: object) -> TimingLogger:
    return TimingLogger(enable_console=False, enable_file=False, enable_jsonl=False, **kw)


def train_step(model, rgb, spikes, log) -> None:
    with timed("forward"):
        out = model(rgb, spikes)
    with timed("backward"):
        out.square().mean().backward()
    log.step(samples=rgb.shape[0])


@pytest.mark.parametrize("ckpt", [False, True])
def test_region_tree_complete_for_one_step(ckpt: bool) -> None:
    cfg = tiny(ckpt)
    model = build_model(cfg)
    rgb, spikes = example_inputs(cfg, 1, 3, 16, 16)
    log = memory_logger()
    set_global_timing_logger(log)
    train_step(model, rgb, spikes, log)
    summary = log.get_summary()
    got = set(summary) - {"forward", "backward"}
    assert got == set(region_names(cfg, checkpointing=ckpt))
    recompute = {n for n in got if n.endswith("/recompute")}
    assert all(n.startswith("backward/vrt/stage") for n in recompute)
    if ckpt:
        assert len(recompute) == 8
        # each block re-runs its attention and its MLP path once: 2 calls per block
        for i, st in enumerate(model.vrt.stages, 1):
            blocks = sum(len(g.blocks) for g in st.groups)
            assert summary[f"backward/vrt/stage{i}/recompute"]["calls"] == 2 * blocks
            assert (
                summary[f"backward/vrt/stage{i}/recompute"]["total"]
                <= summary[f"backward/vrt/stage{i}"]["total"]
            )
    else:
        assert recompute == set()
    # every forward region was entered once (TSA chunks aside), nothing during backward
    for name in got:
        if name.startswith("forward/") and not name.endswith("/chunk"):
            assert summary[name]["calls"] == 1, name
    # children fit inside their parents
    for name in got:
        parent = name.rsplit("/", 1)[0]
        assert summary[name]["total"] <= summary[parent]["total"] * 1.02 + 0.5, name
    stages = sum(summary[f"backward/vrt/stage{i}"]["total"] for i in range(1, 9))
    assert stages <= summary["backward/vrt"]["total"] * 1.02 + 0.5


def test_jsonl_record_holds_the_tree(tmp_path: Path) -> None:
    cfg = tiny(True, use_spike=False)
    model = build_model(cfg)
    rgb, _ = example_inputs(cfg, 1, 2, 16, 16)
    log = TimingLogger(
        log_dir=str(tmp_path), enable_console=False, enable_file=False, run_name="model"
    )
    set_global_timing_logger(log)
    train_step(model, rgb, None, log)
    log.close()
    files = list(tmp_path.glob("*/rank*.jsonl"))
    steps = [json.loads(line) for line in files[0].read_text().splitlines()]
    regions = next(r["regions"] for r in steps if r["kind"] == "step")
    assert set(regions) - {"forward", "backward"} == set(region_names(cfg))
    assert "backward/vrt/stage8/recompute" in regions


def test_frozen_flow_has_no_flow_backward() -> None:
    cfg = tiny(False)
    model = build_model(cfg)
    set_flow_and_deform_trainable(model, False)
    rgb, spikes = example_inputs(cfg, 1, 2, 16, 16)
    log = memory_logger()
    set_global_timing_logger(log)
    train_step(model, rgb, spikes, log)
    got = set(log.get_summary()) - {"forward", "backward"}
    assert got == set(region_names(cfg, checkpointing=False, train_flow=False))
    assert got == set(model.region_tree(checkpointing=False))


@pytest.mark.parametrize("how", ["no logger", "disabled", "closed"])
def test_timing_off_registers_no_hooks(how: str) -> None:
    cfg = tiny(True)
    model = build_model(cfg)
    rgb, spikes = example_inputs(cfg, 1, 2, 16, 16)
    if how == "disabled":
        set_global_timing_logger(memory_logger(enabled=False))
    elif how == "closed":
        log = memory_logger()
        set_global_timing_logger(log)
        model(rgb, spikes)  # instrumented while the logger is open
        assert hook_count(model) > 0
        log.close()
    model(rgb, spikes).mean().backward()
    assert hook_count(model) == 0
    assert all(getattr(m, "recompute_region", None) is None for m in model.modules())


def test_hooks_follow_the_global_logger() -> None:
    cfg = tiny(False, use_spike=False)
    model = build_model(cfg)
    rgb, _ = example_inputs(cfg, 1, 2, 16, 16)
    first = memory_logger()
    set_global_timing_logger(first)
    train_step(model, rgb, None, first)
    n = hook_count(model)
    second = memory_logger()
    set_global_timing_logger(second)
    train_step(model, rgb, None, second)
    assert hook_count(model) == n  # replaced, not added
    assert "backward/vrt/stage8" in second.get_summary()
    set_global_timing_logger(None)
    model(rgb)
    assert hook_count(model) == 0


def test_eval_forward_with_timing_on_then_training_step() -> None:
    cfg = tiny(True)
    model = build_model(cfg)
    rgb, spikes = example_inputs(cfg, 1, 2, 16, 16)
    log = memory_logger()
    set_global_timing_logger(log)
    with torch.no_grad(), timed("eval"):
        model(rgb, spikes)
    train_step(model, rgb, spikes, log)
    summary = log.get_summary()
    assert "eval/vrt/stage8" in summary
    assert not any(n.startswith("backward") and "eval" in n for n in summary)
    assert "backward/vrt/stage8" in summary


def test_debug_forward_rows() -> None:
    cfg = tiny(False)
    model = build_model(cfg)
    rgb, spikes = example_inputs(cfg, 1, 3, 16, 24)
    rows = debug_forward(model, rgb, spikes)
    names = [r.name for r in rows]
    assert names[-1] == "total"
    assert names[:-1] == list(model.region_modules())
    by = {r.name: r for r in rows}
    assert by["vrt/stage8"].shape == "[1, 3, 16, 24, 24]"
    assert by["vrt/stage4"].shape == "[1, 3, 2, 3, 16]"
    assert by["spike_encoder"].shape.startswith("4 × ") is False  # scales differ in size
    assert by["spike_encoder/scale2"].shape == "[1, 16, 3, 4, 6]"
    assert by["spike_tsa/scale0"].blocks == 1
    assert by["total"].shape == "[1, 3, 3, 16, 24]"
    assert all(r.ms >= 0 for r in rows)
    assert sum(by[f"vrt/stage{i}"].ms for i in range(1, 9)) <= by["total"].ms
    text = format_debug(rows)
    assert "stage8" in text and "ms/block" in text and "[1, 3, 3, 16, 24]" in text
    assert hook_count(model) == 0


def test_debug_counts_tsa_chunks() -> None:
    cfg = tiny(False)
    cfg.SPIKE.TSA_CHUNK_TOKENS = 3 * 64  # 64 pixels of 3 frames per chunk
    model = build_model(cfg)
    rgb, spikes = example_inputs(cfg, 1, 3, 16, 16)
    by = {r.name: r for r in debug_forward(model, rgb, spikes)}
    assert by["spike_tsa/scale0"].blocks == 4  # 256 pixels
    assert by["spike_tsa/scale1"].blocks == 1
    assert by["spike_tsa/scale0"].per_block_ms == pytest.approx(by["spike_tsa/scale0"].ms / 4)


def test_unfreezing_flow_brings_its_backward_region_back() -> None:
    """The VRT recipe unfreezes SpyNet after 20k steps: its region must then close again."""
    cfg = tiny(False, use_spike=False)
    model = build_model(cfg)
    rgb, _ = example_inputs(cfg, 1, 2, 16, 16)
    log = memory_logger()
    set_global_timing_logger(log)
    set_flow_and_deform_trainable(model, False)
    train_step(model, rgb, None, log)
    set_flow_and_deform_trainable(model, True)
    train_step(model, rgb, None, log)
    train_step(model, rgb, None, log)
    summary = log.get_summary()
    assert summary["backward/vrt/flow"]["count"] == 2
    assert summary["backward/vrt/flow"]["calls"] == 2
    assert summary["backward/vrt/stage1"]["count"] == 3
