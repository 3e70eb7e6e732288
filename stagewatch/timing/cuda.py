"""GPU timing by CUDA event pairs, resolved lazily; and per-step memory readers.

Regions on a CUDA device record an event on the current stream when they start and end.
Events come from a reusable pool; a step's events are only *queried* (never waited on)
until the whole step has completed on the GPU, normally one step later, so timing never
adds ``torch.cuda.synchronize()`` to the step. ``torch`` is imported only here and only
when a CUDA device is asked for, never for CPU runs.

The event factory is pluggable: anything with ``record()``, ``query()``,
``elapsed_time(end)`` (milliseconds) and ``synchronize()`` works, which is how the tests
drive this path on a CPU.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from stagewatch.timing.jsonl import warn


class Event(Protocol):
    """The subset of ``torch.cuda.Event`` the timing core uses."""

    def record(self) -> None: ...

    def query(self) -> bool: ...

    def elapsed_time(self, end_event: Any) -> float: ...

    def synchronize(self) -> None: ...


EventFactory = Callable[[], Event]


def torch_event_factory(device: Any) -> EventFactory:
    """Timing-enabled ``torch.cuda.Event`` objects; raises if CUDA is not usable or
    ``device`` is not the current CUDA device (events go to the current device's stream)."""
    import torch  # deferred: CPU runs never import torch through the timing core

    if not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available")
    dev = torch.device(device)
    if dev.index is not None and torch.cuda.current_device() != dev.index:
        # events are recorded on the current stream of the *current* device
        raise RuntimeError(
            f"the current CUDA device is cuda:{torch.cuda.current_device()}, not {dev}; "
            f"call torch.cuda.set_device({dev.index}) before creating the logger"
        )
    cuda_event = torch.cuda.Event

    def make() -> Event:
        return cuda_event(enable_timing=True)

    return make


class EventPool:
    """Reusable events: its size settles at the number of events in flight (bounded)."""

    __slots__ = ("_factory", "_free", "created")

    def __init__(self, factory: EventFactory) -> None:
        self._factory = factory
        self._free: list[Event] = []
        self.created = 0

    def get(self) -> Event:
        try:
            return self._free.pop()
        except IndexError:
            self.created += 1
            return self._factory()

    def put(self, ev: Event) -> None:
        self._free.append(ev)

    def free_count(self) -> int:
        return len(self._free)


class PendingStep:
    """A step whose GPU events may not have completed yet."""

    __slots__ = (
        "after",
        "checked",
        "cpu_values",
        "end",
        "epoch",
        "events",
        "memory",
        "samples",
        "scalars",
        "start",
        "step",
        "time",
    )

    def __init__(
        self,
        step: int,
        start: Event,
        end: Event,
        events: list[tuple[str, Event, Event]],
        cpu_values: dict[str, list[float]],
        time: float,
        epoch: int,
        samples: int,
        scalars: dict[str, float] | None,
        memory: dict[str, int] | None,
    ) -> None:
        self.step = step
        self.start = start
        self.end = end
        self.events = events
        self.cpu_values = cpu_values
        self.time = time
        self.epoch = epoch
        self.samples = samples
        self.scalars = scalars
        self.memory = memory
        self.checked = 0  # events[:checked] are known to be complete
        self.after: list[Any] = []  # records to write right after this step (evals)

    def ready(self) -> bool:
        """True once every event of the step has completed; only queries, never waits.

        The end-of-step marker is queried first: while it is pending (the usual case one
        step behind) this costs a single query.
        """
        if not (self.end.query() and self.start.query()):
            return False
        evs = self.events
        i = self.checked
        n = len(evs)
        while i < n:
            _, s, e = evs[i]
            if not (e.query() and s.query()):
                self.checked = i
                return False
            i += 1
        self.checked = n
        return True

    def wait(self) -> None:
        """Block until the step's events have completed (used at close and as back-pressure)."""
        self.end.synchronize()
        for _, s, e in self.events:
            s.synchronize()
            e.synchronize()

    def resolve(self) -> tuple[float, dict[str, tuple[float, int]], int]:
        """``(wall_ms, regions, failures)`` from completed events plus CPU-logged values."""
        regions: dict[str, list[float]] = {k: [v[0], v[1]] for k, v in self.cpu_values.items()}
        failures = 0
        for name, s, e in self.events:
            try:
                ms = float(s.elapsed_time(e))
            except Exception:  # e.g. events recorded on different devices
                failures += 1
                continue
            acc = regions.get(name)
            if acc is None:
                regions[name] = [ms, 1]
            else:
                acc[0] += ms
                acc[1] += 1
        wall = float(self.start.elapsed_time(self.end))
        return wall, {k: (v[0], int(v[1])) for k, v in regions.items()}, failures


class GpuSteps:
    """A logger's CUDA clock: its event pool, the marker event that ends the previous step,
    and the steps waiting for their events. A step is emitted once its events completed,
    usually one step behind; nothing here ever synchronizes, but to apply back-pressure
    (more than ``max_pending`` steps waiting) and at close."""

    __slots__ = ("marker", "max_pending", "pending", "pool")

    def __init__(self, factory: EventFactory, max_pending: int) -> None:
        self.pool = EventPool(factory)
        self.pending: deque[PendingStep] = deque()
        self.max_pending = max(1, int(max_pending))
        self.marker: Event | None = None

    def start(self) -> None:
        """The coming step starts at an event recorded now (the old marker may still end a
        pending step: it is not pooled)."""
        m = self.pool.get()
        m.record()
        self.marker = m

    def end_step(self, step: int, events: list[tuple[str, Event, Event]], **meta: Any) -> None:
        """End step ``step`` at a new marker; ``meta``: PendingStep's other fields."""
        marker = self.pool.get()
        marker.record()
        assert self.marker is not None
        self.pending.append(PendingStep(step, self.marker, marker, events, **meta))
        self.marker = marker

    def defer(self, rec: Any) -> bool:
        """Write ``rec`` right after the last pending step (True), if one is pending."""
        if not self.pending:
            return False
        self.pending[-1].after.append(rec)
        return True

    def completed(
        self, block: bool, warn_once: Callable[[str, str], None]
    ) -> Iterator[tuple[PendingStep, float, dict[str, tuple[float, int]]]]:
        """``(step, wall_ms, regions)`` of each pending step whose events completed, in
        order (all of them when ``block``); their events go back to the pool."""
        pending, pool = self.pending, self.pool
        while pending:
            p = pending[0]
            if not p.ready():
                if not block and len(pending) <= self.max_pending:
                    return
                try:  # back-pressure when the CPU runs far ahead, or close(): wait
                    p.wait()
                except Exception as e:
                    warn_once("wait", f"could not wait for GPU events: {e}")
                    pending.clear()
                    return
            pending.popleft()
            try:
                wall, by_name, failures = p.resolve()
            except Exception as e:
                warn_once("resolve", f"step {p.step}: GPU timing failed: {e}")
                continue
            if failures:
                warn_once("elapsed", f"step {p.step}: {failures} region(s) could not be timed")
            pool.put(p.start)
            for _, s, e in p.events:
                pool.put(s)
                pool.put(e)
            yield p, wall, by_name


# --------------------------------------------------------------------------- memory

MemoryReader = Callable[[], "dict[str, int] | None"]


def cuda_memory_reader(device: Any) -> MemoryReader:
    """Allocated / reserved bytes at step end and peak allocated since the previous step.

    Resets torch's peak-allocated counter of the device every step (that is what makes
    the peak per step); keep the run's peak from the records (max of ``peak``).
    """
    import torch

    dev = torch.device(device)
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    cuda = torch.cuda

    def read() -> dict[str, int]:
        # one stats snapshot instead of three calls that each build it
        st = cuda.memory_stats(idx)
        out = {
            "allocated": int(st.get("allocated_bytes.all.current", 0)),
            "reserved": int(st.get("reserved_bytes.all.current", 0)),
            "peak": int(st.get("allocated_bytes.all.peak", 0)),
        }
        cuda.reset_peak_memory_stats(idx)
        return out

    return read


_statm: tuple[int, int] | None = None  # (pid, fd)


def _open_statm() -> int:
    """A shared descriptor on ``/proc/self/statm``, reopened after a fork (``/proc/self``
    is resolved when opened, so a forked child must not read its parent's file)."""
    global _statm
    pid = os.getpid()
    if _statm is None or _statm[0] != pid:
        try:
            fd = os.open("/proc/self/statm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            fd = -1
        _statm = (pid, fd)
    return _statm[1]


def cpu_memory_reader() -> MemoryReader | None:
    """Process resident set size (``rss``, bytes) from ``/proc/self/statm``; else the
    peak RSS from ``resource`` (``rss_peak``); None when neither is available."""
    fd = _open_statm()
    if fd >= 0:
        page = os.sysconf("SC_PAGE_SIZE")

        def read_statm() -> dict[str, int] | None:
            try:
                fields = os.pread(_open_statm(), 256, 0).split()
                return {"rss": int(fields[1]) * page}
            except (OSError, IndexError, ValueError):
                return None

        return read_statm
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux

    def read_rusage() -> dict[str, int] | None:
        return {"rss_peak": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale}

    return read_rusage


def cuda_device_info(device: Any) -> tuple[str | None, int | None]:
    """(GPU name, total memory bytes) of a CUDA device, (None, None) if unknown."""
    try:
        import torch

        props = torch.cuda.get_device_properties(torch.device(device))
        return str(props.name), int(props.total_memory)
    except Exception:
        return None, None


def current_cuda_device() -> str:
    """``cuda:N`` of torch's current device (``cuda`` if unknown)."""
    try:
        import torch

        return f"cuda:{torch.cuda.current_device()}"
    except Exception:
        return "cuda"


def open_clock(
    device: Any, event_factory: EventFactory | None, max_pending: int
) -> tuple[str, GpuSteps | None]:
    """``(device name, CUDA clock)``: a clock of CUDA events for a CUDA ``device`` when events
    can be made (``event_factory``: instead of ``torch.cuda.Event``, tests), else None
    (regions are timed by ``perf_counter``), with one warning saying why."""
    dev = "cpu" if device is None else str(device)
    if not dev.startswith("cuda"):
        return dev, None
    factory = event_factory
    if factory is None:
        try:
            factory = torch_event_factory(dev)
        except Exception as e:
            warn(f"device {dev!r}: {e}; timing regions by CPU clock instead")
            return dev, None
        if dev == "cuda":
            dev = current_cuda_device()
    return dev, GpuSteps(factory, max_pending)


def memory_reader(device: str, cuda: bool) -> MemoryReader | None:
    """What measures each step's memory: the CUDA allocator's figures, else the process RSS
    (None, with one warning, where neither can be read)."""
    try:
        return cuda_memory_reader(device) if cuda else cpu_memory_reader()
    except Exception as e:
        warn(f"memory is not recorded: {e}")
        return None
