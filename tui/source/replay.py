"""``tui replay``: a run played back step by step through the same screen as ``watch``.

The manager reads each rank's file sequentially, holding back the first step beyond the
current position, so the statistics shown are exactly those of a live run at that step.
Going back restores the nearest earlier checkpoint (the aggregate and the file positions,
taken every ``interval`` steps; at most 64 kept, thinned as the run grows) and plays
forward from it. A file still being written keeps growing the end of the replay.

The first screen reads only the first steps, whatever the run's size. A saved run index
(:mod:`tui.source.index`) tells the end step at once and where a resumed run repeats steps; a
repeat found while playing (no index) starts the replay again knowing it, at the same
step, so each step is shown once (the later segment wins, as in ``watch``). A big run
without an index is read behind the replay by a low-priority process that writes the index
(no GIL shared with the screen); when it is done the end step is known.
"""

from __future__ import annotations

import copy
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stagewatch.runs import last_step_in
from tui.model.aggregate import DEFAULT_WINDOW, RunAgg
from tui.model.rows import StepRow
from tui.model.snapshot import WorldSnapshot
from tui.source.feed import Feed
from tui.source.loop import Post, ReadLoop
from tui.source.nesting import NestPolicy
from tui.source.reader import RunSource

MAX_CHECKPOINTS = 64
BEHIND_MIN_BYTES = 32 * 2**20  # a run at least this big, without an index, is read behind
_BEHIND = """
import os, sys
try:
    os.nice(10)
except OSError:
    pass
from tui.source.reader import RunSource
RunSource(sys.argv[1], window=int(sys.argv[2]), use_index=True).load().save_index(force=True)
"""
BATCH = 1024  # parsed items folded in at a time
CURSOR_CHUNK = 32 * 1024  # small reads: a checkpoint copies what was read but not yet shown


class _Cursor:
    """A feed and the parsed items read from it but not yet shown."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        feed.tail.chunk = CURSOR_CHUNK
        self.queue: deque[Any] = deque()
        self.eof = False

    def fill(self) -> bool:
        """Read more into the queue (at the end of a text log: its last block). False when
        nothing came."""
        lines, reset, more = self.feed.tail.read()
        if reset:
            raise _Reset
        got = bool(lines)
        if lines:
            self.queue.extend(self.feed.parse(lines))
        self.eof = not lines and not more
        if self.eof and self.feed.text is not None:
            rows = self.feed.flush_text()  # the last block, the steps the nesting held back
            if rows:
                self.queue.extend(rows)
                got = True
        if self.feed.resegment:
            raise _Resegment
        return got

    def head_step(self) -> int | None:
        """Step of the next step row (reading more if needed), None at the end."""
        while True:
            for it in self.queue:
                if type(it) is StepRow:
                    return it.step
            if not self.fill():
                return None

    def take_upto(self, step: float, limit: int = BATCH) -> list[Any]:
        """Items up to and including ``step`` (and records after the last step at EOF),
        at most about ``limit`` of them."""
        out: list[Any] = []
        while len(out) < limit:
            while self.queue and len(out) < limit:
                it = self.queue[0]
                if type(it) is StepRow and it.step > step:
                    return out
                out.append(self.queue.popleft())
            if len(out) < limit and not self.queue and not self.fill():
                return out
        return out


def _last_step_in(feed: Feed, tail: int = 64 * 1024) -> int | None:
    """The number of the last complete step record in the last ``tail`` bytes of a JSONL rank
    file (None for a text log, or when there is none)."""
    return last_step_in(feed.tail.path, tail) if feed.kind == "jsonl" else None


class _Reset(Exception):
    """A file shrank or was replaced under the replay: start over."""


class _Resegment(Exception):
    """A resumed segment repeats steps: start over knowing where, at the same step."""


class ReplaySource(ReadLoop):
    """Plays a run (folder, rank file or text log) with pause, step, seek and speed."""

    mode = "replay"
    thread_name = "stagewatch-replay"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        speed: float = 10.0,
        window: int = DEFAULT_WINDOW,
        playing: bool = True,
        tick_s: float = 0.1,
        use_index: bool | None = None,
        nest: NestPolicy | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.nest = nest or NestPolicy()
        self.use_index = use_index
        self._cuts: dict[str, list[tuple[int, int, int]]] = {}
        self.known_end: int | None = None  # the last step, from the run index (None: unknown)
        self.window = window
        self.speed = float(speed)
        self.playing = playing
        self.tick_s = tick_s
        self._lock = threading.RLock()
        self._init_loop()
        self._seq = 0
        self._credit = 0.0
        self._commands: deque[Callable[[], Any]] = deque()
        self._open()

    def _open(self) -> None:
        self.src = RunSource(
            self.path, window=self.window, stale_after=math.inf, use_index=False, nest=self.nest
        )
        self.run_id = self.src.run_id
        if not self._cuts:
            self._from_index()
        for f in self.src.feeds.values():
            f.cuts = list(self._cuts.get(f.tail.path, ()))
            f.restore_cuts()
        self.cursors = [_Cursor(f) for f in self.src.feeds.values()]
        self.agg = RunAgg(self.run_id, str(self.src.dir), self.window)
        self.position = 0  # last step shown (0: nothing yet)
        self.end_step: int | None = None  # highest step seen in the files so far
        self.interval = 50
        self.checkpoints: list[tuple[int, Any]] = [(0, self._state())]

    def _from_index(self) -> None:
        """The end step and the resume cuts from the run's index, if it has a valid one."""
        from tui.source import index

        if not (index.enabled() if self.use_index is None else self.use_index):
            return
        side = RunSource(self.path, window=self.window, stale_after=math.inf, use_index=True)
        if side.open_index():
            self.known_end = side.agg.last_step or None
            self._cuts = {f.tail.path: list(f.cuts) for f in side.feeds.values() if f.cuts}

    def _resegment(self) -> None:
        """A repeat found while playing: open again with every file's cuts, same step."""
        for c in self.cursors:
            if c.feed.cuts:
                self._cuts[c.feed.tail.path] = list(c.feed.cuts)
        pos = self.position
        for _ in range(64):  # each round learns at least one more cut
            try:
                self._open()
                if pos:
                    self._advance_to(pos)
                return
            except _Resegment:
                for c in self.cursors:
                    if c.feed.cuts:
                        self._cuts[c.feed.tail.path] = list(c.feed.cuts)

    # ------------------------------------------------------------------ state
    def _state(self) -> Any:
        return copy.deepcopy((self.agg, self.cursors))

    def _restore(self, state: Any) -> None:
        self.agg, self.cursors = copy.deepcopy(state)

    def _checkpoint(self) -> None:
        if self.position - self.checkpoints[-1][0] < self.interval:
            return
        self.checkpoints.append((self.position, self._state()))
        if len(self.checkpoints) > MAX_CHECKPOINTS:
            self.checkpoints = self.checkpoints[::2]
            self.interval *= 2

    # ------------------------------------------------------------------ moving
    def _next_steps(self) -> list[int]:
        return [s for c in self.cursors if (s := c.head_step()) is not None]

    def _advance_to(self, target: float) -> bool:
        """Show every step <= target. False when nothing was left to show.

        Ranks are read in turns of BATCH items, so memory stays bounded on a jump to the
        end of a long run and ranks stay close enough to be compared step by step.
        """
        moved = False
        active = list(self.cursors)
        while active:
            nxt = []
            for c in active:
                items = c.take_upto(target)
                if not items:
                    continue
                c.feed.fold(items, self.agg)
                moved = True
                for it in reversed(items):
                    if type(it) is StepRow:
                        self.position = max(self.position, it.step)
                        break
                if len(items) >= BATCH:
                    nxt.append(c)
            active = nxt
            if self._stop.is_set():  # quitting during a long jump: the rest is not shown
                break
            if active:
                self._checkpoint()  # along a long jump too, so stepping back later is quick
        return moved

    def _resegment_due(self) -> None:
        """A repeat found where it could not be acted on (the end-of-run check): now."""
        if any(c.feed.resegment for c in self.cursors):
            raise _Resegment

    def forward(self, n: int = 1) -> bool:
        """Show the next ``n`` steps (steps numbered as in the files)."""
        with self._lock:
            try:
                self._resegment_due()
                heads = self._next_steps()
                if not heads:
                    return self._advance_to(math.inf)  # trailing records (run_end)
                target = max(self.position, min(heads) - 1) + n
                moved = self._advance_to(target)
                self._checkpoint()
                return moved
            except _Reset:
                self._cuts = {}
                self._open()
                return True
            except _Resegment:
                self._resegment()
                return True

    def seek(self, step: float) -> None:
        """Show the run as it was right after ``step`` (0: the start, inf: the end)."""
        with self._lock:
            for _ in range(64):  # a repeat found on the way: open again knowing it, go on
                try:
                    self._seek(step)
                    return
                except _Reset:
                    self._cuts = {}
                    self._open()
                    return
                except _Resegment:
                    self._resegment()

    def _seek(self, step: float) -> None:
        self._resegment_due()
        if step < self.position:
            best = max((c for c in self.checkpoints if c[0] <= step), key=lambda c: c[0])
            self.position = best[0]
            self._restore(best[1])
        if step > self.position:
            self._advance_to(step)
            self._checkpoint()

    def back(self, n: int = 1) -> None:
        self.seek(max(0, self.position - n))

    def jump_start(self) -> None:
        self.seek(0)
        if self.position == 0:
            self.forward(1)

    def jump_end(self) -> None:
        self.seek(math.inf)
        self.playing = False

    def toggle_play(self) -> None:
        self.playing = not self.playing
        self._credit = 0.0

    def faster(self) -> None:
        self.speed = min(self.speed * 2, 100_000.0)

    def slower(self) -> None:
        self.speed = max(self.speed / 2, 0.25)

    # ------------------------------------------------------------------ snapshots
    def status(self) -> str:
        if self.at_end:
            return f"⏹ replay at the end (step {self.position}) · {self.speed:g} steps/s"
        state = "▶" if self.playing else "⏸"
        end = self.known_end or self._tail_end()
        of = (
            f" · step {self.position} of {max(end, self.position)}"
            if end
            else f" · step {self.position}"
        )
        return f"{state} replay {self.speed:g} steps/s{of}"

    def _tail_end(self) -> int | None:
        """Without an index: the last step recorded, from the files' last 64 KiB (read again
        only when a file's size changed)."""
        sizes = []
        for c in self.cursors:
            try:
                sizes.append(os.stat(c.feed.tail.path).st_size)
            except OSError:
                sizes.append(-1)
        if getattr(self, "_tail_key", None) != sizes:
            self._tail_key = sizes
            self._tail = max(
                (e for c in self.cursors if (e := _last_step_in(c.feed)) is not None), default=None
            )
        return self._tail

    @property
    def at_end(self) -> bool:
        """Nothing left to show (a file still being written may add more)."""
        try:
            return (
                self.position > 0
                and not self._next_steps()
                and all(not c.queue for c in self.cursors)
            )
        except (_Reset, _Resegment):
            return False

    def build(self) -> WorldSnapshot:
        with self._lock:
            at_end = self.at_end
            if any(c.feed.resegment for c in self.cursors):
                self._resegment()  # found by the end check: show this step again, knowing it
                at_end = self.at_end
            self.src.agg = self.agg
            self.src.read_to_end = at_end  # a text log shown to its end is finished
            snap = self.src.snapshot(replay=self.status())
            item = self.src.item()
            self._seq += 1
            return WorldSnapshot(
                seq=self._seq,
                root=self.path,
                runs=(item,),
                selected=snap,
                made_at=time.monotonic(),
                mode=self.mode,
            )

    def tick(self, dt: float) -> bool:
        """Advance by ``dt`` seconds of playback. True when the position moved."""
        if not self.playing:
            return False
        self._credit += dt * self.speed
        n = int(self._credit)
        if n < 1:
            return False
        self._credit -= n
        moved = self.forward(n)
        if not moved:
            self._credit = 0.0
        return moved

    # ------------------------------------------------------------------ thread
    def select(self, run_id: str) -> None:  # one run only
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    _behind: Any = None  # the process reading the whole run behind the replay

    def _read_behind(self) -> None:
        """Start the low-priority whole-run read (it writes the index) for a big run."""
        from tui.source import index

        if self.known_end is not None or not (
            index.enabled() if self.use_index is None else self.use_index
        ):
            return
        try:
            size = sum(os.path.getsize(f.tail.path) for f in self.src.feeds.values())
        except OSError:
            return
        if size < BEHIND_MIN_BYTES or any(f.kind != "jsonl" for f in self.src.feeds.values()):
            return
        import subprocess
        import sys

        root = str(Path(__file__).resolve().parents[2])  # the folder holding the tui package
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        )
        try:
            self._behind = subprocess.Popen(
                [sys.executable, "-c", _BEHIND, self.path, str(self.window)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its group is ended with it (its worker processes)
            )
        except OSError:
            self._behind = None

    def _behind_done(self) -> bool:
        """True once, when the read behind finished (the end step is then known)."""
        proc = self._behind
        if proc is None or proc.poll() is None:
            return False
        self._behind = None
        with self._lock:
            cuts = dict(self._cuts)
            self._from_index()
            if cuts:
                self._cuts = cuts | self._cuts
        return True

    def _begin(self) -> None:
        self._read_behind()

    def stop(self) -> None:
        """End :meth:`run` (waiting up to 2 s for it, unless called from its own thread; the
        controls :meth:`command` queued run there) and the read behind."""
        self.stop_loop()
        proc, self._behind = self._behind, None
        if proc is not None and proc.poll() is None:
            _end_group(proc)

    def command(self, fn: Callable[[], Any]) -> None:
        """Run a control from the UI thread: queued for :meth:`run`'s thread while it runs
        (it then posts a snapshot), else at once (none runs once stopped)."""
        with self._control:
            if not self.running and not self._stop.is_set():
                fn()
            else:
                self._commands.append(fn)
        self._wake.set()

    def _loop(self, post: Post) -> None:
        post(self.build())
        last = time.monotonic()
        while not self._stop.is_set():
            woke = self._wake.wait(self.tick_s)
            self._wake.clear()
            # a command queued just as the wait timed out has its wake-up cleared above:
            # whether it ran, not `woke`, says a snapshot is due
            while self._commands:
                woke = True
                try:
                    self._commands.popleft()()
                except Exception:
                    pass
            now = time.monotonic()
            try:
                moved = self.tick(now - last)
                moved |= self._behind_done()
            except Exception:
                moved = False
            last = now
            if moved or woke:
                post(self.build())


def _end_group(proc: Any) -> None:
    """End the read behind and the worker processes it started (its process group)."""
    import signal

    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except Exception:
            continue
