"""TimingLogger: named regions per training step, written as records, text and a panel.

Hot-path rules: a region costs about a microsecond on CPU (``perf_counter``), a CUDA
region costs two event records and never a synchronize; a disabled logger (or no
logger) makes every call a no-op of a few tens of nanoseconds; per-step work and memory
do not grow with the number of steps.

The logger owns the run: it opens the clock and the outputs, collects each step's region
values, resolves CUDA steps, keeps the statistics and closes the run. The regions
themselves are in ``regions.py``, the outputs in ``sinks.py``, the checks of user values
in ``clean.py`` and what happens at exit, fork and SIGTERM in ``lifecycle.py``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from stagewatch import records as R
from stagewatch.timing import capture as cap
from stagewatch.timing import clean, clocks, regions
from stagewatch.timing.clean import WarnOnce, short
from stagewatch.timing.cuda import (
    EventFactory,
    EventPool,
    GpuSteps,
    MemoryReader,
    cuda_device_info,
    memory_reader,
    open_clock,
)
from stagewatch.timing.identity import rank_and_world, resolve_run_id, run_start
from stagewatch.timing.lifecycle import ClosesOnExit, SigtermHook, track, untrack
from stagewatch.timing.regions import (
    NOOP,
    CpuRegion,
    CudaRegion,
    GlobalCpuRegion,
    GlobalCudaRegion,
    cut_open,
    env_disabled,
    noop_for,
)
from stagewatch.timing.sinks import Sink
from stagewatch.timing.stats import RegionStats, RunningStats
from stagewatch.timing.text_log import format_summary
from stagewatch.timing.writer import QUEUE_RECORDS, RecordWriter, open_sinks

FLUSH_SECONDS = 2.0  # also flush when this long has passed, so a live monitor stays current
WAKE_STEPS = 64  # the writer processes the queue at least every this many steps


def set_global_timing_logger(logger: TimingLogger | None) -> None:
    """Make ``logger`` the target of :func:`timed` and :func:`log_timing` (None: none)."""
    regions._global = logger
    regions._active = logger if logger is not None and not logger._closed else None


def get_global_timing_logger() -> TimingLogger | None:
    """The logger set by :func:`set_global_timing_logger` (None: none)."""
    return regions._global


class TimingLogger(ClosesOnExit):
    """Per-step region timing for one rank of one run.

    Drop-in for the original ``TimingLogger(log_dir, enable_console, enable_file,
    console_update_interval, file_flush_interval)``. ``log_dir`` is the log root: this run
    writes ``<log_dir>/<run_id>/rank<R>.jsonl`` (records) and ``timing_rank<R>.log`` (text).

    ``device``: ``"cuda"``/``"cuda:N"``/a ``torch.device`` times regions with CUDA events
    (resolved one step later); anything else uses ``perf_counter``. ``event_factory``
    replaces ``torch.cuda.Event`` (tests). The step wall time is CPU time between
    ``step()`` calls, or on CUDA the GPU time between the end-of-step markers.
    ``capture``: True, False or a ``CaptureOptions`` (slow-step capture, docs/timing.md).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] = R.DEFAULT_LOG_ROOT,
        enable_console: bool = True,
        enable_file: bool = True,
        console_update_interval: int = 10,
        file_flush_interval: int = 50,
        *,
        enable_jsonl: bool = True,
        enabled: bool = True,
        run_id: str | None = None,
        run_name: str = "run",
        rank: int | None = None,
        world_size: int | None = None,
        config: Mapping[str, Any] | None = None,
        total_steps: int | None = None,
        samples_per_step: int | None = None,
        device: Any = None,
        start_step: int = 0,
        event_factory: EventFactory | None = None,
        console_stream: Any = None,
        collect_memory: bool = True,
        handle_sigterm: bool = True,
        max_pending_steps: int = 8,
        max_region_names: int = 4096,
        background_writer: bool = False,
        writer_queue: int = QUEUE_RECORDS,
        capture: bool | cap.CaptureOptions = True,
    ) -> None:
        self.console_update_interval = clean.positive_int(
            console_update_interval, "console_update_interval"
        )
        self.file_flush_interval = clean.positive_int(file_flush_interval, "file_flush_interval")
        self.enabled = bool(enabled) and not env_disabled()
        self.log_dir = os.fspath(log_dir)
        start_step = clean.start_step(start_step)
        cap_options = cap.options(capture)
        self._init_state(start_step, max_region_names)
        if not self.enabled:
            return
        self.rank, self.world_size = rank_and_world(rank, world_size)
        self.run_id = resolve_run_id(run_id, run_name, self.world_size)
        self.run_dir = R.run_dir(self.log_dir, self.run_id)
        self._open_clock(device, event_factory, max_pending_steps)
        if collect_memory:
            self._memory = memory_reader(self.device, self._cuda)
            self._memory_plain = None if self._cuda else self._memory  # RSS: needs no check
        self._open_sinks(enable_jsonl, enable_file, enable_console, console_stream)
        self._write_run_start(config, total_steps, samples_per_step, start_step, event_factory)
        self._writer = RecordWriter.of(self, writer_queue, background_writer)
        self._start_clock()
        cap.attach(self, cap_options)
        if handle_sigterm:
            self._sigterm = SigtermHook.install(self)
        track(self)

    @classmethod
    def from_config(
        cls, log_section: Mapping[str, Any] | None, *, config_file: str | None = None, **kwargs: Any
    ) -> TimingLogger:
        """A logger from the ``LOG:`` section of a config; ``kwargs`` win over it.

        Keys: ``ENABLE_TIMING_LOG``, ``TIMING_CONSOLE``, ``TIMING_FILE``, ``TIMING_JSONL``
        (booleans), ``TIMING_CONSOLE_INTERVAL`` (default 10), ``TIMING_FILE_INTERVAL``
        (default 50). Other keys of the section are ignored. A bad value raises
        :class:`stagewatch.errors.ConfigError` naming ``LOG.<KEY>``.
        """
        args = clean.log_section(log_section, config_file)
        args.update(kwargs)
        return cls(**args)

    # ------------------------------------------------------------------ opening

    def _init_state(self, start_step: int, max_region_names: int) -> None:
        """Everything a logger holds, as for a disabled one (no run, no outputs, CPU clock)."""
        self.run_id: str | None = None
        self.run_dir: str | None = None
        self.rank, self.world_size = 0, 1
        self.device = "cpu"
        self.step_count = start_step  # number of the last step() call
        self.steps_written = start_step  # number of the last step record emitted
        self._closed = not self.enabled
        self._signalled = False  # a SIGTERM handler of the program raised (e.g. sys.exit)
        # _lock: the current step's region values (held for a few dict operations by region
        # exits on any thread). _io: everything else that changes state or writes (step(),
        # log_eval(), flush(), close()...), so records from any thread are never lost. Re-entrant:
        # a SIGTERM handler may flush while the main thread is inside step().
        self._lock = threading.Lock()
        self._io = threading.RLock()
        self._tls = threading.local()
        self._cur: dict[str, list[float]] = {}
        self._raw: list[tuple[str, float]] = []  # instrument()'s (name, ms) until step()
        self._cur_ev: list[tuple[str, Any, Any]] = []
        self._stats = RegionStats(max_region_names)
        self._wall = RunningStats()
        self._unaccounted = RunningStats()
        self.peak_memory: dict[str, int] = {}
        self._epoch = 0
        self._samples_per_step: int | None = None
        self._cuda = False
        self._gpu: GpuSteps | None = None  # the CUDA clock
        self._pool: EventPool | None = None  # its event pool (CUDA regions take events here)
        self._region_cls: type[CpuRegion] = CpuRegion
        self._gregion_cls: type[CpuRegion] = GlobalCpuRegion
        self._memory: MemoryReader | None = None
        self._memory_plain: MemoryReader | None = None  # a reader whose figures need no check
        self._sinks: tuple[Sink, ...] = ()
        self._writer: RecordWriter | None = None  # statistics and sinks, fed by a queue
        self._kick_every = WAKE_STEPS
        self._since_kick = 0
        self._since_flush = 0
        self._last_flush = self._t_last = 0.0
        self._warn_once = WarnOnce()
        self._sigterm: SigtermHook | None = None  # installed as the SIGTERM handler
        self._pid = os.getpid()
        self._capture: cap.Capture | None = None  # called at wall_ms >= _cap_at (capture.py)
        self._cap_at, self._cap_marks = cap.INF, cap.NO_MARKS

    def _open_clock(
        self, device: Any, event_factory: EventFactory | None, max_pending: int
    ) -> None:
        """CUDA events for a CUDA ``device`` (when events can be made), else ``perf_counter``."""
        self.device, self._gpu = open_clock(device, event_factory, max_pending)
        self._cuda = self._gpu is not None
        self._pool = self._gpu.pool if self._gpu is not None else None
        self._region_cls = CudaRegion if self._cuda else CpuRegion
        self._gregion_cls = GlobalCudaRegion if self._cuda else GlobalCpuRegion

    def _open_sinks(
        self, enable_jsonl: bool, enable_file: bool, enable_console: bool, console_stream: Any
    ) -> None:
        assert self.run_dir is not None
        console = enable_console and self.rank == 0  # the panel is rank 0's
        self._sinks = open_sinks(
            self.run_dir, self.rank, enable_jsonl, enable_file, console, console_stream, self
        )
        self._last_flush = regions._perf()
        if console:  # the writer draws the panel every interval steps
            self._kick_every = min(WAKE_STEPS, self.console_update_interval)

    def _write_run_start(
        self,
        config: Mapping[str, Any] | None,
        total_steps: int | None,
        samples_per_step: int | None,
        start_step: int,
        event_factory: EventFactory | None,
    ) -> None:
        assert self.run_id is not None
        self._samples_per_step = clean.opt_count(samples_per_step, "samples_per_step")
        start = run_start(
            self.run_id,
            self.rank,
            self.world_size,
            self.device,
            config=config,
            total_steps=clean.opt_count(total_steps, "total_steps"),
            samples_per_step=self._samples_per_step,
            start_step=start_step,
            gpu=cuda_device_info(self.device) if self._cuda and event_factory is None else None,
            clock_ms=clocks.for_logger(self),  # a collective, like the run id (clocks.py)
        )
        for sink in self._sinks:
            sink.start(start)

    def _start_clock(self) -> None:
        """The first step starts now (on CUDA: at an event recorded now)."""
        self._t_last = regions._perf()
        if self._gpu is not None:
            self._gpu.start()

    # ------------------------------------------------------------------ regions

    def region(self, name: str) -> Any:
        """Like :func:`timed`, on this logger (context manager or decorator)."""
        if self._closed:
            return noop_for(name)
        if type(name) is not str:
            return self._bad_name(name)
        return self._region_cls(self, name)

    def _bad_name(self, name: Any) -> Any:
        clean.bad_name(name, self._warn_once)
        return NOOP

    def begin(self, name: str) -> Any:
        """Start region ``name`` (absolute, no nesting); thread-safe. Returns a handle."""
        if self._closed:
            return None
        if type(name) is not str:
            self._bad_name(name)
            return None
        if name[:1] == "/":
            name = name[1:]
        if self._cuda:
            ev = self._pool.get()  # type: ignore[union-attr]
            ev.record()
            return (name, ev)
        return (name, regions._perf())

    def end(self, handle: Any) -> None:
        """End a region started by :meth:`begin` (possibly on another thread)."""
        if handle is None or self._closed:
            return
        try:
            name, start = handle
        except (TypeError, ValueError):
            self._warn_once("handle", f"end({short(handle)}): not a handle from begin(); ignored")
            return
        if self._cuda:
            ev = self._pool.get()  # type: ignore[union-attr]
            ev.record()
            with self._lock:
                self._cur_ev.append((name, start, ev))
            return
        self._add(name, (regions._perf() - start) * 1000.0)

    def log(self, name: str, ms: float) -> None:
        """Add a measured value (ms) to region ``name`` (absolute) of the current step."""
        if self._closed:
            return
        if type(name) is not str:
            self._bad_name(name)
            return
        if name[:1] == "/":
            name = name[1:]
        if type(ms) is not float or not 0.0 <= ms < R.MAX_MS:  # (NaN too) checked out of line
            ms = clean.duration(name, ms, self._warn_once)
            if ms is None:
                return
        self._add(name, ms)

    def _add(self, name: str, ms: float) -> None:
        lock = self._lock
        lock.acquire()
        try:
            acc = self._cur.get(name)
            if acc is None:
                self._cur[name] = [ms, 1]
            else:
                acc[0] += ms
                acc[1] += 1
        finally:
            lock.release()

    # ------------------------------------------------------------------ steps

    def mark_step_start(self) -> None:
        """Start the clock of the coming step now, discarding regions timed since the last
        ``step()`` (call it right before the loop so that setup time is not in step 1)."""
        if self._closed:
            return
        with self._io:
            with self._lock:
                self._cur, self._cur_ev = {}, []
                del self._raw[:]
            self._t_last = regions._perf()
            if self._gpu is not None:
                self._gpu.start()

    def step(
        self,
        samples: int | None = None,
        epoch: int | None = None,
        scalars: Mapping[str, Any] | None = None,
        memory: Mapping[str, int] | None = None,
    ) -> None:
        """End the current step. ``scalars``: e.g. loss and lr (pass Python floats: a
        tensor is converted with ``float()``, which waits for the GPU). ``memory``
        replaces the measured memory of this step.

        Safe from any thread (calls are serialised; each gets its own step number). A
        region still open on the calling thread is closed here, with one warning: its time
        so far counts in this step and its own exit later does nothing (docs/timing.md).
        """
        if self._closed:
            return
        with self._io:
            if self._closed:  # closed by another thread while this one waited
                return
            self._step(samples, epoch, scalars, memory)

    def _step(
        self,
        samples: int | None,
        epoch: int | None,
        scalars: Mapping[str, Any] | None,
        memory: Mapping[str, int] | None,
    ) -> None:
        stack = getattr(self._tls, "stack", None)
        now = regions._perf()
        wall_ms = (now - self._t_last) * 1000.0
        self._t_last = now
        self.step_count += 1
        if epoch is not None:
            self._epoch = clean.int_arg(epoch, "epoch", self._epoch, self._warn_once)
        if samples is not None:
            n_samples = clean.int_arg(samples, "samples", 0, self._warn_once)
        else:
            n_samples = self._samples_per_step or 0
        sc = clean.scalars(scalars, "scalars", self._warn_once) if scalars else None
        mem = self._step_memory(memory)
        if self._cuda:
            self._queue_gpu_step(stack, now, n_samples, sc, mem)
        else:
            with self._lock:
                if stack:
                    cut_open(stack, now, self._warn_once)
                values, self._cur = regions.fold_raw(self._raw, self._cur), {}
            self._emit(
                R.Step(
                    step=self.step_count,
                    time=time.time(),
                    wall_ms=wall_ms,
                    regions=values,  # type: ignore[arg-type]  # [ms, calls] lists: same JSON
                    epoch=self._epoch,
                    samples=n_samples,
                    memory=mem,
                    scalars=sc,
                )
            )
        self._since_flush += 1
        self._since_kick = (self._since_kick + 1) % self._kick_every  # the console's interval
        if self._since_flush >= self.file_flush_interval or now - self._last_flush >= FLUSH_SECONDS:
            self._since_flush = 0  # the writer processes the queue and writes the files
            self._last_flush = now
            self._writer.kick(True)  # type: ignore[union-attr]
            if self._capture is not None:  # its periodic part (sampling, the request file)
                self._capture.tick(self, self.step_count, wall_ms)
        elif not self._since_kick:
            self._writer.kick(False)  # type: ignore[union-attr]
        if wall_ms >= self._cap_at:  # capture: the one comparison while nothing is captured
            self._capture.on_step(self, self.step_count, wall_ms)  # type: ignore[union-attr]

    def _step_memory(self, memory: Mapping[str, int] | None) -> dict[str, int] | None:
        """The memory of this step: given, else measured (if a reader is on)."""
        if memory is not None:
            return clean.memory(memory, self._warn_once)
        reader = self._memory
        if reader is None:
            return None
        try:
            m = reader()
            return m if reader is self._memory_plain else clean.memory(m, self._warn_once)
        except Exception as e:
            self._memory = None
            self._warn_once("memory", f"memory is no longer recorded: {e}")
            return None

    def _queue_gpu_step(
        self,
        stack: list[Any] | None,
        now: float,
        samples: int,
        scalars: dict[str, float] | None,
        memory: dict[str, int] | None,
    ) -> None:
        """End a CUDA step at a new marker event; it is emitted once its events complete."""
        with self._lock:
            if stack:
                cut_open(stack, now, self._warn_once)
            events, values = self._cur_ev, self._cur
            self._cur_ev, self._cur = [], {}
        assert self._gpu is not None
        self._gpu.end_step(
            self.step_count,
            events,
            cpu_values=values,
            time=time.time(),
            epoch=self._epoch,
            samples=samples,
            scalars=scalars,
            memory=memory,
        )
        self._drain(block=False)

    def _drain(self, block: bool) -> None:
        """Emit pending CUDA steps whose events completed (all of them when ``block``)."""
        assert self._gpu is not None
        for p, wall, by_name in self._gpu.completed(block, self._warn_once):
            self._emit(
                R.Step(
                    step=p.step,
                    time=p.time,
                    wall_ms=wall,
                    regions=by_name,
                    epoch=p.epoch,
                    samples=p.samples,
                    memory=p.memory,
                    scalars=p.scalars,
                )
            )
            for rec in p.after:
                self._emit_other(rec)

    # ------------------------------------------------------------------ outputs

    def _emit(self, rec: R.Step) -> None:
        """Queue a step record for the writer (limits, statistics and outputs are its work)."""
        self.steps_written = rec.step
        self._writer.put(rec)  # type: ignore[union-attr]

    def _emit_other(self, rec: R.Record) -> None:
        self._writer.put(rec)  # type: ignore[union-attr]

    def _sync(self) -> None:  # the queued records processed: statistics up to date
        if self._writer is not None:
            self._writer.drain(False)

    def log_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Write an eval record (after the step records still waiting for the GPU).

        Safe from any thread. A ``step`` that is not a step number is replaced by the last
        step written, with one warning."""
        if self._closed:
            return
        with self._io:
            if self._closed:
                return
            n = clean.int_arg(step, "log_eval(step=)", self.steps_written, self._warn_once)
            if not 0 <= n < R.MAX_INT:
                self._warn_once(
                    "eval-step",
                    f"log_eval(step={n}) is out of range; using step {self.steps_written}",
                )
                n = self.steps_written
            m = clean.scalars(metrics, "metrics", self._warn_once)
            rec = R.Eval(step=n, time=time.time(), metrics=m)
            if self._gpu is None or not self._gpu.defer(rec):
                self._emit_other(rec)

    def flush(self) -> None:
        """Write buffered lines now (also done every ``file_flush_interval`` steps)."""
        if not self.enabled:
            return
        with self._io:
            self._since_flush, self._last_flush = 0, regions._perf()
            if self._writer is not None:
                self._writer.drain(True)

    # ------------------------------------------------------------------ results

    def get_summary(self) -> dict[str, dict[str, float]]:
        """Per region over the steps written so far, in ms per step: ``avg``, ``min``,
        ``max``, ``count`` (steps it appeared in), ``total``, ``calls``."""
        with self._io:
            if self._cuda and not self._closed:
                self._drain(block=False)
            self._sync()
            return self._stats.summary()

    def get_step_summary(self) -> dict[str, dict[str, float]]:
        """Running stats of the step wall time and of the unaccounted time (ms)."""
        with self._io:
            self._sync()
            return {"wall": self._wall.as_dict(), "unaccounted": self._unaccounted.as_dict()}

    def format_summary(self) -> str:
        """The run summary that :meth:`print_summary` prints."""
        with self._io:
            return format_summary(
                self.get_summary(), self._wall.count, self._wall.total, self._unaccounted.total
            )

    def print_summary(self, file: Any = None) -> None:
        """Print the run summary (region tree, avg/min/max per step, shares of wall time)."""
        if not self.enabled:
            return
        print(self.format_summary(), end="", file=file if file is not None else sys.stdout)

    # ------------------------------------------------------------------ closing

    def close(self, status: str = R.STATUS_COMPLETED, error: BaseException | None = None) -> None:
        """Resolve pending GPU steps, write ``run_end`` and close the files. Idempotent."""
        self._finish(status, error, block=True)

    def _finish(self, status: str, error: BaseException | None, block: bool) -> None:
        if self._closed:
            return
        with self._io:
            if not self._closed:
                self._finish_locked(status, error, block)

    def _finish_locked(self, status: str, error: BaseException | None, block: bool) -> None:
        self._closed = True
        regions.deactivate(self)
        cap.detach(self, write=block)
        if status not in R.END_STATUSES:
            self._warn_once(
                "status", f"close(status={status!r}) is not a known status; using 'failed'"
            )
            status = R.STATUS_FAILED
        if self._cuda:
            try:
                self._drain(block=block)
            except Exception as e:
                self._warn_once("close", f"pending GPU steps lost: {e}")
        end = R.RunEnd(
            time=time.time(),
            status=status,
            steps=self.steps_written,
            error=R.RunError(type(error).__name__, str(error)[:2000])
            if error is not None
            else None,
        )
        self._emit_other(end)
        if self._writer is not None:
            self._writer.close()  # stops the thread, writes everything queued, closes files
        if self._sigterm is not None:
            self._sigterm.uninstall()
            self._sigterm = None
        untrack(self)

    def __repr__(self) -> str:
        state = "disabled" if not self.enabled else ("closed" if self._closed else "open")
        return (
            f"TimingLogger(run_id={self.run_id!r}, rank={self.rank}, "
            f"device={self.device!r}, {state})"
        )
