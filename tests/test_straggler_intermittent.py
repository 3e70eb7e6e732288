"""A rank slow now and then, not steadily: no straggler is named (its median excess is
nothing), but the reason says which rank the others wait for in the slow steps, how often,
by how much and why. Ranks slow by turns, or all jittery, name no one."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from stagewatch.records import Step, encode, rank_file_name
from tui.report.summary import open_run
from tui.testing import start_line

Regions = dict[str, float]


def _run(root: Path, ranks: int, steps: int, make: Callable[[int, int], Regions]):
    """Rank ``r``'s regions at step ``s`` are ``make(r, s)``; its wall ``__wall__``."""
    run = root / "run"
    run.mkdir(parents=True)
    for r in range(ranks):
        with open(run / rank_file_name(r), "w", encoding="utf-8") as f:
            f.write(start_line("run", rank=r, world_size=ranks, total_steps=steps))
            for s in range(1, steps + 1):
                regs = make(r, s)
                wall = regs.pop("__wall__")
                f.write(
                    encode(
                        Step(
                            step=s,
                            time=1_764_160_000.0 + s * 0.1,
                            wall_ms=wall,
                            regions={k: (v, 1) for k, v in regs.items()},
                        )
                    )
                )
    return open_run(run).stragglers


def _step(slow: bool, waits: float, place: str = "data", jitter: float = 0.0) -> Regions:
    """One DDP step: 40 ms more in ``place`` when ``slow``; ``waits`` ms at the all-reduce
    (measured); the wall is the same on every rank."""
    d = 40.0 if slow else 0.0
    data = 1.0 + (d if place == "data" else 0.0)
    fwd = 20.0 + jitter + (d if place == "forward" else 0.0)
    return {
        "__wall__": 100.0 + (40.0 if waits or slow else 0.0),
        "data": data,
        "forward": fwd,
        "backward": 30.0 + waits,
        "comm/exposed": 1.0 + waits,
        "optimizer": 5.0,
    }


def test_a_rank_slow_every_third_step_is_said_with_its_cause(tmp_path: Path) -> None:
    def make(r: int, s: int) -> Regions:
        spike = s % 3 == 0
        return _step(spike and r == 1, 40.0 if spike and r != 1 else 0.0, "data")

    v = _run(tmp_path, 3, 30, make)
    assert v is not None and v.straggler is None and v.intermittent == 1
    assert "rank 1 is slow now and then" in v.reason
    assert "in 10 of 30 steps, mostly input wait +40" in v.reason
    assert v.brief() == "rank 1 slow now and then" and v.as_dict()["intermittent"] == 1


def test_compute_spikes_are_named_compute(tmp_path: Path) -> None:
    def make(r: int, s: int) -> Regions:
        spike = s % 4 == 1
        return _step(spike and r == 0, 40.0 if spike and r != 0 else 0.0, "forward")

    v = _run(tmp_path, 2, 40, make)
    assert v is not None and v.straggler is None and v.intermittent == 0
    assert "mostly compute +40" in v.reason


def test_ranks_slow_by_turns_name_no_one(tmp_path: Path) -> None:
    def make(r: int, s: int) -> Regions:
        spike, who = s % 3 == 0, (s // 3) % 3
        return _step(spike and r == who, 40.0 if spike and r != who else 0.0)

    v = _run(tmp_path, 3, 30, make)
    assert v is not None and v.straggler is None and v.intermittent is None
    assert "now and then" not in v.reason


def test_a_few_hiccups_on_one_of_two_ranks_are_chance(tmp_path: Path) -> None:
    # 3 slow steps of 20, all on rank 1: one of two ranks gets all three a quarter of the
    # time by chance (a loaded host), so nothing is said; 10 of 40 is no chance
    def make(few: set[int]) -> Callable[[int, int], Regions]:
        def steps(r: int, s: int) -> Regions:
            spike = s in few
            return _step(spike and r == 1, 40.0 if spike and r != 1 else 0.0, "forward")

        return steps

    v = _run(tmp_path / "few", 2, 20, make({4, 11, 17}))
    assert v is not None and v.intermittent is None, v.reason
    v = _run(tmp_path / "many", 2, 40, make(set(range(2, 41, 4))))
    assert v is not None and v.intermittent == 1, v.reason


def test_jitter_on_every_rank_names_no_one(tmp_path: Path) -> None:
    for k in range(8):
        rng = random.Random(k)
        jit = [[rng.uniform(0.0, 20.0) for _ in range(4)] for _ in range(31)]

        def make(r: int, s: int, jit: list[list[float]] = jit) -> Regions:
            # each rank's forward jitters; every rank waits for the slowest of the step
            regs = _step(False, max(jit[s]) - jit[s][r], jitter=jit[s][r])
            regs["__wall__"] = 100.0 + max(jit[s])
            return regs

        v = _run(tmp_path / str(k), 4, 30, make)
        assert v is not None and v.straggler is None and v.intermittent is None, v.reason


def test_a_steady_straggler_is_not_called_intermittent(tmp_path: Path) -> None:
    def make(r: int, s: int) -> Regions:
        return _step(r == 2, 0.0 if r == 2 else 40.0)

    v = _run(tmp_path, 3, 30, make)
    assert v is not None and v.straggler == 2 and v.intermittent is None


def test_the_others_small_hiccups_do_not_hide_a_big_spike(tmp_path: Path) -> None:
    # rank 1 is 40 ms behind every fifth step; rank 0 has two 6 ms hiccups (a loaded host):
    # they are not alike in size, so they do not make rank 1's ten spikes look like chance
    def make(r: int, s: int) -> Regions:
        spike = s % 5 == 1
        regs = _step(spike and r == 1, 40.0 if spike and r == 0 else 0.0, "forward")
        if s in (8, 33):
            regs["forward"] += 6.0 if r == 0 else 0.0
            regs["comm/exposed"] += 6.0 if r == 1 else 0.0
            regs["backward"] += 6.0 if r == 1 else 0.0
        return regs

    v = _run(tmp_path, 2, 50, make)
    assert v is not None and v.straggler is None and v.intermittent == 1, v.reason
    assert "in 10 of 50 steps, mostly compute +40" in v.reason
    assert "all in steps" not in v.reason  # spread over the run


def test_a_rank_slow_only_at_the_start_says_when(tmp_path: Path) -> None:
    def make(r: int, s: int) -> Regions:
        early = s <= 20
        return _step(early and r == 1, 40.0 if early and r == 0 else 0.0, "data")

    v = _run(tmp_path, 2, 60, make)
    assert v is not None and v.straggler is None and v.intermittent == 1, v.reason
    assert "in 20 of 60 steps (all in steps 1–20), mostly input wait +40" in v.reason


def test_jitter_with_odd_hiccups_names_no_one_many_seeds(tmp_path: Path) -> None:
    # every rank jitters, and now and then one (any) rank has a large hiccup
    named = 0
    for k in range(30):
        rng = random.Random(100 + k)
        jit = [[rng.uniform(0.0, 8.0) + (rng.random() < 0.05) * 40.0 for _ in range(2)]]
        jit += [
            [rng.uniform(0.0, 8.0) + (rng.random() < 0.05) * 40.0 for _ in range(2)]
            for _ in range(50)
        ]

        def make(r: int, s: int, jit: list[list[float]] = jit) -> Regions:
            regs = _step(False, max(jit[s]) - jit[s][r], jitter=jit[s][r])
            regs["__wall__"] = 100.0 + max(jit[s])
            return regs

        v = _run(tmp_path / str(k), 2, 50, make)
        assert v is not None and v.straggler is None
        named += v.intermittent is not None
    assert named <= 1, named


def test_a_few_big_spikes_among_small_ones_say_how_big(tmp_path: Path) -> None:
    # rank 0 evaluates every 10th step (+80 ms) and has small hiccups (+8 ms); the median
    # of its slow steps is a hiccup's, so the reason also gives the largest
    def make(r: int, s: int) -> Regions:
        d0 = 80.0 if s % 10 == 0 else 8.0 if s % 7 == 3 else 0.0
        d1 = 8.0 if s == 25 else 0.0
        mine, theirs = (d0, d1) if r == 0 else (d1, d0)
        wait = max(0.0, theirs - mine)
        regs = _step(False, 0.0, "forward")
        regs["forward"] += mine
        regs["backward"] += wait
        regs["comm/exposed"] += wait
        regs["__wall__"] = 100.0 + max(d0, d1)
        return regs

    v = _run(tmp_path, 2, 60, make)
    assert v is not None and v.intermittent == 0, v.reason
    assert "(up to +80" in v.reason
