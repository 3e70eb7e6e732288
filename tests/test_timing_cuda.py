"""The lazy CUDA-event path, driven on a CPU by a fake GPU whose progress the test controls."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stagewatch import records as R
from stagewatch.timing import TimingLogger, log_timing, set_global_timing_logger, timed


class FakeGPU:
    """A stream: events get the GPU clock when recorded; they complete when the test says
    the GPU got that far (``finish``) or when someone waits on them (``synchronize``)."""

    def __init__(self) -> None:
        self.clock = 0.0  # ms of GPU time
        self.seq = 0  # events recorded so far
        self.done = 0  # events [0, done) have completed
        self.queries = 0
        self.syncs = 0
        self.created = 0

    def run(self, ms: float) -> None:
        """Enqueue ``ms`` of GPU work (advances the time the next event will carry)."""
        self.clock += ms

    def finish(self) -> None:
        self.done = self.seq

    def factory(self) -> FakeEvent:
        self.created += 1
        return FakeEvent(self)


class FakeEvent:
    def __init__(self, gpu: FakeGPU) -> None:
        self.gpu = gpu
        self.seq = -1
        self.t = 0.0

    def record(self) -> None:
        self.seq = self.gpu.seq
        self.gpu.seq += 1
        self.t = self.gpu.clock

    def query(self) -> bool:
        self.gpu.queries += 1
        return 0 <= self.seq < self.gpu.done

    def synchronize(self) -> None:
        self.gpu.syncs += 1
        self.gpu.done = max(self.gpu.done, self.seq + 1)

    def elapsed_time(self, end: FakeEvent) -> float:
        if not (self.query() and end.query()):
            raise RuntimeError("device not ready")
        return end.t - self.t


def make(tmp_path: Path, gpu: FakeGPU, **kw) -> TimingLogger:
    lg = TimingLogger(
        tmp_path,
        enable_console=False,
        file_flush_interval=1,
        device="cuda:0",
        event_factory=gpu.factory,
        collect_memory=False,
        handle_sigterm=False,
        **kw,
    )
    set_global_timing_logger(lg)
    return lg


def records(lg: TimingLogger) -> list[R.Record]:
    path = Path(lg.run_dir) / R.rank_file_name(lg.rank)
    return [R.decode(line) for line in path.read_text().splitlines()]


def steps(lg: TimingLogger) -> list[R.Step]:
    return [r for r in records(lg) if isinstance(r, R.Step)]


def one_step(gpu: FakeGPU, scale: float = 1.0) -> None:
    with timed("forward"):
        gpu.run(1.0 * scale)
        with timed("vrt"):
            for _ in range(2):
                with timed("stage8"):
                    gpu.run(3.0 * scale)
    with timed("backward"):
        gpu.run(5.0 * scale)
    gpu.run(0.5 * scale)  # work outside every region: unaccounted


def test_step_written_once_its_events_complete(tmp_path):
    gpu = FakeGPU()
    lg = make(tmp_path, gpu)
    assert lg.device == "cuda:0"
    one_step(gpu)
    lg.step()
    # the GPU has not reached the events: nothing but run_start on disk, and no waiting
    assert [type(r) for r in records(lg)] == [R.RunStart]
    assert gpu.syncs == 0

    gpu.finish()  # step 1 completes while the CPU queues step 2
    one_step(gpu, scale=2.0)
    lg.step()
    (s1,) = steps(lg)
    assert s1.step == 1
    assert s1.wall_ms == pytest.approx(12.5)
    assert s1.regions == {
        "forward": (pytest.approx(7.0), 1),
        "forward/vrt": (pytest.approx(6.0), 1),
        "forward/vrt/stage8": (pytest.approx(6.0), 2),
        "backward": (pytest.approx(5.0), 1),
    }
    assert R.unaccounted_ms(s1.wall_ms, s1.regions) == pytest.approx(0.5)
    assert gpu.syncs == 0

    lg.close()  # resolves the rest, waiting only now
    assert gpu.syncs > 0
    recs = records(lg)
    s2 = [r for r in recs if isinstance(r, R.Step)][1]
    assert s2.step == 2 and s2.wall_ms == pytest.approx(25.0)
    assert s2.regions["forward/vrt/stage8"] == (pytest.approx(12.0), 2)
    assert isinstance(recs[-1], R.RunEnd) and recs[-1].steps == 2


def test_no_synchronize_while_the_gpu_keeps_up(tmp_path):
    gpu = FakeGPU()
    lg = make(tmp_path, gpu)
    for _ in range(200):
        one_step(gpu)
        lg.step()
        gpu.finish()
    assert gpu.syncs == 0
    assert len(steps(lg)) == 199  # the last one waits for the next step (or close)
    # the event pool settles: events are reused, not created per step
    created = gpu.created
    for _ in range(200):
        one_step(gpu)
        lg.step()
        gpu.finish()
    assert gpu.created == created
    lg.close()


def test_back_pressure_waits_only_when_far_behind(tmp_path):
    gpu = FakeGPU()
    lg = make(tmp_path, gpu, max_pending_steps=3)
    for _ in range(3):
        one_step(gpu)
        lg.step()
    assert gpu.syncs == 0 and steps(lg) == []
    one_step(gpu)
    lg.step()  # a 4th step in flight: wait for the oldest one only
    assert gpu.syncs > 0
    assert [s.step for s in steps(lg)] == [1]
    lg.close()
    assert [s.step for s in steps(lg)] == [1, 2, 3, 4]


def test_cpu_values_and_evals_keep_their_place(tmp_path):
    gpu = FakeGPU()
    lg = make(tmp_path, gpu)
    with timed("data"):
        gpu.run(1.0)
    log_timing("data", 2.0)  # a CPU-measured value joins the same region
    log_timing("allreduce", 4.0)
    lg.step(samples=2, epoch=1, scalars={"loss": 0.25}, memory={"allocated": 10})
    lg.log_eval(1, {"psnr": 30.0})  # step 1 is still pending: the eval must follow it
    gpu.finish()
    lg.step()
    lg.close()
    kinds = [type(r).__name__ for r in records(lg)]
    assert kinds == ["RunStart", "Step", "Eval", "Step", "RunEnd"]
    s1 = steps(lg)[0]
    assert s1.regions["data"] == (pytest.approx(3.0), 2)
    assert s1.regions["allreduce"] == (pytest.approx(4.0), 1)
    assert (s1.samples, s1.epoch, s1.scalars, s1.memory) == (
        2,
        1,
        {"loss": 0.25},
        {"allocated": 10},
    )


def test_begin_end_handles_on_cuda(tmp_path):
    gpu = FakeGPU()
    lg = make(tmp_path, gpu)
    h = lg.begin("backward/vrt/stage8")
    gpu.run(2.5)
    lg.end(h)
    lg.step()
    lg.close()
    assert steps(lg)[0].regions == {"backward/vrt/stage8": (pytest.approx(2.5), 1)}


def test_summary_resolves_ready_steps(tmp_path):
    gpu = FakeGPU()
    lg = make(tmp_path, gpu)
    one_step(gpu)
    lg.step()
    assert lg.get_summary() == {}
    gpu.finish()
    assert lg.get_summary()["backward"]["avg"] == pytest.approx(5.0)
    assert gpu.syncs == 0
    lg.close()


def test_broken_events_warn_once_and_training_goes_on(tmp_path):
    gpu = FakeGPU()
    lg = make(tmp_path, gpu)

    class Broken(FakeEvent):
        def elapsed_time(self, end: FakeEvent) -> float:
            raise RuntimeError("events on different devices")

    with timed("good"):
        gpu.run(1.0)
    bad = Broken(gpu)
    bad.record()
    h = ("bad", bad)
    lg.end(h)
    with pytest.warns(RuntimeWarning, match="could not be timed"):
        lg.step()
        gpu.finish()
        lg.close()
    assert set(steps(lg)[0].regions) == {"good"}


def test_cuda_without_torch_cuda_falls_back_to_cpu_clock(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a real GPU is present")
    with pytest.warns(RuntimeWarning, match="CPU clock"):
        lg = TimingLogger(tmp_path, enable_console=False, device="cuda", handle_sigterm=False)
    with lg.region("a"):
        pass
    lg.step()
    lg.close()
    assert not lg._cuda and steps(lg)[0].regions["a"][1] == 1


class _FakeDevice:
    def __init__(self, spec, index=None):
        if isinstance(spec, _FakeDevice):
            spec, index = spec.type, spec.index
        kind, _, idx = str(spec).partition(":")
        self.type = kind
        self.index = int(idx) if idx else index

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


def fake_torch(gpu: FakeGPU, current: int = 0):
    """Just enough of ``torch`` for the default CUDA wiring (factory, memory, device info)."""
    import types

    calls: list[str] = []

    class Event(FakeEvent):
        def __init__(self, enable_timing: bool = False) -> None:
            assert enable_timing
            super().__init__(gpu)

    def memory_stats(idx):
        calls.append(f"stats:{idx}")
        return {
            "allocated_bytes.all.current": 100,
            "reserved_bytes.all.current": 300,
            "allocated_bytes.all.peak": 200,
        }

    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        current_device=lambda: current,
        Event=Event,
        memory_stats=memory_stats,
        reset_peak_memory_stats=lambda idx: calls.append(f"reset:{idx}"),
        get_device_properties=lambda dev: types.SimpleNamespace(
            name="Fake GPU 80GB", total_memory=80 << 30
        ),
    )
    mod = types.ModuleType("torch")
    mod.__version__ = "9.9.9+fake"
    mod.device = _FakeDevice
    mod.cuda = cuda
    return mod, calls


def test_default_cuda_wiring_with_a_fake_torch(tmp_path, monkeypatch):
    gpu = FakeGPU()
    torch, calls = fake_torch(gpu)
    monkeypatch.setitem(sys.modules, "torch", torch)
    lg = TimingLogger(tmp_path, enable_console=False, device="cuda", handle_sigterm=False)
    assert lg._cuda and lg.device == "cuda:0"
    set_global_timing_logger(lg)
    one_step(gpu)
    lg.step()
    assert calls == ["stats:0", "reset:0"]  # peak is per step
    lg.close()
    start, step = records(lg)[:2]
    assert (start.gpu_name, start.device_memory_total) == ("Fake GPU 80GB", 80 << 30)
    assert start.torch_version == "9.9.9+fake" and start.device == "cuda:0"
    assert step.memory == {"allocated": 100, "reserved": 300, "peak": 200}
    assert step.regions["backward"] == (pytest.approx(5.0), 1)


def test_cuda_device_must_be_current(tmp_path, monkeypatch):
    gpu = FakeGPU()
    torch, _ = fake_torch(gpu, current=0)
    monkeypatch.setitem(sys.modules, "torch", torch)
    with pytest.warns(RuntimeWarning, match=r"set_device\(1\)"):
        lg = TimingLogger(
            tmp_path,
            enable_console=False,
            device="cuda:1",
            handle_sigterm=False,
            collect_memory=False,
        )
    assert not lg._cuda
    lg.close()
