"""Slow-step capture: the next steps after a slow one (or on demand) under ``torch.profiler``.

A logger with capture on calls :meth:`Capture.on_step` only when a step's wall time reaches
``logger._cap_at``: one float comparison per step, nothing else, while nothing is being
captured. ``_cap_at`` is the slow trigger once warm, -inf while something is to be done at
the next step (warming up, a request or signal seen, a capture under way) and +inf when the
run's traces are spent. The periodic work (sampling the step time for the median, looking
at the request file) is :meth:`Capture.tick`, which the logger calls at its flush points
(every ``file_flush_interval`` steps, at least every 2 s), where it already does a batch of
work.

Triggers:

- **slow**: a step of at least ``k`` × the running median step time (and at least
  ``min_ms``), once ``warm`` steps were seen. The median is of a ring of the last 64
  sampled step times (every step while warming up, then the step at each flush point):
  bounded memory, a sort of 64 floats per sample. After a capture, ``warm`` steps are
  sampled before the next slow trigger (a lasting change of pace costs one or two captures,
  not all of them).
- **request**: the run folder's request file (:data:`stagewatch.traces.REQUEST_FILE`, written
  by ``tui watch``'s ``t`` key) has a new modification time; checked with one ``stat`` at
  the flush points, at most every ``poll_s`` seconds. The step that sees it starts the
  capture at its end.
- **signal**: the process got ``SIGUSR2`` (handler installed in the main thread only,
  chaining any earlier Python handler; it sets a flag and ``_cap_at`` to -inf, so the next
  ``step()`` starts the capture).

What it records: the next ``steps`` steps, from the end of the ``step()`` call that saw the
trigger to the end of the ``step()`` call of the last captured step, under
``torch.profiler`` with CPU activity (and CUDA where ``torch.cuda.is_available()``), no
shapes, stacks, memory or FLOPs. The trace goes to ``traces/step<N>.rank<R>.json.gz`` beside
the run (N: the first step captured), at most ``max_traces`` per run; the step records of
the captured steps carry ``trace`` (that path, relative to the run folder). Starting,
stopping and writing a trace take time in the ``step()`` call: that time is left out of the
next step's wall time (on CUDA the GPU clock restarts as well).

Torch is used only if the program imported it; any failure is one warning and capture is
then off for the rest of the run. Nothing here raises into the training loop.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import MethodType
from typing import Any

import msgspec

from stagewatch import traces
from stagewatch.timing import regions
from stagewatch.timing.clean import WarnOnce

CAPTURE_ENV = "STAGEWATCH_CAPTURE"  # "0"/"off"/"false"/"no": capture off
INF = math.inf
RING = 64  # step times kept for the running median


def env_off() -> bool:
    v = os.environ.get(CAPTURE_ENV)
    return v is not None and v.strip().lower() in ("0", "false", "off", "no")


NO_MARKS: dict[int, str] = {}  # a logger without capture (never written to)


@dataclass(frozen=True)
class CaptureOptions:
    """``TimingLogger(capture=CaptureOptions(...))``; ``capture=True`` is the defaults."""

    k: float = 3.0  # a step of at least k x the running median step time triggers
    min_ms: float = 1.0  # ... and of at least this long (microsecond steps are all noise)
    steps: int = 1  # steps recorded per capture
    max_traces: int = 5  # traces per run (and rank), whatever triggered them
    warm: int = 20  # steps seen before a slow step can trigger
    poll_s: float = 1.0  # the request file is looked at no more often than this

    def __post_init__(self) -> None:
        k = self.k
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not 1.0 < k < 1e6:
            raise ValueError(f"CaptureOptions.k must be a number above 1, got {k!r}")
        for name, lo in (("steps", 1), ("max_traces", 0), ("warm", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= 100_000:
                raise ValueError(f"CaptureOptions.{name} must be an integer >= {lo}, got {v!r}")
        m = self.min_ms
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m < 1e9:
            raise ValueError(f"CaptureOptions.min_ms must be ms >= 0, got {m!r}")
        p = self.poll_s
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1e6:
            raise ValueError(f"CaptureOptions.poll_s must be seconds >= 0, got {p!r}")


def options(capture: Any) -> CaptureOptions | None:
    """The options of ``TimingLogger(capture=...)``: None when off (False, env
    ``STAGEWATCH_CAPTURE=0``, ``max_traces=0``). ValueError for anything else."""
    if capture is True:
        capture = CaptureOptions()
    elif capture is False or capture is None:
        return None
    if not isinstance(capture, CaptureOptions):
        raise ValueError(f"capture must be True, False or a CaptureOptions, got {capture!r}")
    return None if env_off() or capture.max_traces == 0 else capture


def attach(lg: Any, opts: CaptureOptions | None) -> None:
    """Arm ``lg``'s capture (after its run_start; it checks from its next step on)."""
    if opts is None or lg.run_dir is None:
        return
    c = Capture(lg.run_dir, lg.rank, lg._warn_once, opts)
    lg._capture, lg._cap_marks = c, c.marks
    lg._cap_at = -INF  # warming up: every step is sampled
    c._sig = SignalHook.install(lg)


def detach(lg: Any, write: bool) -> None:
    """At close: end a capture in progress (its trace written when ``write``) and the
    signal handler; the logger then checks nothing more."""
    if lg._capture is not None:
        lg._capture.close(lg, write)
    lg._cap_at = INF


def emit_marked(lg: Any, rec: Any) -> None:
    """The logger's ``_emit`` while captured steps wait for their records (installed by a
    capture in its place, so that no other step looks at the marks)."""
    marks = lg._cap_marks
    if rec.step in marks:
        rec = msgspec.structs.replace(rec, trace=marks.pop(rec.step))
    if not marks:
        lg.__dict__.pop("_emit", None)  # the plain one again
    type(lg)._emit(lg, rec)


def restart_clock(lg: Any) -> None:
    """The logger's next step starts now: the capture's own time is left out of it."""
    lg._t_last = regions._perf()
    if lg._gpu is not None:
        lg._gpu.start()


class Capture:
    """The slow-step capture of one logger (see the module docstring)."""

    def __init__(
        self,
        run_dir: str,
        rank: int,
        warn_once: WarnOnce,
        opts: CaptureOptions | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        o = opts or CaptureOptions()
        self.run_dir = run_dir
        self.rank = rank
        self.k = float(o.k)
        self.min_ms = float(o.min_ms)
        self.steps = o.steps
        self.max_traces = o.max_traces
        self.warm = o.warm
        self.poll_s = o.poll_s
        self._clock = clock
        self._warn = warn_once
        # traces of this run and rank (or being written): a resumed run counts the earlier ones
        self.taken = sum(1 for t in traces.list_traces(run_dir) if t.rank == rank)
        self.seen = 0  # step times sampled
        self._ring = [0.0] * RING
        self.median = INF
        self.threshold = INF  # the slow trigger (ms) once warm
        self.requested = 0  # steps asked for by the request file, until started
        self._last_poll = clock()
        self._request_key: tuple[int, int, int] | None = self._request_stat()  # one before us
        self.signalled = False
        self._prof: Any = None
        self._stop_at = 0
        self._first = 0
        self._trigger = ""
        self._cool_until = 0  # after a capture: no slow trigger, a sample every step
        self._anchors: list[tuple[int, int]] = []
        self.marks: dict[int, str] = {}  # step -> trace path (relative), until its record
        self._sig: SignalHook | None = None

    # ------------------------------------------------------------------ per step

    def on_step(self, lg: Any, step: int, wall_ms: float) -> None:
        """Called by the logger at the end of ``step()`` when ``wall_ms >= lg._cap_at``;
        sets ``_cap_at`` for the next step. Never raises."""
        try:
            if self._prof is not None:
                if step >= self._stop_at:
                    self._stop(lg)
            else:
                self._check(lg, step, wall_ms)
        except Exception as e:  # a bug here must not stop training
            self._off(f"slow-step capture failed ({type(e).__name__}: {e}); capture is off")
        self._arm(lg, step)

    def tick(self, lg: Any, step: int, wall_ms: float) -> None:
        """The periodic part, called by the logger at its flush points (before it compares
        ``wall_ms`` with ``_cap_at``): sample this step's time once warm, and look at the
        request file (at most every ``poll_s``). Never raises."""
        if self._prof is not None or self.taken >= self.max_traces:
            return
        try:
            if self.seen >= self.warm and step >= self._cool_until and wall_ms < self.threshold:
                self._sample(wall_ms)  # (a slow step is sampled by on_step)
            now = self._clock()
            if now - self._last_poll >= self.poll_s:
                self._last_poll = now
                key = self._request_stat()
                if key is not None and key != self._request_key:
                    self._request_key = key
                    path = traces.request_path(self.run_dir)
                    self.requested = traces.read_request_steps(path, self.steps)
        except Exception as e:
            self._off(f"slow-step capture failed ({type(e).__name__}: {e}); capture is off")
        self._arm(lg, step)

    def _check(self, lg: Any, step: int, wall_ms: float) -> None:
        trigger = ""
        if wall_ms >= self.threshold and step >= self._cool_until:
            trigger = "slow"
        if self.signalled:
            self.signalled = False
            trigger = trigger or "signal"
        n = self.steps
        if self.requested:
            n, self.requested = self.requested, 0
            trigger = trigger or "request"
        if trigger == "slow" or self.seen < self.warm or step < self._cool_until:
            self._sample(wall_ms)
        if trigger and self.taken < self.max_traces:
            self._start(lg, step, n, trigger)

    def _arm(self, lg: Any, step: int) -> None:
        """``lg._cap_at`` for the next step: -inf where the next ``step()`` has work here."""
        if self._prof is not None:
            lg._cap_at = -INF  # until the capture's last step
        elif self.taken >= self.max_traces:
            lg._cap_at = INF  # done: the comparison is never true
        elif self.signalled or self.requested or self.seen < self.warm or step < self._cool_until:
            lg._cap_at = -INF
        else:
            lg._cap_at = self.threshold

    def _sample(self, wall_ms: float) -> None:
        if not 0.0 <= wall_ms < 1e12:
            return
        self._ring[self.seen % RING] = wall_ms
        self.seen += 1
        n = min(self.seen, RING)
        vals = sorted(self._ring[:n])
        med = vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2.0
        self.median = med
        self.threshold = max(self.k * med, self.min_ms) if self.seen >= self.warm else INF

    def _request_stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(traces.request_path(self.run_dir))
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    # ------------------------------------------------------------------ profiler

    def _start(self, lg: Any, step: int, n: int, trigger: str) -> None:
        torch = sys.modules.get("torch")
        tp = getattr(getattr(torch, "autograd", None), "profiler", None)  # never imported here
        if tp is None:  # not a torch program: nothing to profile (said only when asked)
            if trigger != "slow":
                self._warn(
                    "capture", "a capture was asked for, but the program has not imported torch"
                )
            self.taken = self.max_traces
            return
        if _profiler_running(torch):
            # a second Kineto session nested in the program's own (torch.profiler) ends
            # both at its exit, and has crashed the profiler: the program's trace wins
            self._warn(
                "capture-busy",
                f"step {step + 1} not captured: another torch profiler is running in this "
                "process (slow steps met while it runs are not captured either)",
            )
            self._cool_until = step + 1 + self.warm
            return
        device = None
        try:
            if torch.cuda.is_available():  # type: ignore[union-attr]
                device = "cuda"
        except Exception:
            pass
        os.makedirs(os.path.join(self.run_dir, traces.TRACES_DIR), exist_ok=True)
        # torch.profiler.profile's own front end imports torch._inductor (1-2 s), and that
        # import pins the default process group: destroy_process_group then leaves gloo's
        # threads running into interpreter exit, where they abort the process (SIGABRT, ~1 in
        # 10 runs). Its back end, the same Kineto profiler and trace format, imports nothing.
        prof = tp.profile(
            use_cpu=True,
            use_device=device,
            record_shapes=False,
            with_stack=False,
            profile_memory=False,
            with_flops=False,
            with_modules=False,
            use_kineto=True,
        )
        prof.__enter__()
        self._prof = prof
        self.taken += 1
        self._first, self._stop_at, self._trigger = step + 1, step + n, trigger
        self._anchors = []
        for _ in range(3):  # the first one is slow (lazy set-up); the tightest is used
            t0 = time.time_ns()
            with tp.record_function(traces.ANCHOR):
                pass
            self._anchors.append((t0, time.time_ns()))
        rel = f"{traces.TRACES_DIR}/{traces.trace_name(step + 1, self.rank)}"
        for s in range(step + 1, step + n + 1):
            self.marks[s] = rel
        lg._emit = MethodType(emit_marked, lg)  # the records of these steps get their mark
        restart_clock(lg)

    def _stop(self, lg: Any) -> None:
        prof, self._prof = self._prof, None
        path = traces.trace_path(self.run_dir, self._first, self.rank)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            prof.__exit__(None, None, None)
            prof.export_chrome_trace(tmp)
            meta = {
                "rank": self.rank,
                "step": self._first,
                "steps": self._stop_at - self._first + 1,
                "trigger": self._trigger,
                "anchors": self._anchors,
                "median_ms": None if self.median == INF else round(self.median, 4),
            }
            _gzip_with_meta(tmp, path, meta)
        except Exception:
            for s in range(self._first, self._stop_at + 1):
                self.marks.pop(s, None)
            raise
        finally:
            self._cool_until = self._stop_at + self.warm
            for p in (tmp, path + ".part"):
                if os.path.exists(p):
                    os.unlink(p)
            restart_clock(lg)

    def _off(self, message: str) -> None:
        self._warn("capture", message)
        self.taken = self.max_traces
        prof, self._prof = self._prof, None
        if prof is not None:
            try:
                prof.__exit__(None, None, None)
            except Exception:
                pass

    def request_by_signal(self, lg: Any) -> None:
        """From the SIGUSR2 handler: capture the next steps (checked at the next step())."""
        if self.taken < self.max_traces and self._prof is None:
            self.signalled = True
            lg._cap_at = -INF  # the next step() sees it

    def close(self, lg: Any, write: bool) -> None:
        """Stop a capture in progress (writing its trace when ``write``, else dropping it and
        its marks) and the signal handler. Never raises."""
        if self._sig is not None:
            self._sig.uninstall()
            self._sig = None
        if self._prof is None:
            return
        if write:
            try:
                self._stop(lg)
            except Exception as e:
                self._warn("capture", f"the last capture could not be written ({e})")
            return
        prof, self._prof = self._prof, None
        for s in range(self._first, self._stop_at + 1):
            self.marks.pop(s, None)
        try:
            prof.__exit__(None, None, None)
        except Exception:
            pass


def _profiler_running(torch: Any) -> bool:
    """Whether a torch profiler (the program's own) is recording in this process now."""
    try:
        return bool(torch._C._autograd._profiler_enabled())
    except Exception:  # a torch without it: as before
        return False


def _gzip_with_meta(src: str, dst: str, meta: dict[str, Any]) -> None:
    """``src`` (a JSON object) gzip'd to ``dst`` with ``meta`` as its first key, streamed."""
    part = dst + ".part"
    head = ('{"' + traces.META_KEY + '":' + json.dumps(meta) + ",").encode()
    with open(src, "rb") as f, gzip.open(part, "wb", compresslevel=3) as g:
        first = f.read(1 << 16)
        i = first.find(b"{")
        if i < 0:
            raise ValueError("the profiler's trace is not a JSON object")
        rest = first[i + 1 :]
        g.write(head if rest.lstrip()[:1] != b"}" else head[:-1])
        g.write(rest)
        shutil.copyfileobj(f, g, 1 << 20)
    os.replace(part, dst)


class SignalHook:
    """SIGUSR2: ask the logger's capture for the next steps. Chains an earlier handler."""

    __slots__ = ("_lg", "_pid", "_prev")

    def __init__(self, lg: Any, prev: Any) -> None:
        self._lg = weakref.ref(lg)
        self._prev = prev
        self._pid = os.getpid()

    @classmethod
    def install(cls, lg: Any) -> SignalHook | None:
        """The hook as SIGUSR2 handler; None where it cannot be (no SIGUSR2, not the main
        thread, the signal ignored or owned by non-Python code)."""
        sig = getattr(signal, "SIGUSR2", None)
        if sig is None or threading.current_thread() is not threading.main_thread():
            return None
        try:
            prev = signal.getsignal(sig)
            if prev is signal.SIG_IGN or prev is None:
                return None
            hook = cls(lg, prev)
            signal.signal(sig, hook)
        except (ValueError, OSError, AttributeError):
            return None
        return hook

    def uninstall(self) -> None:
        try:
            if signal.getsignal(signal.SIGUSR2) is self:
                signal.signal(signal.SIGUSR2, self._prev)
        except (ValueError, OSError, AttributeError):
            pass

    def __call__(self, signum: int, frame: Any) -> None:
        try:
            lg = self._lg()
            cap = getattr(lg, "_capture", None) if lg is not None else None
            if cap is not None and os.getpid() == self._pid and not lg._closed:
                cap.request_by_signal(lg)
        except Exception:
            pass
        if callable(self._prev):
            self._prev(signum, frame)
