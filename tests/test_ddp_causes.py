"""A cause for each slow rank, and exposed communication, from real DDP runs.

One ``torchrun`` launch (gloo, 2 CPU processes) runs tests/_ddp_faults.py, a plain DDP loop
with a TEST-ONLY fault injection (env vars read by that script alone): rank 1 is slowed by
50 ms per step in each class in turn (input, h2d, compute in a named region, its own comm
hook), with ``stagewatch.watch_ddp`` and without it (the wait not measured), plus a run
without a fault, where noise must not be named.
"""

from __future__ import annotations

import math
import random
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from _trainer_helpers import ROOT, env_for_subprocess, records

from stagewatch.ddp import _merged_ms, watch_ddp
from tui.diagnosis.advice import advice_for_run
from tui.diagnosis.facts import facts_from_snapshot
from tui.model.rankstats import (
    WAIT_ESTIMATED,
    WAIT_MEASURED,
    WAIT_REST,
    WAIT_UNKNOWN,
    judge_stragglers,
)
from tui.report.summary import open_run, summary_dict, summary_text

CASES = ("none", "input", "h2d", "compute", "comm", "input-plain", "compute-plain")
FAULT_MS = 50.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp_faults")
    env = env_for_subprocess()
    env.update(
        DDP_FAULT_ROOT=str(root),
        DDP_FAULT_CASES=",".join(CASES),
        DDP_FAULT_RANK="1",
        DDP_FAULT_MS=str(FAULT_MS),
        DDP_FAULT_STEPS="20",
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(ROOT / "tests" / "_ddp_faults.py"),
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-4000:]
    return root


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("case", "cause", "leaf"),
    [
        ("input", "input", None),
        ("h2d", "h2d", None),
        ("compute", "compute", "backward/block2"),
        ("comm", "communication", None),
        ("input-plain", "input", None),
        ("compute-plain", "compute", "forward/block2"),
    ],
)
def test_the_slowed_rank_and_its_cause_are_named(
    runs: Path, case: str, cause: str, leaf: str | None
) -> None:
    snap = open_run(runs / case)
    v = snap.stragglers
    assert v is not None and v.straggler == 1 and snap.straggler == 1, v and v.reason
    assert v.cause == cause
    assert 0.6 * FAULT_MS < v.cause_ms < 1.6 * FAULT_MS
    assert v.wait_source == (WAIT_ESTIMATED if case.endswith("-plain") else WAIT_MEASURED)
    r0, r1 = v.rank(0), v.rank(1)
    assert r0 is not None and r1 is not None
    # rank 0 is the victim: it waits at the all-reduce, and is never blamed for it
    assert r0.allreduce_ms > 0.6 * FAULT_MS and r1.allreduce_ms < 0.4 * FAULT_MS
    f = facts_from_snapshot(snap, window=True)
    assert f.straggler_cause == cause and f.straggler_cause_line.startswith("rank 1: ")
    if leaf is not None:
        assert f.straggler_leaf == leaf and f"`{leaf}`" in f.straggler_cause_line
    advice = {a.rule: a for a in advice_for_run(snap)}
    assert advice["straggler"].evidence["rank"] == 1
    assert advice["straggler"].evidence["cause"] == cause
    if cause == "communication":
        assert "allreduce" not in advice  # the exposed time is this rank's own hook
    text = summary_text(snap).plain
    assert "straggler: rank 1" in text and "cause: rank 1: " in text
    d = summary_dict(snap)
    assert d["straggler"]["cause"] == cause and d["straggler"]["cause_line"].startswith("rank 1")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_noise_is_not_named(runs: Path) -> None:
    snap = open_run(runs / "none")
    v = snap.stragglers
    assert v is not None and v.straggler is None and v.cause is None, v.reason
    assert "straggler" not in {a.rule for a in advice_for_run(snap)}
    assert "no straggler" in summary_text(snap).plain


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", ["none", "input", "h2d", "compute", "comm"])
def test_exposed_communication_bounds(runs: Path, case: str) -> None:
    for rank in (0, 1):
        steps = [x for x in records(runs / case / f"rank{rank}.jsonl") if x["kind"] == "step"]
        assert len(steps) == 20
        for s in steps:
            regs = s["regions"]
            exposed, bwd = regs["comm/exposed"][0], regs["backward"][0]
            assert 0.0 <= exposed <= bwd  # within the loop's backward, which waits for it
            assert 0.0 <= regs["comm/launch"][0] <= bwd
            assert exposed <= regs["comm/total"][0] + 1e-6
            top = sum(v[0] for k, v in regs.items() if "/" not in k)
            assert top <= s["wall_ms"] * 1.001
    d = summary_dict(open_run(runs / case))
    comm = d["comm"]
    assert comm["wait_source"] == "measured" and [x["rank"] for x in comm["ranks"]] == [0, 1]
    assert all(x["exposed_ms"] >= 0 for x in comm["ranks"])


# --------------------------------------------------------------------------- without torchrun


def _rows(n: int, **cols: float) -> list[tuple[float, ...]]:
    """(step, wall, wait, data, h2d, launch, sync, exposed) rows with constant columns."""
    keys = ("wall", "wait", "data", "h2d", "launch", "sync", "exposed")
    return [(s + 1, *(cols.get(k, math.nan) for k in keys)) for s in range(n)]


def test_an_unmeasured_wait_is_estimated_from_backward() -> None:
    # issue 22's loop: rank 1's input 60 ms slower; rank 0 waits inside its backward
    base = dict(wall=200.0, h2d=1.0, launch=0.0)
    per = {
        0: _rows(20, data=2.0, sync=150.0, **base),
        1: _rows(20, data=62.0, sync=90.0, **base),
    }
    v = judge_stragglers(per)
    assert v is not None and v.straggler == 1 and v.cause == "input"
    assert v.wait_source == WAIT_ESTIMATED and v.cause_ms == pytest.approx(60.0)
    assert "rank 1: input wait +60.0 ms" in v.cause_text()


def test_a_rank_slow_inside_backward_is_not_guessed_when_the_wait_is_unmeasured() -> None:
    # both ranks' backward is equally long: one computes, one waits; nothing tells them apart
    per = {r: _rows(20, wall=200.0, data=2.0, h2d=1.0, launch=0.0, sync=150.0) for r in (0, 1)}
    v = judge_stragglers(per)
    assert v is not None and v.straggler is None and "not measured" in v.reason
    assert "watch_ddp" in v.reason
    per = {r: _rows(20, wall=200.0, data=2.0) for r in (0, 1)}
    v = judge_stragglers(per)
    assert v is not None and v.straggler is None and v.wait_source == WAIT_REST
    assert v.reason.startswith("no straggler found:") and "cannot be told" in v.reason
    assert v.brief() == "no straggler found"  # the header: not "no straggler"


def test_no_region_but_the_loader_still_names_a_slow_input() -> None:
    # stagewatch.timed_loader and log.step() only: rank 1's input 40 ms slower; rank 0's
    # wait is in its untimed rest of the step, which is as long as rank 1's input
    per = {
        0: _rows(30, wall=55.0, data=0.4, h2d=0.05),
        1: _rows(30, wall=55.0, data=40.4, h2d=0.05),
    }
    v = judge_stragglers(per)
    assert v is not None and v.straggler == 1 and v.cause == "input", v.reason
    assert v.wait_source == WAIT_REST and v.cause_ms == pytest.approx(40.0)
    assert "estimated from the untimed rest" in v.who_waits()
    # rank 1 slow in untimed compute instead: both ranks' rest alike; nothing is guessed
    per = {r: _rows(30, wall=55.0, data=0.4, h2d=0.05) for r in (0, 1)}
    v = judge_stragglers(per)
    assert v is not None and v.straggler is None and "untimed work" in v.reason
    assert [x.allreduce_ms for x in v.ranks] == [0.0, 0.0]


def test_ranks_not_in_step_leave_the_wait_unknown_and_shown_as_such() -> None:
    # not DDP: walls differ, so no wait is estimated; the slower rank is named by its wall
    per = {0: _rows(30, wall=100.0, data=1.0), 1: _rows(30, wall=160.0, data=1.0)}
    v = judge_stragglers(per)
    assert v is not None and v.wait_source == WAIT_UNKNOWN and v.straggler == 1
    assert all(math.isnan(x.allreduce_ms) for x in v.ranks)
    assert "not measured" in v.who_waits()


def test_watch_ddp_on_a_plain_model_warns_and_returns_none() -> None:
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert watch_ddp(torch.nn.Linear(2, 2)) is None
    assert any("DistributedDataParallel" in str(w.message) for w in caught)


def test_merged_intervals() -> None:
    assert _merged_ms([]) == 0.0
    assert _merged_ms([(0.0, 0.010), (0.005, 0.020), (0.030, 0.035)]) == pytest.approx(25.0)


def test_watch_ddp_in_one_process_records_bounded_exposed_comm(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import torch.distributed as dist

    from stagewatch import TimingLogger, set_global_timing_logger, timed
    from stagewatch.ddp import watch_if_ddp

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 8))
        w = watch_if_ddp(model)
        assert w is not None and watch_if_ddp(model) is w  # once per model
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert watch_if_ddp(torch.nn.Linear(2, 2)) is None  # silent for a plain model
        log = TimingLogger(tmp_path, enable_console=False, run_id="one", handle_sigterm=False)
        set_global_timing_logger(log)
        for _ in range(3):
            with timed("backward"):
                model(torch.randn(4, 8)).sum().backward()
            log.step()
        set_global_timing_logger(None)
        log.close()
    finally:
        dist.destroy_process_group()
    steps = [x for x in records(tmp_path / "one" / "rank0.jsonl") if x["kind"] == "step"]
    assert len(steps) == 3 and w.backwards == 3
    for s in steps:
        regs = s["regions"]
        assert 0.0 <= regs["comm/exposed"][0] <= regs["backward"][0] <= s["wall_ms"]
        assert regs["comm/launch"][1] == 1


@pytest.mark.parametrize("ranks", [3, 4, 8])
def test_the_estimate_holds_for_more_ranks(ranks: int) -> None:
    # rank 2's h2d copy is 40 ms slower; every other rank waits for it inside backward
    per = {
        r: _rows(
            20,
            wall=300.0,
            data=2.0,
            h2d=41.0 if r == 2 else 1.0,
            launch=0.0,
            sync=100.0 if r == 2 else 140.0,
        )
        for r in range(ranks)
    }
    v = judge_stragglers(per)
    assert v is not None and v.straggler == 2 and v.cause == "h2d"
    assert v.cause_ms == pytest.approx(40.0) and v.wait_source == WAIT_ESTIMATED
    assert all(ms == pytest.approx(40.0) for _, ms in v.waits())


def test_library_names_of_the_input_phases_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # timed_loader's / the callbacks' "data/wait" and "data/h2d", no all-reduce measured:
    # rank 1's copy is 40 ms slower; rank 0 waits for it inside its backward
    from stagewatch.timing import TimingLogger, log_timing, regions, set_global_timing_logger

    now = [100.0]
    monkeypatch.setattr(regions, "_perf", lambda: now[0])
    logs = [
        TimingLogger(
            tmp_path,
            enable_console=False,
            enable_file=False,
            run_id="lib",
            rank=r,
            world_size=2,
            handle_sigterm=False,
            collect_memory=False,
        )
        for r in (0, 1)
    ]
    for lg in logs:
        lg.mark_step_start()
    for _ in range(20):
        for r, lg in enumerate(logs):
            set_global_timing_logger(lg)
            log_timing("data/wait", 3.0)
            log_timing("data/h2d", 41.0 if r == 1 else 1.0)
            log_timing("forward", 50.0)
            log_timing("backward", 100.0 if r == 1 else 140.0)
            log_timing("optimizer", 5.0)
        now[0] += 0.2
        for lg in logs:
            lg.step()
    set_global_timing_logger(None)
    for lg in logs:
        lg.close()
    snap = open_run(tmp_path / "lib")
    v = snap.stragglers
    assert v is not None and v.straggler == 1 and v.cause == "h2d", v and v.reason
    assert v.wait_source == WAIT_ESTIMATED and v.cause_ms == pytest.approx(40.0)
    assert v.rank(0).data_ms == pytest.approx(3.0)  # type: ignore[union-attr]


def test_compute_outside_every_region_is_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rank 1 loses 40 ms per step in code no region times; rank 0 waits inside backward
    from stagewatch.timing import TimingLogger, log_timing, regions, set_global_timing_logger

    now = [100.0]
    monkeypatch.setattr(regions, "_perf", lambda: now[0])
    opts = dict(enable_console=False, enable_file=False, run_id="un", world_size=2)
    logs = [
        TimingLogger(tmp_path, rank=r, handle_sigterm=False, collect_memory=False, **opts)
        for r in (0, 1)
    ]
    for lg in logs:
        lg.mark_step_start()
    for _ in range(20):
        for r, lg in enumerate(logs):
            set_global_timing_logger(lg)
            log_timing("data", 3.0)
            log_timing("forward", 50.0)
            log_timing("backward", 100.0 if r == 1 else 140.0)
        now[0] += 0.2
        for lg in logs:
            lg.step()
    set_global_timing_logger(None)
    for lg in logs:
        lg.close()
    snap = open_run(tmp_path / "un")
    f = facts_from_snapshot(snap, window=True)
    assert f.straggler == 1 and f.straggler_cause == "compute"
    assert "outside every timed region (unaccounted +40.0 ms)" in f.straggler_cause_line


def test_a_rank_slow_by_uneven_amounts_is_not_excused_as_noise() -> None:
    # Lightning's sampler gave rank 1 0, 1 or 2 slow samples a batch: its input 40 or 80 ms
    # late in most steps, 0 in some. Its own spread is its slowness, not the run's noise
    # (before: "+40.8 ms is within the run's step-to-step noise (±31.0 ms)")
    late = [40.0, 80.0, 40.0, 0.0, 80.0, 40.0, 40.0, 0.0, 80.0, 40.0] * 5
    per: dict[int, list[tuple[float, ...]]] = {0: [], 1: []}
    for s, d in enumerate(late, 1):
        wall = 15.0 + d + (s % 3) * 0.5
        per[0].append((s, wall, d + (s % 3) * 0.5, 0.4, 0.1, 0.2, math.nan, d + 1.0))
        per[1].append((s, wall, 0.5, 0.4 + d, 0.1, 0.2, math.nan, 1.0))
    v = judge_stragglers(per)
    assert v is not None and v.straggler == 1 and v.cause == "input", v.reason
    assert v.noise_ms < 5.0


def test_a_wait_in_a_collective_outside_the_all_reduce_names_the_slow_input() -> None:
    # the HF Trainer under DDP: rank 1's input 40 ms slower; rank 0 waits for it in the
    # Trainer's gather of label-token counts before forward (no region), not in the
    # all-reduce (measured, alike on both): before, "no straggler: ranks within 0.07 ms"
    per: dict[int, list[tuple[float, ...]]] = {0: [], 1: []}
    for s in range(1, 41):
        j = (s % 4) * 0.3
        per[0].append((s, 84.0 + j, 3.2, 0.2, 1.9, 0.2, math.nan, 5.2))
        per[1].append((s, 84.0 + j, 3.2, 40.9 - j, 0.6, 0.2, math.nan, 5.1))
    v = judge_stragglers(per)
    assert v is not None and v.straggler == 1 and v.cause == "input", v.reason
    assert v.waits_outside and "outside the all-reduce" in v.reason
    assert v.excess_ms == pytest.approx(39.4, abs=1.0)
    assert "outside the all-reduce" in v.who_waits() and v.as_dict()["waits_outside"]
    # inputs that only jitter (either rank late by turns) name no one
    rng = random.Random(7)
    for s in range(1, 41):
        d = [rng.uniform(0.0, 6.0) for _ in range(2)]
        wall = 84.0 + max(d)
        per[0][s - 1] = (s, wall, 3.2 + max(d) - d[0], 0.2 + d[0], 1.9, 0.2, math.nan, 5.2)
        per[1][s - 1] = (s, wall, 3.2 + max(d) - d[1], 0.2 + d[1], 1.9, 0.2, math.nan, 5.2)
    v = judge_stragglers(per)
    assert v is not None and v.straggler is None and not v.waits_outside, v.reason
