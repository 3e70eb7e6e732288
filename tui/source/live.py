"""The live source of ``tui watch``: a reader thread over a :class:`RootReader`.

File events wake the thread at once (:mod:`tui.source.watcher`); a periodic scan is the
ground truth (events are missed on network filesystems, and where the watcher cannot start
the scan alone finds new data), and ``poll=True`` uses the scan alone. Each tick that
changes something builds one immutable :class:`WorldSnapshot` and hands it to ``post``, at
most :data:`MAX_POSTS_PER_S` a second: a run appending 20 steps a second (or 60 ranks...)
costs the screen what a person can follow, not one redraw per line. A change after a quiet
spell is posted at once (latency stays low); changes during the gap are coalesced into one
snapshot at its end.

Only the snapshots the panels will draw carry the per-region figures (the bulk of a
snapshot's cost): one every :attr:`LiveSource.full_gap` seconds (the app sets it to its
panel gap), one when the view changes (another run, a run added or gone, a state change)
and one when the app asks (:meth:`LiveSource.want_full`: a key). The snapshots between are
light (:attr:`RunSnapshot.light`): the header's figures only. After a light one, a full one
follows at the end of the gap even if nothing changed, so the panels catch up with the last
step of a busy spell.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from tui.model.aggregate import DEFAULT_WINDOW
from tui.model.snapshot import WorldSnapshot
from tui.source import watcher
from tui.source.loop import Post, ReadLoop
from tui.source.root import RootReader

MAX_POSTS_PER_S = 8.0  # snapshots (so redraws) a second at most, at the source
FULL_GAP_S = (
    1.0  # seconds between full snapshots while light ones stream (the app sets its panel gap)
)


CATCHUP_QUIET_S = 1.0  # a due full snapshot with no change of its own waits this since a post


class LiveSource(ReadLoop):
    """Reads a log root in a thread and posts snapshots."""

    mode = "watch"
    thread_name = "stagewatch-reader"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        poll: bool = False,
        interval: float | None = None,
        window: int = DEFAULT_WINDOW,
        stale_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        min_gap: float = 1.0 / MAX_POSTS_PER_S,
        use_index: bool | None = None,
        full_gap: float = FULL_GAP_S,
    ) -> None:
        self.root = os.fspath(root)
        self.reader = RootReader(
            root, window=window, stale_after=stale_after, clock=clock, use_index=use_index
        )
        self.poll = poll
        self.interval = interval if interval is not None else (0.25 if poll else 1.0)
        self.clock = clock
        self.min_gap = min_gap
        self.full_gap = full_gap  # seconds between full snapshots (0: every snapshot is full)
        self._want_full = False
        self._view: tuple[Any, ...] | None = None  # what the last snapshot built showed
        self._init_loop()
        self._watch_begun = False
        self._watcher: watcher.Watcher | None = None
        self._seq = 0
        self._want_select: str | None = None
        self._lock = threading.Lock()
        self.watching = False  # True when file events wake the reader (else: the scan alone)

    # ------------------------------------------------------------------ control
    def select(self, run_id: str) -> None:
        with self._lock:
            self._want_select = run_id
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def want_full(self) -> None:
        """Post a full snapshot as soon as allowed (a key asked for the panels' figures)."""
        self._want_full = True
        self._wake.set()

    def start(self, post: Post) -> None:
        """:meth:`run` in a daemon thread; file watching is on when this returns."""
        self._watch()
        super().start(post)

    def stop(self) -> None:
        """End :meth:`run`, waiting up to 2 s for it (unless called from its own thread)."""
        if not self.stop_loop():  # not running: the watching start() began, if any
            self._stop_watching()

    def _begin(self) -> None:
        self._watch()

    def _end(self) -> None:
        self._stop_watching()

    def _watch(self) -> None:
        """Start file watching, once (no events with ``poll``: the scan alone)."""
        if not self.poll and not self._watch_begun:
            self._watch_begun = True
            self._start_watching()

    def _stop_watching(self) -> None:
        with self._lock:  # stop() and the end of run() may both get here
            w, self._watcher = self._watcher, None
        if w is not None:
            w.stop()

    def _start_watching(self) -> None:
        folder = self.root if os.path.isdir(self.root) else os.path.dirname(self.root) or "."
        self._watcher = watcher.start(folder, self._wake.set, tick_s=self.min_gap)
        self.watching = self._watcher is not None

    # ------------------------------------------------------------------ reading
    def build(self, changed: bool = True, full: bool | None = True) -> WorldSnapshot:
        """One snapshot of the reader's current state (reader thread, or tests).

        ``full=False``: light, unless the view changed since the last snapshot built (another
        run, a run added, gone or changing state, the run list's order): the panels draw that
        one.
        """
        run = self.reader.selected_run()
        runs = self.reader.items()
        state = run.state() if run is not None else None
        # the run list as the panels show it (ids, order, states; not the steps), the run on
        # screen and its state, the reader's error
        listed = tuple((r.run_id, r.state, r.started) for r in runs)
        view = (listed, run.run_id if run is not None else None, state, self.last_error)
        if view != self._view:
            full = True
        self._view = view
        self._seq += 1
        return WorldSnapshot(
            seq=self._seq,
            root=self.root,
            runs=runs,
            selected=run.snapshot(light=not full) if run is not None else None,
            made_at=time.monotonic(),
            mode=self.mode,
            error=self.last_error,
        )

    _shown_key: tuple[object, ...] | None = None  # _header_key() of the last snapshot posted
    _last_light = False  # the last snapshot posted was light

    def _post(self, full: bool, post: Post) -> None:
        t_build = time.thread_time()
        snap = self.build(full=full)
        if not snap.light:  # the screen paces its panel redraws by this cost
            self.full_cost_s = time.thread_time() - t_build
            self.full_posts += 1
        self._last_light = snap.light
        post(snap)
        self.posts += 1

    def _header_key(self) -> tuple[object, ...]:
        """What a light snapshot could change on screen: the runs listed and their states,
        the run shown, its state, its oldest and newest rank's step and how many ranks it has,
        the reader's error. Equal keys: a light snapshot would draw the same header."""
        runs = self.reader.items()
        listed = tuple((r.run_id, r.state, r.started) for r in runs)
        run = self.reader.selected_run()
        if run is None:
            return (listed, None, self.last_error)
        steps = [a.last_step for a in run.agg.ranks.values()]
        low, high = (min(steps), max(steps)) if steps else (0, 0)
        return (listed, run.run_id, run.state(), low, high, len(steps), self.last_error)

    _held_at: float | None = None  # when a post that moved only the newest step was held

    def _hold(self, key: tuple[object, ...], now: float) -> bool:
        """True to hold a light snapshot whose only change on screen is the newest rank's
        step, for up to one ``min_gap``: a step's lines reach the ranks' files within
        moments of each other but often straddle a tick, and at 64 ranks each post costs a
        light snapshot and a header frame (~9 ms). Held, the next tick usually moves the
        oldest rank's step too and one post shows both; a rank left behind (the newest
        step alone moving) is shown at the hold's end, one ``min_gap`` late."""
        shown = self._shown_key
        if shown is None or len(shown) != 7 or len(key) != 7:
            return False
        if key[:4] != shown[:4] or key[5:] != shown[5:]:
            return False  # more than the newest step moved
        if self._held_at is None:
            self._held_at = now
        return now - self._held_at < self.min_gap

    def step(self) -> WorldSnapshot | None:
        """One synchronous tick: read, and return a snapshot if anything changed."""
        with self._lock:
            sel, self._want_select = self._want_select, None
        if sel is not None:
            self.reader.selected = sel
        changed = self.reader.tick() or sel is not None
        return self.build() if changed else None

    reader_cpu_s = 0.0  # CPU seconds the reader thread has used (benchmarks)
    posts = 0  # snapshots posted

    full_posts = 0  # full snapshots among them

    def _loop(self, post: Post) -> None:
        last_post = 0.0
        last_full = -1e9  # when the last full snapshot was posted
        behind_panels = False  # a light snapshot was posted since: a full one is due
        pending = False
        first = True
        while not self._stop.is_set():
            self.reader_cpu_s = time.thread_time()
            # woken by a write before a post is allowed: let the lines of the gap arrive and
            # read them in one tick (a writer flushing 60 times a second costs 8 reads, not 60)
            early = self.min_gap - (time.monotonic() - last_post)
            if (
                early > 0
                and not first
                and not self.reader.behind
                and self._want_select is None
                and not self._want_full
            ):
                self._stop.wait(early)
            try:
                with self._lock:
                    sel, self._want_select = self._want_select, None
                if sel is not None:
                    self.reader.selected = sel
                changed = self.reader.tick() or sel is not None or first
                pending |= changed
                now = time.monotonic()
                full_due = now - last_full >= self.full_gap
                # the panels' catch-up after a light post: while steps keep coming it rides on
                # the next step's post (made full), not a post (and header frame) of its own
                quiet = now - last_post >= CATCHUP_QUIET_S
                # no rebuild for time passing: the state changing (running -> stale) is a
                # change tick() reports, and the screen ages "last write" on its own
                if (
                    (pending or (behind_panels and ((full_due and quiet) or self._want_full)))
                    and now - last_post >= self.min_gap
                    and not self.busy()
                ):
                    want, self._want_full = self._want_full, False
                    full = full_due or want or first or sel is not None
                    key = self._header_key()
                    if not full and key == self._shown_key:
                        # nothing the header shows moved (another rank's line of a step
                        # already shown): the panels' next full snapshot takes these lines
                        pending, behind_panels = False, True
                        self._held_at = None
                    elif not full and self._hold(key, now):
                        pass  # the rest of the step's lines are due: one post for them all
                    else:
                        self._shown_key, self._held_at = key, None
                        self._post(full, post)
                        last_post, pending = now, False
                        if self._last_light:
                            behind_panels = True
                        else:
                            last_full, behind_panels = now, False
                        first = False
            except (
                Exception
            ) as e:  # keep reading; the screen shows the error and the last good figures
                self.last_error = f"reader failed: {type(e).__name__}: {e}"[:300]
                self.failures += 1
                try:
                    post(self.build())
                    last_post = time.monotonic()
                    pending = False
                except Exception:
                    pass
                self._wake.wait(self.interval)  # no hot loop on a persistent failure
                self._wake.clear()
                continue
            if self.reader.behind:
                continue  # more to read: no waiting
            now = time.monotonic()
            timeout = self.interval if not pending else max(0.01, self.min_gap - (now - last_post))
            if pending and self._held_at is not None:  # the hold's end, unless lines come first
                timeout = max(0.01, self._held_at + self.min_gap - now)
            if behind_panels:  # the full snapshot due at the gap's end
                timeout = min(
                    timeout,
                    max(
                        0.01,
                        last_full + self.full_gap - now,
                        last_post + CATCHUP_QUIET_S - now,
                        self.min_gap - (now - last_post),
                    ),
                )
            self._wake.wait(timeout)
            self._wake.clear()

    full_cost_s = 0.0  # thread CPU seconds of the last full snapshot built
    last_error: str | None = None  # the reader thread's last failure (one line)
    failures = 0  # how many times it failed: `tui watch` exits non-zero when > 0

    @property
    def failed(self) -> bool:
        """The reader thread failed at least once (a run's own read error is in its
        snapshot's ``reader_error``; this is the thread itself)."""
        return self.failures > 0 or any(r.error for r in self.reader.runs.values())

    @staticmethod
    def busy() -> bool:
        """True while the screen has not taken the last snapshot (the app replaces this):
        no snapshot is built that would only be skipped."""
        return False
