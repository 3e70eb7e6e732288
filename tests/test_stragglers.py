"""Stragglers under DDP, judged by compute: runs written by the timing core itself.

DDP's all-reduce makes both ranks' steps equally long, so the slow rank is the one whose
all-reduce wait is *shorter*; the monitor must name it (and its slow region), not the
interconnect, and must stay quiet when ranks differ by noise only.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from stagewatch.timing import TimingLogger, log_timing, regions, set_global_timing_logger
from tui.diagnosis.advice import advice_for_run
from tui.diagnosis.thresholds import Thresholds
from tui.model.rankstats import judge_stragglers
from tui.report.summary import open_run, summary_dict, summary_text

STEP = {
    "data": 2.0,
    "h2d": 5.0,
    "forward": 400.0,
    "loss": 20.0,
    "backward": 800.0,
    "optimizer": 30.0,
}
COMM = 15.0  # the all-reduce's own exposed communication, ms


def ddp_run(
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    slow_forward: float = 1.0,
    jitter: float = 0.01,
    steps: int = 30,
    seed: int = 0,
) -> Path:
    """Two ranks written by two TimingLoggers into one run folder, with DDP's timing: both
    ranks reach step() together (the clock is shared), the faster one waits in ``allreduce``."""
    now = [1000.0]
    monkeypatch.setattr(regions, "_perf", lambda: now[0])
    loggers = [
        TimingLogger(
            root,
            enable_console=False,
            enable_file=False,
            run_id="ddp",
            rank=r,
            world_size=2,
            total_steps=steps,
            samples_per_step=1,
            handle_sigterm=False,
            collect_memory=False,
        )
        for r in (0, 1)
    ]
    rng = random.Random(seed)
    for lg in loggers:
        lg.mark_step_start()
    for _ in range(steps):
        times = []
        for r in (0, 1):
            t = {k: v * (1 + rng.uniform(-jitter, jitter)) for k, v in STEP.items()}
            if r == 1:
                t["forward"] *= slow_forward
            times.append(t)
        before = [sum(v for k, v in t.items() if k != "optimizer") for t in times]
        arrive = max(before)  # the all-reduce ends when the last rank got there
        for r, lg in enumerate(loggers):
            set_global_timing_logger(lg)
            t = times[r]
            for k in ("data", "h2d", "forward", "loss", "backward"):
                log_timing(k, t[k])
            log_timing("allreduce", arrive - before[r] + COMM)
            log_timing("optimizer", t["optimizer"])
        wall = arrive + COMM + max(t["optimizer"] for t in times) + 1.0
        now[0] += wall / 1000.0
        for lg in loggers:
            lg.step(scalars={"loss": 0.5, "lr": 1.05e-05})
    set_global_timing_logger(None)
    for lg in loggers:
        lg.close()
    return root / "ddp"


def test_slow_forward_on_rank1_is_the_straggler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = ddp_run(tmp_path, monkeypatch, slow_forward=1.25)
    snap = open_run(run)
    walls = {ri.rank: ri.wall.avg for ri in snap.rank_info}
    assert walls[0] == pytest.approx(walls[1], rel=1e-6)  # DDP: equal steps; rank 0 waits ~100 ms
    v = snap.stragglers
    assert v is not None and v.straggler == 1 and snap.straggler == 1
    assert v.excess_ms == pytest.approx(100.0, rel=0.1)  # 25% of a 400 ms forward
    assert v.rank(0).allreduce_ms > v.rank(1).allreduce_ms + 80  # type: ignore[union-attr]
    assert [r for r, _ in v.waits()] == [0]
    assert "rank 0" in v.who_waits() and "rank 1" in v.who_waits()
    assert v.brief().startswith("straggler rank 1 +")
    advice = {a.rule: a for a in advice_for_run(snap)}
    a = advice["straggler"]
    assert a.evidence["rank"] == 1 and a.evidence["region"] == "forward"
    assert "rank 1" in a.line() and "forward" in a.line()
    assert "not the interconnect" in a.action
    # the others' all-reduce wait is explained: no "check the interconnect" advice
    assert "allreduce" not in advice
    text = summary_text(snap).plain
    assert "straggler: rank 1" in text and "waiting for rank 1" in text
    # the thresholds given to the advice are the ones the verdict uses
    assert "straggler" not in {
        a.rule for a in advice_for_run(snap, thresholds=Thresholds(straggler_excess=0.2))
    }
    d = summary_dict(snap)
    assert d["straggler"]["rank"] == 1 and d["straggler"]["verdict"]["ranks"][1]["rank"] == 1


def test_noise_only_is_no_straggler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = ddp_run(tmp_path, monkeypatch, slow_forward=1.0, jitter=0.03)
    snap = open_run(run)
    v = snap.stragglers
    assert v is not None and v.straggler is None and snap.straggler is None
    assert v.reason.startswith("no straggler") and v.brief() == "no straggler"
    assert "straggler" not in {a.rule for a in advice_for_run(snap)}
    assert "no straggler" in summary_text(snap).plain


def rows(
    compute: list[float], wait: float = 0.0, start: int = 1
) -> list[tuple[int, float, float, float]]:
    return [(start + i, c + wait, wait, 0.0) for i, c in enumerate(compute)]


def test_a_few_ms_on_a_long_step_is_not_a_straggler() -> None:
    # two ranks at +3.7 ms on a 1.3 s step (the case)
    v = judge_stragglers({0: rows([1300.0] * 20), 1: rows([1303.7] * 20)})
    assert v is not None and v.straggler is None and "floor" in v.reason


def test_excess_within_noise_is_not_a_straggler() -> None:
    rng = random.Random(1)
    noisy = [1000 * (1 + rng.uniform(-0.3, 0.3)) for _ in range(40)]
    v = judge_stragglers({0: rows(noisy), 1: rows([x * 1.07 for x in reversed(noisy)])})
    assert v is not None and v.straggler is None and "noise" in v.reason


def test_excess_must_recur() -> None:
    # rank 1 is far behind in 5 of 20 steps only: behind on average, not a straggler
    c1 = [1000.0] * 15 + [2000.0] * 5
    v = judge_stragglers({0: rows([1000.0] * 20), 1: rows(c1)})
    assert v is not None and v.straggler is None


def test_needs_enough_common_steps_and_two_ranks() -> None:
    assert judge_stragglers({0: rows([1.0] * 20)}) is None
    v = judge_stragglers({0: rows([1000.0] * 5), 1: rows([1500.0] * 5)})
    assert v is not None and v.straggler is None and "yet" in v.reason
    # only steps both ranks have are compared
    v = judge_stragglers({0: rows([1000.0] * 30), 1: rows([1500.0] * 12, start=19)})
    assert v is not None and v.compared_steps == 12 and v.straggler == 1


@pytest.mark.parametrize("ranks", [2, 3, 4, 7])
def test_excess_is_over_the_median_of_the_other_ranks(ranks: int) -> None:
    rng = random.Random(ranks)
    comp = {
        r: [1000.0 + rng.uniform(-20, 20) + (150.0 if r == 1 else 0.0) for _ in range(25)]
        for r in range(ranks)
    }
    waits = {r: [rng.uniform(0, 30) for _ in range(25)] for r in range(ranks)}
    per = {
        r: [
            (s + 1, c + w + 2.0, w, 2.0)
            for s, (c, w) in enumerate(zip(comp[r], waits[r], strict=True))
        ]
        for r in range(ranks)
    }
    v = judge_stragglers(per)
    assert v is not None and v.straggler == 1 and v.compared_steps == 25

    def med(x: list[float]) -> float:
        x = sorted(x)
        n = len(x)
        return x[n // 2] if n % 2 else (x[n // 2 - 1] + x[n // 2]) / 2

    for r in range(ranks):  # brute force: per step, compute minus the median of the others
        want = med(
            [comp[r][i] - med([comp[o][i] for o in range(ranks) if o != r]) for i in range(25)]
        )
        assert v.rank(r).excess_ms == pytest.approx(want, abs=1e-6)  # type: ignore[union-attr]
        assert v.rank(r).compute_ms == pytest.approx(med(comp[r]), abs=1e-6)  # type: ignore[union-attr]
