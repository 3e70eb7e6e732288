"""Straggler verdicts on DDP loops of other shapes than tests/test_ddp_causes.py's.

Found by QA with tests/_ddp_scenarios.py (3 and 4 gloo ranks): a loop that nests its phases
under a region of its own (``train/data``, ``train/backward``) had its input read as compute
and its compute placed "outside every timed region (unaccounted +0.00 ms)" (or, without
``watch_ddp``, no verdict at all); with a BatchNorm model the ranks waiting for a late rank 0
wait in DDP's buffer broadcast at the start of forward, which nothing measured, so rank 0
was not named. Each is reproduced here from synthetic records, and one ``torchrun`` launch
(3 ranks) runs the shapes for real. Two ranks alike in own time (both slow, or one waiting where
the estimate does not look) name no one.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from _trainer_helpers import ROOT, env_for_subprocess, records

from stagewatch.records import Step, encode, rank_file_name
from tui.diagnosis.facts import facts_from_snapshot
from tui.model.phases import UNMEASURED_CAVEAT, find_phase
from tui.model.rankstats import WAIT_ESTIMATED, WAIT_MEASURED, WAIT_REST, WAIT_UNKNOWN
from tui.report.summary import open_run, summary_dict
from tui.testing import start_line
from tui.view.widgets.ranks import verdict_lines

Regions = dict[str, float]


def _write(root: Path, run_id: str, ranks: int, steps: int, make: Callable[[int], Regions]):
    """A run whose rank ``r`` has the regions ``make(r)`` at each step (plus a little noise);
    the step wall is the same on every rank (DDP), ``__wall__`` of ``make(0)``."""
    run = root / run_id
    run.mkdir(parents=True)
    for r in range(ranks):
        regs = make(r)
        wall = regs.pop("__wall__")
        with open(run / rank_file_name(r), "w", encoding="utf-8") as f:
            f.write(start_line(run_id, rank=r, world_size=ranks, total_steps=steps))
            for s in range(1, steps + 1):
                j = 1.0 + 0.002 * ((s * 7 + r * 3) % 5)  # deterministic jitter
                f.write(
                    encode(
                        Step(
                            step=s,
                            time=1_764_160_000.0 + s * wall / 1000.0,
                            wall_ms=wall * j,
                            regions={k: (v * j, 1) for k, v in regs.items()},
                        )
                    )
                )
    return open_run(run)


def _tree(slow: int, place: str, measured: bool) -> Callable[[int], Regions]:
    """A loop with its phases under ``train``; rank ``slow`` 40 ms slower in ``place``; the
    others wait 40 ms in their backward (measured by comm/exposed or not)."""

    def make(r: int) -> Regions:
        d = 40.0 if r == slow else 0.0
        wait = 0.0 if r == slow else 40.0
        regs = {
            "__wall__": 100.0,
            "train/data": 1.0 + (d if place == "data" else 0.0),
            "train/h2d": 1.0 + (d if place == "h2d" else 0.0),
            "train/forward": 20.0 + (d if place == "encoder" else 0.0),
            "train/forward/encoder": 10.0 + (d if place == "encoder" else 0.0),
            "train/backward": 30.0 + wait,
            "train/optimizer": 5.0,
        }
        regs["train"] = sum(v for k, v in regs.items() if k.count("/") == 1)
        regs["__wall__"] = regs["train"] + 2.0  # unaccounted 2 ms
        if measured:
            regs["comm/exposed"] = 1.0 + wait
            regs["comm/launch"] = 0.1
        return regs

    return make


@pytest.mark.parametrize("measured", [True, False])
@pytest.mark.parametrize(
    ("place", "cause", "leaf"),
    [
        ("data", "input", None),
        ("h2d", "h2d", None),
        ("encoder", "compute", "train/forward/encoder"),
    ],
)
def test_phases_nested_under_the_loops_own_region(
    tmp_path: Path, measured: bool, place: str, cause: str, leaf: str | None
) -> None:
    snap = _write(tmp_path, "tree", 3, 30, _tree(0, place, measured))
    v = snap.stragglers
    assert v is not None and v.straggler == 0 and v.cause == cause, v and v.reason
    assert v.wait_source == (WAIT_MEASURED if measured else WAIT_ESTIMATED)
    assert v.cause_ms == pytest.approx(40.0, rel=0.1)
    f = facts_from_snapshot(snap, window=True)
    assert f.straggler_leaf == leaf
    if leaf is not None:
        assert f"mostly `{leaf}` +" in f.straggler_cause_line
    assert "unaccounted" not in f.straggler_cause_line


def test_a_region_explaining_a_sliver_is_not_named(tmp_path: Path) -> None:
    # rank 1's 40 ms are spread evenly over four regions: none explains most of it
    def make(r: int) -> Regions:
        d = 10.0 if r == 1 else 0.0
        wait = 0.0 if r == 1 else 40.0
        regs = {f"r{i}": 5.0 + d for i in range(4)}
        regs.update({"backward": 30.0 + wait, "comm/exposed": 1.0 + wait, "comm/launch": 0.1})
        regs["__wall__"] = 20.0 + 30.0 + 40.0 + 1.0
        return regs

    snap = _write(tmp_path, "even", 3, 30, make)
    f = facts_from_snapshot(snap, window=True)
    assert f.straggler == 1 and f.straggler_cause == "compute"
    assert f.straggler_region is None
    assert f.straggler_cause_line.endswith("no single timed region explains most of it")


def test_the_buffer_broadcast_is_waited_in(tmp_path: Path) -> None:
    # rank 0's input is 40 ms late; ranks 1 and 2 wait in DDP's buffer broadcast at the start
    # of forward (comm/buffers), not in the all-reduce
    def make(r: int) -> Regions:
        late = r == 0
        return {
            "__wall__": 100.0,
            "data": 41.0 if late else 1.0,
            "forward": 20.0 if late else 60.0,
            "backward": 30.0,
            "comm/exposed": 2.0,
            "comm/launch": 0.1,
            "comm/buffers": 0.1 if late else 40.1,
        }

    snap = _write(tmp_path, "bn", 3, 30, make)
    v = snap.stragglers
    assert v is not None and v.straggler == 0 and v.cause == "input", v and v.reason
    assert v.rank(1).allreduce_ms == pytest.approx(42.0, rel=0.05)  # type: ignore[union-attr]


def test_the_buffer_broadcast_wait_is_taken_out_of_forward(tmp_path: Path) -> None:
    # rank 0 is 40 ms slower in forward before it calls the model; the others wait in the
    # broadcast inside their forward, so every forward is equally long (was: "no single timed
    # region explains most of it")
    def make(r: int) -> Regions:
        late = r == 0
        return {
            "__wall__": 100.0,
            "data": 1.0,
            "forward": 60.0,
            "forward/encoder": 10.0,
            "backward": 30.0,
            "comm/exposed": 2.0,
            "comm/launch": 0.1,
            "comm/buffers": 0.1 if late else 40.1,
        }

    f = facts_from_snapshot(_write(tmp_path, "bnfwd", 3, 30, make), window=True)
    assert f.straggler == 0 and f.straggler_cause == "compute"
    assert f.straggler_region == "forward" and f.straggler_leaf == "forward"


def test_a_rank_waiting_outside_backward_is_not_blamed(tmp_path: Path) -> None:
    # no watch_ddp, a BatchNorm model: rank 3's input is 40 ms late; rank 1 waits for it in
    # DDP's buffer broadcast inside forward, ranks 0 and 2 in backward. Rank 1 then looks as
    # slow as rank 3 (was: "straggler rank 1, compute, mostly `forward`")
    def make(r: int) -> Regions:
        return {
            "__wall__": 100.0,
            "data": 41.0 if r == 3 else 1.0,
            "forward": 60.0 if r == 1 else 20.0,
            "backward": 30.0 + (40.0 if r in (0, 2) else 0.0),
            "optimizer": 5.0,
        }

    snap = _write(tmp_path, "bnplain", 4, 30, make)
    v = snap.stragglers
    assert v is not None and v.straggler is None and v.wait_source == WAIT_ESTIMATED
    assert "no single rank stands out" in v.reason and "buffer broadcast" in v.reason


def test_two_ranks_equally_slow_are_not_one_straggler(tmp_path: Path) -> None:
    # ranks 1 and 2 of 4 both 40 ms late in input, the wait measured: neither is "the" one
    def make(r: int) -> Regions:
        late = r in (1, 2)
        return {
            "__wall__": 100.0,
            "data": 41.0 if late else 1.0,
            "forward": 20.0,
            "backward": 30.0 if late else 70.0,
            "comm/exposed": 2.0 if late else 42.0,
            "comm/launch": 0.1,
        }

    snap = _write(tmp_path, "pair", 4, 30, make)
    v = snap.stragglers
    assert v is not None and v.straggler is None and v.group == (1, 2), v.reason
    lines, style = verdict_lines(snap, 200)  # the ranks panel says it as a finding
    assert style == "bold red" and lines[0].startswith("no single straggler: ranks 1, 2")
    assert v.reason.startswith("no single straggler: ranks 1, 2 are slow alike, ")
    assert "mostly input wait +40" in v.reason and v.as_dict()["group"] == [1, 2]
    assert v.brief() == "ranks 1, 2 slow"


@pytest.mark.parametrize("measured", [True, False])
def test_a_wait_in_the_loops_own_untimed_all_reduce_is_not_work(
    tmp_path: Path, measured: bool
) -> None:
    # the loop all-reduces its loss between forward and backward, in no region; rank 1's
    # forward is 40 ms slower and the others wait for it there, in their unaccounted time,
    # so every rank's own time is alike (was: "no straggler", the wait counted as work)
    def make(r: int) -> Regions:
        late = r == 1
        regs = {
            "__wall__": 100.0,
            "data": 1.0,
            "forward": 20.0 + (40.0 if late else 0.0),
            "forward/encoder": 10.0,
            "backward": 30.0,
            "optimizer": 5.0,
        }
        if measured:
            regs.update({"comm/exposed": 1.0, "comm/launch": 0.1})
        return regs

    snap = _write(tmp_path, "lossar", 3, 30, make)
    v = snap.stragglers
    assert v is not None and v.straggler == 1 and v.cause == "compute", v and v.reason
    assert v.cause_ms == pytest.approx(40.0, rel=0.1) and v.waits_outside
    assert "outside every timed region" in v.reason and "all-reduce of the loss" in v.reason
    assert v.brief().startswith("straggler rank 1 +40")
    f = facts_from_snapshot(snap, window=True)
    assert f.straggler_region == "forward", f.straggler_cause_line
    assert "mostly `forward` +40" in f.straggler_cause_line


@pytest.mark.parametrize(("ranks", "inside"), [(3, "loss"), (3, "forward"), (4, "loss")])
def test_a_wait_in_the_loops_own_collective_in_a_timed_region(
    tmp_path: Path, ranks: int, inside: str
) -> None:
    # the loop all-reduces its loss inside a timed region (`loss`, or `forward` itself, the
    # slow work then in forward/encoder): the others wait there for rank 1, every own time
    # alike and nothing untimed (was: "no straggler"); named from the region figures
    def make(r: int) -> Regions:
        late, wait = (40.0, 0.0) if r == 1 else (0.0, 40.0)
        regs = {
            "__wall__": 100.0,
            "forward": 20.0 + late + (wait if inside == "forward" else 0.0),
            "forward/encoder": 10.0 + late,
            "loss": 2.0 + (wait if inside == "loss" else 0.0),
            "backward": 30.0,
            "comm/exposed": 1.0,
            "comm/launch": 0.1,
        }
        regs["__wall__"] = 100.0 + 40.0 - (0.0 if inside == "loss" else 2.0)
        return regs

    snap = _write(tmp_path, "inreg", ranks, 30, make)
    f = facts_from_snapshot(snap, window=True)
    v = f.stragglers
    assert v is not None and v.straggler == 1 and v.cause == "compute", v and v.reason
    assert "a collective that is not measured" in v.reason and v.waits_outside
    assert v.cause_ms == pytest.approx(40.0, rel=0.1)
    if inside == "loss":
        assert "mostly `forward/encoder` +40" in f.straggler_cause_line, f.straggler_cause_line
    d = summary_dict(snap)
    assert d["straggler"]["rank"] == 1 and d["straggler"]["verdict"]["straggler"] == 1
    assert snap.stragglers is not None and snap.stragglers.brief().startswith("straggler rank 1")


def test_a_measured_wait_is_not_taken_for_a_hidden_one(tmp_path: Path) -> None:
    # rank 0 checkpoints in a region of its own; the others' wait is measured (comm/exposed,
    # in their backward): named by its own time, never as waited for in a collective not
    # measured
    def make(r: int) -> Regions:
        return {
            "__wall__": 100.0,
            "forward": 20.0,
            "backward": 30.0 + (0.0 if r == 0 else 20.0),
            "ckpt": 20.0 if r == 0 else 0.0,
            "comm/exposed": 1.0 + (0.0 if r == 0 else 20.0),
            "comm/launch": 0.1,
        }

    snap = _write(tmp_path, "ckpt", 3, 30, make)
    v = snap.stragglers
    assert v is not None and v.straggler == 0 and not v.waits_outside, v.reason
    assert "not measured" not in v.reason


def test_two_ranks_waiting_in_a_timed_collective_cannot_be_told_apart(tmp_path: Path) -> None:
    # two ranks: rank 1 +40 ms in forward, rank 0 +40 ms in `loss` (its all-reduce): rank 1
    # slow and rank 0 waiting, or rank 0 slow in `loss` and rank 1 waiting in forward
    def make(r: int) -> Regions:
        late, wait = (40.0, 0.0) if r == 1 else (0.0, 40.0)
        return {
            "__wall__": 140.0,
            "forward": 20.0 + late,
            "loss": 2.0 + wait,
            "backward": 30.0,
            "comm/exposed": 1.0,  # DDP's all-reduce measured: no wait there
            "comm/launch": 0.1,
        }

    snap = _write(tmp_path, "two", 2, 30, make)
    v = facts_from_snapshot(snap, window=True).stragglers
    assert v is not None and v.straggler is None and v.measured
    assert "not measured" in v.reason and "with two ranks which one waits" in v.reason, v.reason
    assert v.brief() == "no straggler found"


def test_two_ranks_waiting_outside_every_region_cannot_be_told_apart(tmp_path: Path) -> None:
    # two ranks: rank 1 +40 ms in forward, rank 0 +40 ms untimed: rank 1 slow and rank 0
    # waiting in an untimed all-reduce of the loss, or rank 0 slow in untimed work (its
    # loader) and rank 1 waiting in a collective inside forward: neither is blamed
    def make(r: int) -> Regions:
        late = 40.0 if r == 1 else 0.0
        return {"__wall__": 100.0, "forward": 20.0 + late, "backward": 30.0, "comm/exposed": 1.0}

    v = _write(tmp_path, "two", 2, 30, make).stragglers
    assert v is not None and v.straggler is None and v.brief() == "no straggler found"
    assert "not measured" in v.reason and "with two ranks which one waits" in v.reason, v.reason


def test_one_rank_slow_in_untimed_work_is_not_taken_for_a_waiter(tmp_path: Path) -> None:
    # 3 ranks: rank 1 slow in untimed work (its loader), ranks 0 and 2 wait for it in a
    # collective inside `forward`: rank 0 or 2 must never be named for their wait
    def make(r: int) -> Regions:
        wait = 0.0 if r == 1 else 40.0
        return {"__wall__": 100.0, "forward": 20.0 + wait, "backward": 30.0, "comm/exposed": 1.0}

    v = _write(tmp_path, "three", 3, 30, make).stragglers
    assert v is not None and v.straggler in (None, 1), v.reason


def test_a_rank_alike_in_timed_and_untimed_time_is_not_named(tmp_path: Path) -> None:
    # every rank's untimed time the same: nobody waits outside the regions, no one is named
    def make(r: int) -> Regions:
        return {"__wall__": 100.0, "forward": 20.0, "backward": 30.0, "optimizer": 5.0}

    v = _write(tmp_path, "even", 3, 30, make).stragglers
    assert v is not None and v.straggler is None, v.reason


@pytest.mark.parametrize("place", ["data", "forward"])
def test_two_slow_ranks_are_a_group_when_the_wait_is_estimated(tmp_path: Path, place: str) -> None:
    # no watch_ddp: ranks 1 and 2 of 4 are 40 ms slower (input, or forward compute); ranks 0
    # and 3 wait for them inside backward, where the wait is estimated from (was: "no
    # straggler: no single rank stands out", the group found only with the wait measured)
    def make(r: int) -> Regions:
        late = 40.0 if r in (1, 2) else 0.0
        return {
            "__wall__": 100.0,
            "data": 1.0 + (late if place == "data" else 0.0),
            "forward": 20.0 + (late if place == "forward" else 0.0),
            "backward": 30.0 + 40.0 - late,
            "optimizer": 5.0,
        }

    snap = _write(tmp_path, "pairest", 4, 30, make)
    v = snap.stragglers
    assert v is not None and v.wait_source == WAIT_ESTIMATED
    assert v.straggler is None and v.group == (1, 2), v.reason
    cause = "input wait" if place == "data" else "compute"
    assert f"mostly {cause} +40" in v.reason and "estimated from `backward`" in v.reason


def test_ranks_slow_by_degrees_are_not_called_a_group(tmp_path: Path) -> None:
    # 4 ranks, own time 0, 0, +25 and +50 ms over the fast ones; rank 3 alone recurs least
    # in no step: it is named, never "ranks 2, 3 alike"
    def make(r: int) -> Regions:
        late = (0.0, 0.0, 25.0, 50.0)[r]
        return {
            "__wall__": 100.0,
            "data": 1.0 + late,
            "forward": 20.0,
            "backward": 30.0 + 50.0 - late,
            "comm/exposed": 2.0 + 50.0 - late,
            "comm/launch": 0.1,
        }

    v = _write(tmp_path, "grade", 4, 30, make).stragglers
    assert v is not None and v.straggler == 3 and v.group == (), v.reason


def test_a_wait_outside_every_region_is_taken_out_of_unaccounted(tmp_path: Path) -> None:
    # a loop that times only its model's encoder; loss.backward() in no region: the others'
    # wait for rank 0 (slow in untimed input) is in their unaccounted time, as its slowness
    def make(r: int) -> Regions:
        late = r == 0
        return {
            "__wall__": 100.0,
            "encoder": 10.0,
            "comm/exposed": 2.0 if late else 42.0,
            "comm/launch": 0.1,
        }

    f = facts_from_snapshot(_write(tmp_path, "bare", 3, 30, make), window=True)
    assert f.straggler == 0 and f.straggler_cause == "compute"
    assert "mostly outside every timed region (unaccounted +40" in f.straggler_cause_line


def test_find_phase() -> None:
    names = {"train", "train/data", "train/data/h2d", "forward", "forward/data", "backward"}
    assert find_phase(names, ("data/wait", "data")) == "train/data"
    assert find_phase(names, ("h2d", "data/h2d")) == "train/data/h2d"
    assert find_phase(names, ("backward",)) == "backward"
    # a model block called "data" inside forward is compute, not input
    assert find_phase({"forward", "forward/data"}, ("data",)) is None
    assert find_phase({"eval", "eval/backward"}, ("backward",)) is None
    assert find_phase({"a/backward", "a/b/backward"}, ("backward",)) == "a/backward"
    assert set(UNMEASURED_CAVEAT) == {WAIT_ESTIMATED, WAIT_REST, WAIT_UNKNOWN}


def test_watch_ddp_times_the_buffer_broadcast(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import torch.distributed as dist

    from stagewatch import TimingLogger, set_global_timing_logger, timed, watch_ddp

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8))
        model = torch.nn.parallel.DistributedDataParallel(net)
        assert watch_ddp(model) is not None
        log = TimingLogger(tmp_path, enable_console=False, run_id="bn", handle_sigterm=False)
        set_global_timing_logger(log)
        for _ in range(3):
            with timed("forward"):
                out = model(torch.randn(4, 8)).sum()
            with timed("backward"):
                out.backward()
            log.step()
        set_global_timing_logger(None)
        log.close()
    finally:
        dist.destroy_process_group()
    steps = [x for x in records(tmp_path / "bn" / "rank0.jsonl") if x["kind"] == "step"]
    assert len(steps) == 3
    for s in steps:
        b = s["regions"]["comm/buffers"]
        assert b[1] == 1 and 0.0 <= b[0] <= s["regions"]["forward"][0]


@pytest.mark.parametrize("wrap", ["before", "after"])
def test_instruments_remove_takes_its_ddp_watch_away(tmp_path: Path, wrap: str) -> None:
    # instrument's remove() left the DDP watch's forward pre-hooks on the model (and its
    # comm hook timing every backward); a watch the user began stays theirs
    torch = pytest.importorskip("torch")
    import torch.distributed as dist

    import stagewatch
    from stagewatch import TimingLogger, set_global_timing_logger

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    log = TimingLogger(tmp_path, enable_console=False, run_id="rm", handle_sigterm=False)
    set_global_timing_logger(log)
    try:
        net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8))
        if wrap == "before":
            model = torch.nn.parallel.DistributedDataParallel(net)
            h = stagewatch.instrument(model, depth=1)
        else:  # instrument(net) first: the watch begins at the first forward under DDP
            h = stagewatch.instrument(net, depth=1)
            model = torch.nn.parallel.DistributedDataParallel(net)

        def step() -> None:
            model(torch.randn(4, 8)).sum().backward()
            log.step()

        step()
        hooks = (len(model._forward_pre_hooks), len(net._forward_pre_hooks))
        assert hooks[0] >= 1 and hooks[1] >= 1
        h.remove()
        assert len(model._forward_pre_hooks) == 0 and len(net._forward_pre_hooks) == 0
        step()  # the comm hook still reduces, timing nothing
        assert stagewatch.watch_ddp(model) is not None  # the user's own: kept by a remove()
        h2 = stagewatch.instrument(model, depth=1)
        h2.remove()
        assert len(model._forward_pre_hooks) >= 1
        step()
    finally:
        set_global_timing_logger(None)
        log.close()
        dist.destroy_process_group()
    steps = [x for x in records(tmp_path / "rm" / "rank0.jsonl") if x["kind"] == "step"]
    comm = [sorted(k for k in s["regions"] if k.startswith("comm/")) for s in steps]
    assert comm[0] and not comm[1] and comm[2], comm


# --------------------------------------------------------------------------- torchrun

#: (case, the ranks that may be named (None: none), cause, compute region), in the names of
#: tests/_ddp_scenarios.py; a moving or intermittent culprit is named truly or not at all
CASES = (
    ("fwd-r0", (0,), "compute", "forward"),
    ("enc-r2-plain-nodata", (2,), "compute", "forward/encoder"),
    ("opt-r1-accum", (1,), "compute", "optimizer"),
    ("data-r2-tree", (2,), "input", None),
    ("enc-r1-tree-plain", (1,), "compute", "train/forward/encoder"),
    ("data-r0-bn", (0,), "input", None),
    ("jitter-r0", (None,), None, None),
    ("every3-r1", (None, 1), None, None),
    ("pair-r1", (None, 1, 2), None, None),
    ("data-r2-bn-plain", (None, 2), "input", None),
    ("data-r0-bare", (0,), "compute", "(unaccounted)"),
    ("enc-r1-instr", (1,), "compute", "forward/encoder/0"),
    ("move-r1", (None, 1, 2), None, None),
    ("fwd-r1-lossar", (1,), "compute", "forward"),
    ("fwd-r2-lossar-plain", (2,), "compute", "forward"),
    ("pair-r1-plain", (None,), None, None),
    ("fwd-r2-lossreg", (None, 2), None, None),  # named from the region figures (below)
    ("enc-r1-lossfwd", (None, 1), None, None),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp_scenarios")
    env = env_for_subprocess()
    env.update(
        DDP_SCN_ROOT=str(root),
        DDP_SCN_CASES=",".join(c[0] for c in CASES),
        DDP_SCN_MS="40",
        DDP_SCN_STEPS="30",
        OMP_NUM_THREADS="1",
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=3",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(ROOT / "tests" / "_ddp_scenarios.py"),
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-4000:]
    return root


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("case", "ranks", "cause", "leaf"), CASES, ids=[c[0] for c in CASES])
def test_scenario_verdicts(
    scenarios: Path, case: str, ranks: tuple[int | None, ...], cause: str | None, leaf: str | None
) -> None:
    snap = open_run(scenarios / case)
    v = snap.stragglers
    assert v is not None and v.straggler in ranks, v and v.reason
    if len(ranks) > 1 or v.straggler is None:
        return
    assert v.cause == cause and 25.0 < v.cause_ms < 60.0, v.cause_text()
    f = facts_from_snapshot(snap, window=True)
    assert f.straggler_leaf == leaf, f.straggler_cause_line


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_scenario_two_slow_ranks_unmeasured_are_a_group(scenarios: Path) -> None:
    # ranks 1 and 2 of 3 slowed in input, no watch_ddp: the wait is estimated from backward
    v = open_run(scenarios / "pair-r1-plain").stragglers
    assert v is not None and v.wait_source == WAIT_ESTIMATED
    assert v.group == (1, 2) and "mostly input wait +" in v.reason, v.reason


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("case", "rank"), [("fwd-r2-lossreg", 2), ("enc-r1-lossfwd", 1)])
def test_scenario_a_wait_in_a_timed_collective_of_the_loop(
    scenarios: Path, case: str, rank: int
) -> None:
    # the loss all-reduced inside a timed region (`loss`, or `forward` itself)
    snap = open_run(scenarios / case)
    v = facts_from_snapshot(snap, window=True).stragglers
    assert v is not None and v.straggler == rank and v.cause == "compute", v and v.reason
    assert 25.0 < v.cause_ms < 60.0 and summary_dict(snap)["straggler"]["rank"] == rank


def test_instrument_alone_names_the_module_not_unaccounted(tmp_path: Path) -> None:
    # stagewatch.instrument(ddp_model) + timed_loader, no region of the loop's own: no
    # `forward` or `backward` is timed itself; rank 1's forward/enc/1 is 40 ms slower and
    # rank 0 waits 40 ms in the exposed all-reduce (measured). Each region with no timed
    # region above it covers the step, comm/exposed too (no backward region holds it)
    def make(r: int) -> Regions:
        late = r == 1
        return {
            "__wall__": 60.0,
            "data/wait": 0.5,
            "forward/enc": 1.0 + (40.0 if late else 0.0),
            "forward/enc/1": 0.2 + (40.0 if late else 0.0),
            "forward/head": 0.5,
            "backward/enc": 1.0,
            "backward/head": 0.5,
            "comm/exposed": 1.0 if late else 41.0,
            "comm/launch": 0.1,
            "comm/total": 5.0 if late else 45.0,
        }

    snap = _write(tmp_path, "instr", 2, 30, make)
    f = facts_from_snapshot(snap, window=True)
    assert f.straggler == 1 and f.straggler_cause == "compute"
    assert "mostly `forward/enc/1` +40" in f.straggler_cause_line, f.straggler_cause_line
    # 60 - 0.5 - 41 - 1 - 1 - 0.5 - 0.5 of the waiting rank: the wait is not "untimed"
    assert snap.unaccounted.window.avg == pytest.approx(15.5, abs=1.0)
