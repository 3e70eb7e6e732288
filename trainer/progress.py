"""The training terminal's progress line: step/total, samples/s, ETA, loss, lr.

Throughput says its scope: with one process ``samples/s``; under DDP the global figure
(all ranks) with the per-rank one beside it, ``50.00 samples/s global (12.50/rank × 4)``.

On a terminal it is one line redrawn with ``\\r``, written under the timing panel: it is
cleared before the panel may draw (``clear()``) and redrawn after, and it goes to the real
stream so that the panel's in-place redraw still sees itself as the last output. Elsewhere
(CI, a file) a plain line is printed every ``interval`` steps.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import deque
from typing import Any

from stagewatch.timing.console import raw_stream, samples_rate_label, stream_is_tty


def _fmt_eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "--:--"
    s = int(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m:02d}:{s % 60:02d}"


class Progress:
    """Progress reporting for rank 0 (other ranks pass ``enabled=False``)."""

    def __init__(
        self,
        total: int,
        start: int = 0,
        interval: int = 10,
        enabled: bool = True,
        stream: Any = None,
        tty: bool | None = None,
        window: int = 20,
        world_size: int = 1,
        max_minutes: float | None = None,
    ) -> None:
        self.total, self.interval, self.enabled = total, interval, enabled
        # TRAIN.MAX_MINUTES: the run ends then, whatever its steps say
        self._deadline = None if max_minutes is None else time.perf_counter() + 60 * max_minutes
        self.world_size = max(1, world_size)
        self._stream = stream
        self._tty = tty
        self._times: deque[tuple[float, int, int]] = deque(maxlen=window)  # (time, step, samples)
        self._times.append((time.perf_counter(), start, 0))
        self._samples = 0
        self._shown = False

    def _out(self) -> Any:
        # the timing panel wraps sys.stdout to count writes; ours must not count
        return raw_stream(self._stream if self._stream is not None else sys.stdout)

    def is_tty(self) -> bool:
        if self._tty is not None:
            return self._tty
        return stream_is_tty(self._out())

    def rate(self) -> float:
        """Samples per second of this rank over the last steps."""
        (t0, _, s0), (t1, _, s1) = self._times[0], self._times[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0

    def line(self, step: int, loss: float, lr: float) -> str:
        (t0, k0, _), (t1, k1, _) = self._times[0], self._times[-1]
        per_step = (t1 - t0) / (k1 - k0) if k1 > k0 else float("nan")
        eta = per_step * (self.total - step)
        if self._deadline is not None:
            eta = min(eta, max(0.0, self._deadline - time.perf_counter()))
        width = len(str(self.total))
        return (
            f"step {step:>{width}}/{self.total} | "
            f"{samples_rate_label(self.rate(), self.world_size)} | "
            f"ETA {_fmt_eta(eta)} | loss {loss:.4f} | lr {lr:.2e}"
        )

    def update(self, step: int, samples: int, loss: float, lr: float) -> None:
        self._samples += samples
        self._times.append((time.perf_counter(), step, self._samples))
        if not self.enabled:
            return
        out = self._out()
        if self.is_tty():
            cols = shutil.get_terminal_size((100, 24)).columns
            out.write("\r\x1b[K" + self.line(step, loss, lr)[: cols - 1])
            self._shown = True
        elif step % self.interval == 0 or step == self.total:
            out.write(self.line(step, loss, lr) + "\n")
        out.flush()

    def clear(self) -> None:
        """Erase the line (before anything else prints)."""
        if self.enabled and self._shown:
            out = self._out()
            out.write("\r\x1b[K")
            out.flush()
            self._shown = False

    def message(self, text: str) -> None:
        """Print a line of its own (eval results...) without breaking the progress line."""
        if not self.enabled:
            return
        self.clear()
        print(text, flush=True)

    def finish(self) -> None:
        if self.enabled and self._shown:
            out = self._out()
            out.write("\n")
            out.flush()
            self._shown = False
