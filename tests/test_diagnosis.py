"""The advice rules: each on synthetic runs written as real JSONL that must trigger it, and on
runs that must not; plus the memory trend and the facts built from a snapshot."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stagewatch.records import RunEnd, RunStart, Step, encode, rank_file_name
from tui.diagnosis.advice import advice_for_run
from tui.diagnosis.facts import RunFacts, facts_from_snapshot
from tui.diagnosis.rules import diagnose
from tui.diagnosis.thresholds import DEFAULT_THRESHOLDS, Thresholds
from tui.model.rankstats import MemTrend
from tui.model.units import GiB
from tui.report.summary import open_run

MiB = 1024**2

# The user's step (BRIEF): forward ~1855 ms, backward ~4500 ms with checkpoint recompute.
USER_STEP = {
    "data": 0.1,
    "h2d": 2.0,
    "forward": 1800.0,
    "forward/vrt": 1750.0,
    "loss": 50.0,
    "backward": 4500.0,
    "allreduce": 150.0,
    "optimizer": 75.0,
}


def cfg(
    *,
    ckpt: bool = True,
    optim: str = "adamw",
    batch: int = 1,
    workers: int = 2,
    pin: bool = True,
    accum: int = 1,
    params: int | None = None,
) -> dict[str, Any]:
    c: dict[str, Any] = {
        "DATA": {"TYPE": "synthetic", "SYNTHETIC": {"CACHE": False}},
        "MODEL": {"VRT": {"USE_CHECKPOINT_ATTN": ckpt, "USE_CHECKPOINT_FFN": ckpt}},
        "DATALOADER": {"NUM_WORKERS": workers, "PIN_MEMORY": pin},
        "TRAIN": {
            "BATCH_SIZE": batch,
            "GRADIENT_ACCUMULATION_STEPS": accum,
            "OPTIM": {"TYPE": optim},
        },
    }
    if params is not None:
        c["num_params"] = params
    return c


def write_run(
    root: Path,
    name: str = "run",
    *,
    config: dict[str, Any] | None = None,
    steps: int = 40,
    ranks: int = 1,
    regions: dict[str, float] | None = None,
    mem_total: int | None = 48 * GiB,
    memory: Callable[[int, int], dict[str, int] | None] | None = None,
    slow: dict[int, float] | None = None,
    device: str = "cuda",
    seed: int = 0,
) -> Path:
    """A run folder with real records: ``regions`` ms per step (±2% jitter), per-rank speed."""
    run = root / name
    run.mkdir(parents=True)
    regions = regions or USER_STEP
    if memory is None:

        def memory(step: int, rank: int) -> dict[str, int]:
            return {"allocated": 6 * GiB, "reserved": 22 * GiB, "peak": 20 * GiB}

    rng = random.Random(seed)
    for r in range(ranks):
        t = 1_764_160_000.0
        lines = [
            encode(
                RunStart(
                    run_id=name,
                    rank=r,
                    world_size=ranks,
                    time=t,
                    host=f"node{r}",
                    pid=1,
                    device=f"{device}:{r}" if device == "cuda" else device,
                    gpu_name="NVIDIA H200" if device == "cuda" else None,
                    config=config if config is not None else cfg(),
                    total_steps=steps,
                    samples_per_step=1,
                    device_memory_total=mem_total,
                )
            )
        ]
        factor = (slow or {}).get(r, 1.0)
        for s in range(1, steps + 1):
            regs = {
                k: (round(v * factor * (1 + rng.uniform(-0.02, 0.02)), 4), 1)
                for k, v in regions.items()
            }
            wall = sum(v for k, (v, _) in regs.items() if "/" not in k) * 1.02
            t += wall / 1000
            lines.append(
                encode(
                    Step(
                        step=s,
                        time=t,
                        wall_ms=wall,
                        regions=regs,
                        samples=1,
                        memory=memory(s, r),
                        scalars={"loss": 0.1},
                    )
                )
            )
        lines.append(encode(RunEnd(time=t + 1, status="completed", steps=steps)))
        (run / rank_file_name(r)).write_text("".join(lines))
    return run


def rules_of(run: Path, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    snap = open_run(run)
    return {a.rule: a for a in advice_for_run(snap, thresholds=thresholds)}


# --------------------------------------------------------------------------- checkpointing


def test_checkpointing_off_triggers_on_the_users_step(tmp_path: Path) -> None:
    a = rules_of(write_run(tmp_path))["checkpointing_off"]
    assert a.severity == "suggest"
    assert a.evidence["ratio"] == pytest.approx(4500 / 1800, rel=0.03)
    assert a.evidence["expected_saving_ms"] == pytest.approx(4500 - 2 * 1800, rel=0.1)
    assert a.evidence["headroom"] == pytest.approx(28 / 48, rel=0.01)
    assert (
        "MODEL.VRT.USE_CHECKPOINT_ATTN=false" in a.action and "USE_CHECKPOINT_FFN=false" in a.action
    )


@pytest.mark.parametrize(
    "why, kwargs",
    [
        ("checkpointing already off", {"config": cfg(ckpt=False)}),
        ("backward only 2x forward", {"regions": {**USER_STEP, "backward": 3600.0}}),
        ("no memory headroom", {"memory": lambda s, r: {"allocated": 30 * GiB, "peak": 44 * GiB}}),
        (
            "device total unknown (CPU)",
            {"mem_total": None, "device": "cpu", "memory": lambda s, r: {"rss": 3 * GiB}},
        ),
        ("config does not say", {"config": {}}),
    ],
)
def test_checkpointing_off_stays_quiet(tmp_path: Path, why: str, kwargs: dict[str, Any]) -> None:
    assert "checkpointing_off" not in rules_of(write_run(tmp_path, **kwargs)), why


def test_only_the_checkpointed_part_is_named(tmp_path: Path) -> None:
    c = cfg()
    c["MODEL"]["VRT"]["USE_CHECKPOINT_FFN"] = False
    a = rules_of(write_run(tmp_path, config=c))["checkpointing_off"]
    assert "USE_CHECKPOINT_ATTN=false" in a.action and "FFN" not in a.action


# --------------------------------------------------------------------------- 8-bit AdamW


def test_adamw8bit_from_memory_figures(tmp_path: Path) -> None:
    mem = lambda s, r: {"allocated": 12 * GiB, "peak": 24 * GiB}  # noqa: E731
    a = rules_of(write_run(tmp_path, memory=mem))["adamw_8bit"]
    assert a.evidence["state_bytes"] == pytest.approx(8 * GiB)
    assert a.evidence["share"] == pytest.approx(1 / 3)
    assert a.evidence["saved_bytes"] == pytest.approx(6 * GiB)
    assert "allocated at step end" in a.evidence["estimated_from"]
    assert "adamw8bit" in a.action


def test_adamw8bit_from_parameter_count(tmp_path: Path) -> None:
    run = write_run(
        tmp_path,
        config=cfg(params=500_000_000),
        memory=lambda s, r: {"allocated": 9 * GiB, "peak": 12 * GiB},
    )
    a = rules_of(run)["adamw_8bit"]
    assert a.evidence["state_bytes"] == 8 * 500_000_000
    assert "parameter count" in a.evidence["estimated_from"]


@pytest.mark.parametrize(
    "why, kwargs",
    [
        (
            "already 8-bit",
            {
                "config": cfg(optim="adamw8bit"),
                "memory": lambda s, r: {"allocated": 12 * GiB, "peak": 24 * GiB},
            },
        ),
        ("state is small", {"memory": lambda s, r: {"allocated": 1 * GiB, "peak": 30 * GiB}}),
        (
            "host memory only, no parameter count",
            {"mem_total": None, "device": "cpu", "memory": lambda s, r: {"rss": 8 * GiB}},
        ),
    ],
)
def test_adamw8bit_stays_quiet(tmp_path: Path, why: str, kwargs: dict[str, Any]) -> None:
    assert "adamw_8bit" not in rules_of(write_run(tmp_path, **kwargs)), why


# --------------------------------------------------------------------------- larger batch


def test_larger_batch_with_headroom(tmp_path: Path) -> None:
    mem = lambda s, r: {"allocated": 6 * GiB, "peak": 16 * GiB}  # noqa: E731 - 10 GiB of activations
    a = rules_of(write_run(tmp_path, memory=mem))["larger_batch"]
    assert a.evidence["activation_bytes_per_sample"] == 10 * GiB
    assert a.evidence["estimated_max_batch"] == 1 + int(32 * GiB * 0.9 // (10 * GiB))
    assert "TRAIN.BATCH_SIZE=2 or 3" in a.action


@pytest.mark.parametrize(
    "why, kwargs",
    [
        ("batch already 2", {"config": cfg(batch=2)}),
        ("little headroom", {"memory": lambda s, r: {"allocated": 6 * GiB, "peak": 40 * GiB}}),
        (
            "one more sample would not fit",
            {"memory": lambda s, r: {"allocated": 1 * GiB, "peak": 31 * GiB}},
        ),
        ("CPU run", {"mem_total": None, "device": "cpu", "memory": lambda s, r: {"rss": GiB}}),
    ],
)
def test_larger_batch_stays_quiet(tmp_path: Path, why: str, kwargs: dict[str, Any]) -> None:
    assert "larger_batch" not in rules_of(write_run(tmp_path, **kwargs)), why


# --------------------------------------------------------------------------- data, allreduce


def test_data_wait(tmp_path: Path) -> None:
    run = write_run(
        tmp_path, config=cfg(workers=0, pin=False), regions={**USER_STEP, "data": 1500.0}
    )
    a = rules_of(run)["data_wait"]
    assert 0.15 < a.evidence["share"] < 0.22
    assert "NUM_WORKERS" in a.action and "PIN_MEMORY=true" in a.action
    assert "NUM_WORKERS=0" in a.because


def test_data_wait_quiet_below_threshold(tmp_path: Path) -> None:
    assert "data_wait" not in rules_of(write_run(tmp_path, regions={**USER_STEP, "data": 300.0}))


def test_exposed_h2d_copy_names_pinned_memory_and_non_blocking(tmp_path: Path) -> None:
    regions = {**USER_STEP, "data/wait": 100.0, "data/h2d": 700.0}
    a = rules_of(write_run(tmp_path, regions=regions))["h2d_copy"]
    assert a.evidence["region"] == "data/h2d" and 0.07 < a.evidence["share"] < 0.11
    assert "pin_memory=True" in a.action and "non_blocking=True" in a.action
    assert "data_wait" not in rules_of(write_run(tmp_path / "q", regions=regions))


def test_h2d_copy_quiet_below_threshold(tmp_path: Path) -> None:
    regions = {**USER_STEP, "data/wait": 100.0, "data/h2d": 100.0}
    assert "h2d_copy" not in rules_of(write_run(tmp_path, regions=regions))


def test_input_rules_find_phases_a_loop_nests_under_its_own_region(tmp_path: Path) -> None:
    # a loop timing everything under ``train`` (train/data/wait, train/data/h2d): the rules
    # read the nested phases and name the regions as they are in the log
    nested = {f"train/{k}": v for k, v in USER_STEP.items() if "/" not in k and k != "data"}
    nested.update({"train": 9000.0, "train/data": 2300.0})
    wait = {**nested, "train/data/wait": 1500.0, "train/data/h2d": 800.0}
    got = rules_of(write_run(tmp_path, config=cfg(workers=0, pin=False), regions=wait))
    d, h = got["data_wait"], got["h2d_copy"]
    assert d.evidence["region"] == "train/data/wait" and 0.15 < d.evidence["share"] < 0.2
    assert d.because.startswith("train/data/wait ")
    assert h.evidence["region"] == "train/data/h2d" and "pin_memory=True" in h.action
    # the copy is not input: without a wait of its own the data phase's copy says only h2d
    copy = {**nested, "train/data": 850.0, "train/data/wait": 50.0, "train/data/h2d": 800.0}
    got = rules_of(write_run(tmp_path / "c", regions=copy))
    assert "h2d_copy" in got and "data_wait" not in got


def test_exposed_allreduce(tmp_path: Path) -> None:
    run = write_run(tmp_path, ranks=3, regions={**USER_STEP, "allreduce": 1200.0})
    a = rules_of(run)["allreduce"]
    assert a.evidence["world_size"] == 3 and a.evidence["share"] > 0.1
    assert "GRADIENT_ACCUMULATION_STEPS" in a.action and "bucket" in a.action


@pytest.mark.parametrize("ranks, ms", [(3, 150.0), (1, 1200.0)])
def test_allreduce_quiet(tmp_path: Path, ranks: int, ms: float) -> None:
    assert "allreduce" not in rules_of(
        write_run(tmp_path, ranks=ranks, regions={**USER_STEP, "allreduce": ms})
    )


# --------------------------------------------------------------------------- straggler


def test_straggler_named_with_figures(tmp_path: Path) -> None:
    run = write_run(tmp_path, ranks=3, slow={2: 1.25})
    a = rules_of(run)["straggler"]
    assert a.severity == "warn" and a.evidence["rank"] == 2 and a.evidence["host"] == "node2"
    assert a.evidence["slowest_steps"] == a.evidence["compared_steps"] == 40
    assert a.evidence["excess_share"] == pytest.approx(0.25, abs=0.03)
    assert "rank 2 on node2" in a.title


@pytest.mark.parametrize("slow", [None, {1: 1.02}])
def test_straggler_quiet(tmp_path: Path, slow: dict[int, float] | None) -> None:
    assert "straggler" not in rules_of(write_run(tmp_path, ranks=3, slow=slow))


# --------------------------------------------------------------------------- memory


def test_memory_near_limit(tmp_path: Path) -> None:
    a = rules_of(write_run(tmp_path, memory=lambda s, r: {"allocated": 20 * GiB, "peak": 46 * GiB}))
    assert a["memory_near_limit"].evidence["fraction"] == pytest.approx(46 / 48)
    assert "checkpointing_off" not in a and "larger_batch" not in a


def test_memory_near_limit_quiet(tmp_path: Path) -> None:
    assert "memory_near_limit" not in rules_of(write_run(tmp_path))
    cpu = write_run(
        tmp_path, "cpu", mem_total=None, device="cpu", memory=lambda s, r: {"rss": 60 * GiB}
    )
    assert "memory_near_limit" not in rules_of(cpu)


def test_memory_creep(tmp_path: Path) -> None:
    def leak(s: int, r: int) -> dict[str, int]:
        return {"allocated": 10 * GiB + s * 20 * MiB, "peak": 20 * GiB + s * 20 * MiB}

    a = rules_of(write_run(tmp_path, steps=200, memory=leak))["memory_creep"]
    assert a.evidence["bytes_per_step"] == pytest.approx(20 * MiB, rel=1e-6)
    assert a.evidence["growth"] > 2 * GiB
    left = 48 * GiB - (20 * GiB + 200 * 20 * MiB)
    assert a.evidence["steps_until_full"] == pytest.approx(left / (20 * MiB), rel=1e-3)


@pytest.mark.parametrize(
    "why, memory",
    [
        (
            "flat with noise",
            lambda s, r: {"allocated": 10 * GiB + (s * 7919 % 13) * MiB, "peak": 20 * GiB},
        ),
        (
            "warm-up jump then flat",
            lambda s, r: {"allocated": (2 if s < 3 else 10) * GiB, "peak": 20 * GiB},
        ),
        ("tiny growth", lambda s, r: {"allocated": 10 * GiB + s * 64 * 1024, "peak": 20 * GiB}),
        ("falling", lambda s, r: {"allocated": 10 * GiB - s * 20 * MiB, "peak": 20 * GiB}),
    ],
)
def test_memory_creep_quiet(
    tmp_path: Path, why: str, memory: Callable[[int, int], dict[str, int]]
) -> None:
    assert "memory_creep" not in rules_of(write_run(tmp_path, steps=200, memory=memory)), why


def test_memory_creep_needs_enough_steps(tmp_path: Path) -> None:
    leak = lambda s, r: {"allocated": 10 * GiB + s * 100 * MiB, "peak": 20 * GiB}  # noqa: E731
    assert "memory_creep" not in rules_of(write_run(tmp_path, steps=30, memory=leak))


def test_memory_creep_on_cpu_rss(tmp_path: Path) -> None:
    leak = lambda s, r: {"rss": GiB + s * 5 * MiB}  # noqa: E731
    run = write_run(tmp_path, steps=120, mem_total=None, device="cpu", memory=leak)
    a = rules_of(run)["memory_creep"]
    assert "steps_until_full" not in a.evidence


def test_memtrend_bounded_and_exact() -> None:
    tr = MemTrend(window=10, skip=2)
    for s in range(1, 10_001):
        tr.add(s, 1000.0 + 3.0 * s)
    f = tr.facts()
    assert f is not None and f.samples == 9998 and f.first_step == 3 and f.last_step == 10_000
    assert f.slope == pytest.approx(3.0)
    assert f.early_mean == pytest.approx(1000 + 3 * 7.5)
    assert f.recent_mean == pytest.approx(1000 + 3 * 9995.5)
    assert len(tr._early) == len(tr._ring) == 10
    tr.add(10_001, math.nan)
    tr.add(10_002, None)
    assert tr.facts().samples == 9998  # type: ignore[union-attr]


# --------------------------------------------------------------------------- what dominates


def test_dominant_and_sorting(tmp_path: Path) -> None:
    run = write_run(
        tmp_path,
        ranks=2,
        slow={1: 1.3},
        memory=lambda s, r: {"allocated": 20 * GiB, "peak": 46 * GiB},
    )
    advice = advice_for_run(open_run(run))
    sev = [a.severity for a in advice]
    assert sev == sorted(sev, key=["warn", "suggest", "info"].index)
    dom = next(a for a in advice if a.rule == "dominant")
    assert dom.evidence["region"] == "backward" and dom.evidence["share"] > 0.6


def test_unaccounted(tmp_path: Path) -> None:
    regions = {"forward": 100.0, "backward": 200.0}
    run = write_run(tmp_path, regions=regions, config={})
    assert "unaccounted" not in rules_of(run)
    # the same step with 40% of the wall outside any region
    facts = RunFacts(
        steps=20,
        step_ms=500.0,
        region_ms={"forward": 100.0, "backward": 200.0},
        region_share={"forward": 0.2, "backward": 0.4},
        unaccounted_share=0.4,
    )
    assert "unaccounted" in {a.rule for a in diagnose(facts)}


def test_quiet_run_gives_only_information(tmp_path: Path) -> None:
    regions = {"data": 1.0, "forward": 300.0, "loss": 5.0, "backward": 600.0, "optimizer": 20.0}
    run = write_run(
        tmp_path,
        regions=regions,
        config=cfg(ckpt=False, batch=4, optim="adamw8bit"),
        memory=lambda s, r: {"allocated": 30 * GiB, "peak": 40 * GiB},
    )
    assert {a.severity for a in advice_for_run(open_run(run))} <= {"info"}


def test_no_steps_no_advice_and_bad_facts_never_raise(tmp_path: Path) -> None:
    run = write_run(tmp_path, steps=0)
    assert [a.rule for a in advice_for_run(open_run(run))] == []
    weird = RunFacts(
        steps=10,
        step_ms=math.nan,
        region_ms={"forward": 0.0, "backward": math.nan},
        region_share={"data": math.nan},
        mem_peak=0,
        mem_total=0,
        checkpoint_attn=True,
        optimizer="adamw",
        batch_size=1,
        straggler=3,
        world_size=4,
    )
    assert diagnose(weird) == []


def test_thresholds_are_honoured(tmp_path: Path) -> None:
    run = write_run(tmp_path, regions={**USER_STEP, "data": 300.0})
    assert "data_wait" not in rules_of(run)
    assert "data_wait" in rules_of(run, Thresholds(data_share=0.03))


def test_facts_and_json(tmp_path: Path) -> None:
    run = write_run(tmp_path, config=cfg(workers=3))
    snap = open_run(run)
    assert snap.config is not None and snap.config["DATALOADER"]["NUM_WORKERS"] == 3
    f = facts_from_snapshot(snap)
    assert f.num_workers == 3 and f.checkpointing and f.optimizer == "adamw" and f.batch_size == 1
    assert f.mem_allocated == 6 * GiB and f.mem_total == 48 * GiB
    assert f.region_ms["backward"] == pytest.approx(4500, rel=0.02)
    for a in diagnose(f):
        json.dumps(a.as_dict(), allow_nan=False)
        assert a.line().startswith(a.title)


def test_larger_batch_keeps_the_effective_batch_with_accumulation(tmp_path: Path) -> None:
    mem = lambda s, r: {"allocated": 6 * GiB, "peak": 16 * GiB}  # noqa: E731
    a = rules_of(write_run(tmp_path, config=cfg(accum=6), memory=mem))["larger_batch"]
    assert "GRADIENT_ACCUMULATION_STEPS (now 6)" in a.action


def test_memtrend_batches_equal_single_adds() -> None:
    rng = random.Random(5)
    steps = list(range(1, 301))
    mems: list[dict[str, int] | None] = []
    for s in steps:
        r = rng.random()
        mems.append(
            None
            if r < 0.1
            else {"rss": 10**9 + 3000 * s + rng.randint(0, 10**6)}
            if r < 0.3
            else {"allocated": 5 * 10**9 + 7000 * s, "peak": 1}
        )
    one = MemTrend(window=7, skip=3)
    for s, m in zip(steps, mems, strict=True):
        if m:
            one.add(s, m.get("allocated", m.get("rss")))
    many = MemTrend(window=7, skip=3)
    i = 0
    for size in (1, 2, 5, 40, 3, 100, 149):
        many.add_batch(steps[i : i + size], mems[i : i + size])
        i += size
    a, b = one.facts(), many.facts()
    assert a is not None and b is not None
    assert (a.samples, a.first_step, a.last_step) == (b.samples, b.first_step, b.last_step)
    assert b.early_mean == pytest.approx(a.early_mean) and b.recent_mean == pytest.approx(
        a.recent_mean
    )
    assert b.slope == pytest.approx(a.slope, rel=1e-9)


# --------------------------------------------------------------------------- wired into the monitor


def test_monitor_carries_trend_and_config(tmp_path: Path) -> None:
    """The aggregation keeps the memory trend and config: no second pass over the files."""

    def leak(s: int, r: int) -> dict[str, int]:
        return {"allocated": 10 * GiB + s * 20 * MiB, "peak": 20 * GiB}

    run = write_run(tmp_path, steps=120, ranks=2, memory=leak)
    snap = open_run(run)
    assert snap.config == cfg()
    assert snap.mem_trend is not None and snap.mem_trend.slope == pytest.approx(20 * MiB)
    assert "memory_creep" in {a.rule for a in advice_for_run(snap)}
    assert any(line.startswith("⚠ memory grows") for line in snap.advice)  # as the screen shows


def test_full_snapshots_carry_the_advice_of_both_spans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source judges the run (off the screen's thread); a failing rule set leaves the
    snapshot whole, without advice."""
    import tui.diagnosis.advice as advice
    from tui.source.reader import RunSource

    run = write_run(tmp_path, ranks=2, slow={1: 1.3}, regions={**USER_STEP, "data": 900.0})
    src = RunSource(run, window=10, use_index=False).load()
    snap = src.snapshot()
    assert snap.advice == tuple(advice.advice_for(snap))
    assert snap.advice_window == tuple(advice.advice_for(snap, window=True))
    assert snap.advice and snap.advice[0].startswith("⚠ rank 1")
    assert src.snapshot(light=True).advice == ()  # light snapshots are not judged

    def broken(*a: Any, **k: Any) -> Any:
        raise ZeroDivisionError

    monkeypatch.setattr(advice, "advice_for_run", broken)
    bare = src.snapshot()
    assert bare.advice == bare.advice_window == () and bare.regions == snap.regions


def test_summary_text_and_json_show_advice(tmp_path: Path) -> None:
    from tui.report.summary import summary_dict, summary_text

    run = write_run(tmp_path, ranks=3, slow={2: 1.25})
    snap = open_run(run)
    d = json.loads(json.dumps(summary_dict(snap), allow_nan=False))
    rules = [a["rule"] for a in d["advice"]]
    assert rules[0] == "straggler" and "checkpointing_off" in rules
    first = d["advice"][0]
    assert (
        first["severity"] == "warn"
        and first["evidence"]["rank"] == 2
        and first["title"]
        and first["action"]
    )
    text = summary_text(snap).plain
    assert "advice — whole run (40 steps):" in text and "rank 2 on node2 is a straggler" in text
    # --red moves what "dominates" means
    assert "dominant" not in [a["rule"] for a in summary_dict(snap, red=0.9)["advice"]]


def test_screen_shows_advice(tmp_path: Path) -> None:
    import asyncio

    from tui.source.live import LiveSource
    from tui.view.app import MonitorApp
    from tui.view.widgets.advice import AdviceBox

    write_run(tmp_path, ranks=3, slow={2: 1.25})
    app = MonitorApp(LiveSource(tmp_path, poll=True, interval=0.05, min_gap=0.0))

    async def drive() -> str:
        async with app.run_test(size=(160, 48)) as pilot:
            for _ in range(400):
                if app.world and app.world.selected and app.world.selected.step:
                    break
                await pilot.pause(0.05)
            await pilot.pause()
            box = app.query_one(AdviceBox)
            return str(box.render())

    shown = asyncio.run(drive())
    assert "straggler" in shown and "⚠" in shown
