"""The outputs of a logger: the JSONL record file, the classic text log, the console panel.

The logger hands every record to each of its sinks in order (``start``, then ``step`` or
``record`` per record, ``flush`` and ``close``). A sink never raises: an error is one
warning (the logger's :class:`~stagewatch.timing.clean.WarnOnce`), then that output is off.
Sinks are not thread-safe: the logger calls them under its IO lock.
"""

from __future__ import annotations

from typing import Any

from stagewatch import records as R
from stagewatch.runs import last_step_in
from stagewatch.timing.clean import WarnOnce, short
from stagewatch.timing.console import TOP_N, Console, samples_rate_label
from stagewatch.timing.jsonl import LineFile, warn
from stagewatch.timing.stats import RegionStats
from stagewatch.timing.text_log import StepFormatter


def within_limits(rec: R.Step, warn_once: WarnOnce) -> R.Step:
    """``rec`` with what the reader would refuse left out (one warning per kind); every
    output and the statistics see this record."""
    regions = rec.regions
    bad = [
        k
        for k, (ms, n) in regions.items()
        if not (0.0 <= ms < R.MAX_MS and 0 <= n < R.MAX_INT and len(k) <= R.MAX_NAME_CHARS)
    ]
    if bad:
        warn_once(
            "limits",
            f"step {rec.step}: region {short(bad[0])} has a value or "
            f"name beyond the record limits (docs/record-format.md); left out",
        )
        regions = {k: v for k, v in regions.items() if k not in bad}
    if regions and not sum(ms + n for ms, n in regions.values()) < R.MAX_MS:
        warn_once(
            "limits-sum",
            f"step {rec.step}: its regions sum to more than {R.MAX_MS:.0e} ms; left out",
        )
        regions = {}
    wall = rec.wall_ms
    if not 0.0 <= wall < R.MAX_MS:
        warn_once(
            "wall",
            f"step {rec.step}: wall time {wall!r} ms is out of range; "
            "recorded as the sum of its top-level regions",
        )
        wall = sum(ms for k, (ms, _) in regions.items() if "/" not in k)
    if regions is rec.regions and wall == rec.wall_ms:
        return rec
    return R.replace(rec, regions=regions, wall_ms=wall)


class Sink:
    """One output; every method does nothing unless overridden."""

    __slots__ = ()
    LAST = False  # True: changes a step record it is given (the writer calls it last)

    def start(self, rec: R.RunStart) -> None:
        """The run's first record (written at once)."""

    def step(self, rec: R.Step, unaccounted_ms: float) -> None:
        """A step record, already :func:`within_limits`."""

    def record(self, rec: R.Record) -> None:
        """Any other record (``eval``, ``run_end``)."""

    def flush(self) -> None:
        """Write what is buffered."""

    def close(self) -> None:
        """Flush and release the output; nothing is written after."""


class _FileSink(Sink):
    __slots__ = ("_warn_once", "file")

    def __init__(self, path: str, warn_once: WarnOnce) -> None:
        self.file = LineFile(path)
        self._warn_once = warn_once

    def _write(self, line: str | bytes) -> None:
        try:
            self.file.write(line)
        except Exception as e:
            self._warn_once("write", f"writing {self.file.path}: {e}")

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class JsonlSink(_FileSink):
    """The rank's record file, ``<run_dir>/rank<R>.jsonl``: one line per record.

    It rounds a step record's region values in place (``LAST``): the writer hands each
    record to it after every other sink."""

    __slots__ = ()
    LAST = True

    def start(self, rec: R.RunStart) -> None:
        path = self.file.path
        if rec.start_step > 0:
            last = last_step_in(path)
            if last is not None and last > rec.start_step:
                # e.g. a checkpoint at 50, killed at 56: steps 51-56 are run again
                warn(
                    f"resuming at step {rec.start_step}: steps {rec.start_step + 1}-{last} "
                    f"already in {path} are run again; readers keep the new records"
                )
        line = R.encode_bytes(rec)
        if len(line) > R.MAX_LINE_BYTES:
            self._warn_once(
                "config",
                f"config= is too large to record "
                f"({len(line)} bytes as JSON); the run is recorded without it",
            )
            line = R.encode_bytes(R.replace(rec, config={}))
        self._write(line)
        self.file.flush()  # the run appears to a watching monitor right away

    def step(self, rec: R.Step, unaccounted_ms: float) -> None:
        # the writer's record, seen last by this sink (the writer puts it last): its values
        # are rounded where they are rather than copied
        line = R.encode_bytes(rec, R.round_regions_in_place(rec.regions))
        if len(line) > R.MAX_LINE_BYTES:
            self._warn_once(
                "line",
                f"step {rec.step}: its record would be {len(line)} bytes "
                f"(limit {R.MAX_LINE_BYTES}); scalars and regions are left out of it",
            )
            line = R.encode_bytes(R.replace(rec, regions={}, scalars=None))
        self._write(line)

    def record(self, rec: R.Record) -> None:
        self._write(R.encode_bytes(rec))


class TextSink(_FileSink):
    """The classic text log, ``<run_dir>/timing_rank<R>.log``: one block per step, with the
    running average of each region from ``stats``."""

    __slots__ = ("_fmt", "_stats")

    def __init__(self, path: str, stats: RegionStats, warn_once: WarnOnce) -> None:
        super().__init__(path, warn_once)
        self._fmt = StepFormatter(stats)
        self._stats = stats

    def step(self, rec: R.Step, unaccounted_ms: float) -> None:
        last = self._stats.last  # the writer's lists of this record's values, if at hand
        regions = rec.regions
        parts = last[1:] if last is not None and last[0] is regions else None
        try:
            block = self._fmt.format(rec.step, rec.wall_ms, regions, unaccounted_ms, parts)
        except Exception as e:  # a formatting bug must not stop training
            self._warn_once("text", f"text log: {e}")
        else:
            self._write(block)


class ConsoleSink(Sink):
    """The terminal panel: the top regions averaged over every ``interval`` steps."""

    __slots__ = (
        "_acc",
        "_console",
        "_interval",
        "_n",
        "_samples",
        "_unacc",
        "_wall",
        "_warn_once",
        "_world_size",
    )

    def __init__(self, stream: Any, interval: int, world_size: int, warn_once: WarnOnce) -> None:
        self._console: Console | None = Console(stream)
        self._interval = interval
        self._world_size = world_size
        self._warn_once = warn_once
        self._acc: dict[str, float] = {}
        self._wall = 0.0
        self._unacc = 0.0
        self._n = 0
        self._samples = 0

    def step(self, rec: R.Step, unaccounted_ms: float) -> None:
        if self._console is None:  # switched off by an error
            return
        acc = self._acc
        for name, (ms, _) in rec.regions.items():
            acc[name] = acc.get(name, 0.0) + ms
        self._wall += rec.wall_ms
        self._unacc += unaccounted_ms
        self._n += 1
        self._samples += rec.samples
        if self._n < self._interval:
            return
        n = self._n
        wall = self._wall / n
        top = sorted(((k, v / n) for k, v in acc.items()), key=lambda kv: -kv[1])[:TOP_N]
        rate = ""
        if wall > 0:
            rate = f"{1000.0 / wall:.2f} steps/s"
            if self._samples:
                rate += ", " + samples_rate_label(
                    self._samples / (self._wall / 1000.0), self._world_size
                )
        try:
            self._console.update(rec.step, wall, top, self._unacc / n, rate)
        except Exception as e:
            self._warn_once("console", f"console panel: {e}")
            self._console = None
        acc.clear()
        self._wall = self._unacc = 0.0
        self._n = self._samples = 0

    def close(self) -> None:
        if self._console is not None:
            self._console.close()
