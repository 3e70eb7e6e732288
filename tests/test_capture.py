"""Slow-step capture (stagewatch/timing/capture.py): triggers, traces on disk, limits."""

from __future__ import annotations

import gzip
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from stagewatch import records as R
from stagewatch import traces
from stagewatch.timing import TimingLogger, regions
from stagewatch.timing.capture import Capture, CaptureOptions

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _capture_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STAGEWATCH_CAPTURE", raising=False)  # off for the rest of the suite


class FakeClock:
    """``regions._perf`` under the test's control: each step takes what the test says."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(regions, "_perf", c)
    return c


def _logger(tmp_path: Path, **kw: Any) -> TimingLogger:
    kw.setdefault("enable_console", False)
    kw.setdefault("enable_file", False)
    kw.setdefault("run_id", "cap")
    kw.setdefault("collect_memory", False)
    return TimingLogger(tmp_path, **kw)


def _steps(lg: TimingLogger, clock: FakeClock, walls_ms: list[float]) -> None:
    x = torch.ones(8, 8)
    for w in walls_ms:
        x = x @ x / 8.0  # something for the profiler to see
        clock.t += w / 1000.0
        lg.step()


def _records(tmp_path: Path) -> list[Any]:
    lines = (tmp_path / "cap" / "rank0.jsonl").read_bytes().splitlines()
    return [R.decode(x) for x in lines]


def _trace(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)  # type: ignore[no-any-return]


def test_a_slow_step_captures_the_next_one(tmp_path: Path, clock: FakeClock) -> None:
    lg = _logger(tmp_path)
    _steps(lg, clock, [10.0] * 25 + [50.0] + [10.0] * 3)  # step 26 is 5x the median
    lg.close()
    files = traces.list_traces(tmp_path / "cap")
    assert [(t.step, t.rank) for t in files] == [(27, 0)]
    d = _trace(files[0].path)
    meta = d[traces.META_KEY]
    assert meta["trigger"] == "slow" and meta["step"] == 27 and meta["steps"] == 1
    assert meta["median_ms"] == pytest.approx(10.0)
    assert any(e.get("name") == "aten::mm" for e in d["traceEvents"])
    steps = {r.step: r for r in _records(tmp_path) if isinstance(r, R.Step)}
    assert steps[27].trace == "traces/step27.rank0.json.gz"
    assert not steps[26].trace and not steps[28].trace


def test_no_capture_below_k_times_the_median_or_while_warming_up(
    tmp_path: Path, clock: FakeClock
) -> None:
    lg = _logger(tmp_path, capture=CaptureOptions(k=3.0))
    # a slow first step (warm-up) and steps of 2.9x the median later: nothing captured
    _steps(lg, clock, [80.0] + [10.0] * 24 + [29.0, 10.0, 29.0, 10.0])
    lg.close()
    assert traces.list_traces(tmp_path / "cap") == []
    assert not (tmp_path / "cap" / "traces").exists()


def test_at_most_max_traces_and_n_steps_each(tmp_path: Path, clock: FakeClock) -> None:
    lg = _logger(tmp_path, capture=CaptureOptions(max_traces=2, steps=2))
    walls = [10.0] * 25
    for _ in range(4):
        walls += [60.0] + [10.0] * 24  # slow steps 26, 51, 76, 101
    _steps(lg, clock, walls)
    lg.close()
    files = traces.list_traces(tmp_path / "cap")
    assert [t.step for t in files] == [27, 52]
    assert _trace(files[0].path)[traces.META_KEY]["steps"] == 2
    marked = [r.step for r in _records(tmp_path) if isinstance(r, R.Step) and r.trace]
    assert marked == [27, 28, 52, 53]
    assert lg._cap_at == float("inf")  # spent: the comparison is never true any more


def test_nothing_checked_between_flush_points(tmp_path: Path, clock: FakeClock) -> None:
    """Once warm, on_step runs only for a slow step; the sampling runs at the flush points."""
    lg = _logger(tmp_path, file_flush_interval=25)
    cap = lg._capture
    assert cap is not None
    calls: list[int] = []
    ticks: list[int] = []
    orig, orig_tick = cap.on_step, cap.tick

    def counting(lg_: Any, step: int, wall_ms: float) -> None:
        calls.append(step)
        orig(lg_, step, wall_ms)

    def counting_tick(lg_: Any, step: int, wall_ms: float) -> None:
        ticks.append(step)
        orig_tick(lg_, step, wall_ms)

    cap.on_step = counting  # type: ignore[method-assign]
    cap.tick = counting_tick  # type: ignore[method-assign]
    _steps(lg, clock, [10.0] * 100)
    lg.close()
    assert calls == list(range(1, 21))  # every step while warming up, then none
    assert ticks == [25, 50, 75, 100]  # the flush points
    assert cap.seen == 20 + 4 and cap.median == pytest.approx(10.0)


class _CountingThreshold:
    """A stand-in for ``_cap_at`` that counts the comparisons made with it (never true)."""

    def __init__(self) -> None:
        self.n = 0

    def __le__(self, other: float) -> bool:  # ``wall_ms >= self`` lands here
        self.n += 1
        return False

    __ge__ = __lt__ = __gt__ = __le__


def test_one_comparison_per_step_while_nothing_is_captured(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The structure issue 22 asks for: a warm logger with nothing to capture makes one
    comparison with ``_cap_at`` per step and reads no other capture state."""
    reads: list[str] = []

    class Spy(TimingLogger):
        def __getattribute__(self, name: str) -> Any:
            if name.startswith("_cap"):
                reads.append(name)
            return super().__getattribute__(name)

    lg = Spy(
        tmp_path,
        enable_console=False,
        enable_file=False,
        run_id="cap",
        collect_memory=False,
        file_flush_interval=10**6,
    )
    _steps(lg, clock, [10.0] * 25)  # warm: the slow trigger armed
    assert lg._capture is not None and lg._cap_at == pytest.approx(30.0)
    counter = _CountingThreshold()
    lg._cap_at = counter  # type: ignore[assignment]
    reads.clear()
    _steps(lg, clock, [10.0] * 40)
    assert counter.n == 40
    assert reads == ["_cap_at"] * 40
    lg._cap_at = 30.0
    lg.close()


def test_a_request_is_seen_at_the_next_flush_point(tmp_path: Path, clock: FakeClock) -> None:
    """A request written mid-run is seen at the first flush point (here every 2 s: 16 steps
    of 125 ms) and captures the step after it; the steps between look at nothing."""
    lg = _logger(tmp_path, file_flush_interval=10**6)  # flush points: every 2 s only
    assert lg._capture is not None
    lg._capture.poll_s = 0.0
    _steps(lg, clock, [125.0] * 20)  # a flush point at step 16
    traces.write_request(tmp_path / "cap")
    _steps(lg, clock, [125.0] * 11)  # steps 21-31: none is a flush point
    assert lg._capture.taken == 0 and lg._capture.requested == 0
    _steps(lg, clock, [125.0] * 3)  # step 32 (2 s after 16) sees it: step 33 is captured
    lg.close()
    assert [t.step for t in traces.list_traces(tmp_path / "cap")] == [33]


def test_request_file_captures_on_every_rank_once(tmp_path: Path, clock: FakeClock) -> None:
    lg = _logger(tmp_path, file_flush_interval=1)  # a flush point (and a look) every step
    assert lg._capture is not None
    lg._capture.poll_s = 0.0
    _steps(lg, clock, [10.0] * 3)
    traces.write_request(tmp_path / "cap", steps=2)
    _steps(lg, clock, [10.0] * 8)  # the request is seen once, not at every poll
    lg.close()
    files = traces.list_traces(tmp_path / "cap")
    assert [t.step for t in files] == [5]
    meta = _trace(files[0].path)[traces.META_KEY]
    assert meta["trigger"] == "request" and meta["steps"] == 2


def test_a_request_older_than_the_run_is_not_taken(tmp_path: Path, clock: FakeClock) -> None:
    (tmp_path / "cap").mkdir()
    traces.write_request(tmp_path / "cap")
    lg = _logger(tmp_path, file_flush_interval=1)
    assert lg._capture is not None
    lg._capture.poll_s = 0.0
    _steps(lg, clock, [10.0] * 5)
    lg.close()
    assert traces.list_traces(tmp_path / "cap") == []


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="no SIGUSR2")
def test_sigusr2_captures_and_chains_the_earlier_handler(tmp_path: Path, clock: FakeClock) -> None:
    got: list[int] = []

    def mine(signum: int, frame: Any) -> None:
        got.append(signum)

    prev = signal.signal(signal.SIGUSR2, mine)
    try:
        lg = _logger(tmp_path)
        _steps(lg, clock, [10.0] * 3)
        os.kill(os.getpid(), signal.SIGUSR2)
        _steps(lg, clock, [10.0] * 3)
        lg.close()
        assert got == [signal.SIGUSR2]
        files = traces.list_traces(tmp_path / "cap")
        assert [t.step for t in files] == [5]  # noticed at the end of step 4
        assert _trace(files[0].path)[traces.META_KEY]["trigger"] == "signal"
        assert signal.getsignal(signal.SIGUSR2) is mine  # closed: the earlier one again
    finally:
        signal.signal(signal.SIGUSR2, prev)


def test_the_trace_is_on_the_unix_clock_within_its_anchor(tmp_path: Path, clock: FakeClock) -> None:
    import time

    lg = _logger(tmp_path, file_flush_interval=1)
    lg._capture.poll_s = 0.0  # type: ignore[union-attr]
    traces.write_request(tmp_path / "cap")
    before = time.time() * 1e6
    _steps(lg, clock, [10.0] * 3)
    after = time.time() * 1e6
    lg.close()
    d = _trace(traces.list_traces(tmp_path / "cap")[0].path)
    off, err = traces.profiler_to_unix_us(d["traceEvents"], d[traces.META_KEY]["anchors"])
    assert 0 <= err < 50_000
    mm = [e for e in d["traceEvents"] if e.get("name") == "aten::mm"]
    assert mm and all(before - err <= e["ts"] + off <= after + err for e in mm)


def test_capture_off(tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    lg = _logger(tmp_path, capture=False)
    assert lg._capture is None and lg._cap_at == float("inf")
    lg.close()
    monkeypatch.setenv("STAGEWATCH_CAPTURE", "0")
    lg = _logger(tmp_path, run_id="cap2")
    assert lg._capture is None
    lg.close()


@pytest.mark.parametrize(
    ("kw", "bad"),
    [
        ({"k": 1.0}, "k"),
        ({"steps": 0}, "steps"),
        ({"max_traces": -1}, "max_traces"),
        ({"k": "3"}, "k"),
        ({"poll_s": -1}, "poll_s"),
    ],
)
def test_bad_options_are_refused(kw: dict[str, Any], bad: str) -> None:
    with pytest.raises(ValueError, match=f"CaptureOptions.{bad}"):
        CaptureOptions(**kw)


def test_capture_must_be_a_bool_or_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="capture must be"):
        _logger(tmp_path, capture={"k": 3})
    assert not (tmp_path / "cap").exists()  # refused before anything was written


def test_a_failing_profiler_turns_capture_off_without_raising(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("no profiler here")

    monkeypatch.setattr(torch.autograd.profiler, "profile", boom)
    lg = _logger(tmp_path)
    with pytest.warns(Warning, match="capture"):
        _steps(lg, clock, [10.0] * 25 + [50.0] + [10.0] * 3)
    lg.close()
    assert traces.list_traces(tmp_path / "cap") == []
    assert all(not r.trace for r in _records(tmp_path) if isinstance(r, R.Step))


def test_no_capture_while_the_programs_own_profiler_runs(tmp_path: Path, clock: FakeClock) -> None:
    # nesting a second Kineto session ends the program's own at its exit (and crashed it)
    lg = _logger(tmp_path)
    cpu = [torch.profiler.ProfilerActivity.CPU]
    busy = pytest.warns(Warning, match="another torch profiler is running")
    with torch.profiler.profile(activities=cpu) as prof, busy:
        _steps(lg, clock, [10.0] * 25 + [50.0] + [10.0] * 3)
    assert any(e.name == "aten::mm" for e in prof.events())  # theirs is whole
    assert traces.list_traces(tmp_path / "cap") == []
    _steps(lg, clock, [10.0] * 25 + [50.0, 10.0])  # theirs ended: slow steps captured again
    lg.close()
    assert [t.step for t in traces.list_traces(tmp_path / "cap")] == [56]


ALONE = """
import os, sys, time, torch
from stagewatch import CaptureOptions, TimingLogger
lg = TimingLogger(sys.argv[1], enable_console=False, enable_file=False, run_id="alone",
                  collect_memory=False, capture=CaptureOptions(warm=3))
for s in range(8):
    time.sleep(0.1 if s == 5 else 0.005)
    lg.step()
lg.close()
n = len(os.listdir(os.path.join(sys.argv[1], "alone", "traces")))
print(n, "torch._inductor" in sys.modules)
"""


def test_a_capture_does_not_import_inductor(tmp_path: Path) -> None:
    # torch.profiler.profile's front end imports torch._inductor: 1-2 s in the step, and the
    # import pins the default process group, so a gloo job could abort at exit afterwards.
    import subprocess
    import sys

    from _trainer_helpers import ROOT, env_for_subprocess

    script = tmp_path / "alone.py"
    script.write_text(ALONE)
    env = env_for_subprocess()
    env.pop("STAGEWATCH_CAPTURE", None)
    r = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-2:] == ["1", "False"]


def test_capture_state_is_bounded() -> None:
    from stagewatch.timing.clean import WarnOnce

    c = Capture("/nonexistent", 0, WarnOnce())
    for i in range(10_000):
        c._sample(float(i % 7 + 1))
    assert len(c._ring) == 64 and c.seen == 10_000


def test_microsecond_steps_never_trigger(tmp_path: Path, clock: FakeClock) -> None:
    """k x the median of 10 µs steps is noise: a step must also last min_ms (1 ms)."""
    lg = _logger(tmp_path)
    _steps(lg, clock, [0.01] * 25 + [0.5, 0.01, 0.9, 0.01])
    assert lg._capture is not None and lg._capture.taken == 0
    _steps(lg, clock, [1.5, 0.01])  # 150x the median and over 1 ms: taken
    lg.close()
    assert [t.step for t in traces.list_traces(tmp_path / "cap")] == [31]


def test_a_lasting_change_of_pace_costs_one_capture_not_all(
    tmp_path: Path, clock: FakeClock
) -> None:
    lg = _logger(tmp_path)
    _steps(lg, clock, [10.0] * 25 + [50.0] * 80)  # the pace changes for good at step 26
    lg.close()
    assert len(traces.list_traces(tmp_path / "cap")) <= 2


def test_a_resumed_run_counts_its_earlier_traces(tmp_path: Path, clock: FakeClock) -> None:
    folder = tmp_path / "cap" / "traces"
    folder.mkdir(parents=True)
    for s in (3, 9):
        (folder / traces.trace_name(s, 0)).write_bytes(b"")
    (folder / traces.trace_name(4, 1)).write_bytes(b"")  # another rank's: not counted
    lg = _logger(tmp_path, capture=CaptureOptions(max_traces=3))
    _steps(lg, clock, [10.0] * 25 + [60.0] + [10.0] * 25 + [60.0] + [10.0] * 3)
    lg.close()
    mine = [t.step for t in traces.list_traces(tmp_path / "cap") if t.rank == 0]
    assert mine == [3, 9, 27]  # one more, then the run's 3 are spent


def test_cuda_steps_resolved_later_still_carry_their_trace(
    tmp_path: Path, clock: FakeClock
) -> None:
    """On CUDA a step record is written once its events complete (after the capture ended):
    its mark waits for it; the GPU clock restarts after the capture's own time."""
    from test_timing_cuda import FakeGPU

    gpu = FakeGPU()
    lg = _logger(tmp_path, device="cuda:0", event_factory=gpu.factory, file_flush_interval=1)
    assert lg._capture is not None
    lg._capture.poll_s = 0.0
    for i in range(1, 7):
        if i == 3:
            traces.write_request(tmp_path / "cap")
        with lg.region("forward"):
            gpu.run(4.0)
        clock.t += 0.004
        lg.step()  # the GPU is left behind: records wait for finish()
    gpu.finish()
    lg.close()
    recs = {r.step: r for r in _records(tmp_path) if isinstance(r, R.Step)}
    # asked during step 3, seen at its end: step 4 is captured
    assert [s for s, r in sorted(recs.items()) if r.trace] == [4]
    assert recs[4].trace == "traces/step4.rank0.json.gz"
    assert all(r.wall_ms == pytest.approx(4.0) for r in recs.values())  # GPU time per step
    assert [t.step for t in traces.list_traces(tmp_path / "cap")] == [4]
