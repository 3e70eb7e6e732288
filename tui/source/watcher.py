"""File events under a folder wake the reader of ``tui watch`` at once.

watchdog's observer (inotify on Linux, FSEvents on macOS, ReadDirectoryChangesW on
Windows) watches the folder and the folders below it. The caller's periodic scan stays the
ground truth: events are missed on network filesystems, and where the observer cannot start
(no inotify watches left, an odd filesystem) :func:`start` returns None and the scan alone
finds new data.

Events matter at the edge of a quiet spell (the first write is shown at once). In a busy
spell they only repeat what the reader learns by reading at its own pace, and each costs
watchdog four thread hand-offs: 3 ranks appending 20 steps a second cost its threads
~1.3% of a core, against ~0.15% for a dedicated inotify thread. So in a hot spell
(:data:`HOT_EVENTS` within :data:`HOT_WINDOW_S`) the watcher stops watching for
:data:`HOLD_S` and wakes the reader every ``tick_s`` itself (its pace anyway), then watches
again: ~0.35% of a core for the same writes, no later a step shown (docs/benchmarks.md).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

Wake = Callable[[], None]
HOT_EVENTS = 8  # events ...
HOT_WINDOW_S = 0.5  # ... within this long make a hot spell (16 a second: no training's flushes)
HOLD_S = 1.0  # then the events are off this long, the reader woken every tick_s instead


class Watcher:
    """A folder being watched; :meth:`stop` ends it."""

    def __init__(self, folder: str, wake: Wake, tick_s: float) -> None:
        self._folder = folder
        self._wake = wake
        self._tick_s = max(0.01, tick_s)
        self._observer: Any = None
        self._watch: Any = None
        self._recent: deque[float] = deque(maxlen=HOT_EVENTS)
        self._hot = threading.Event()  # a hot spell began: the holder takes over
        self._stopped = threading.Event()
        self._lock = threading.Lock()  # (un)scheduling against stop()
        self.holds = 0  # hot spells held (tests, benchmarks)

    def _start(self) -> None:
        from watchdog.observers import Observer

        obs = Observer()
        obs.daemon = True
        self._observer = obs
        self._schedule()
        obs.start()
        threading.Thread(
            target=self._hold_spells, name="stagewatch-watch-hold", daemon=True
        ).start()

    def _schedule(self) -> None:
        from watchdog import events as ev

        # only the kinds of event that can mean new data: the kernel then never reports
        # the opens and closes of the reader's own reads (every file, every tick), which
        # cost the watching threads as much as the writer's appends
        kinds = [
            ev.FileModifiedEvent,
            ev.FileCreatedEvent,
            ev.FileDeletedEvent,
            ev.FileMovedEvent,
            ev.FileClosedEvent,
            ev.DirCreatedEvent,
            ev.DirDeletedEvent,
            ev.DirMovedEvent,
        ]
        handler = ev.FileSystemEventHandler()
        handler.on_any_event = self._on_event  # type: ignore[method-assign]
        self._watch = self._observer.schedule(
            handler, self._folder, recursive=True, event_filter=kinds
        )

    def _on_event(self, event: Any) -> None:  # the observer's thread
        if event.event_type == "opened" or event.event_type == "closed_no_write":
            return
        self._wake()
        if self._hot.is_set():
            return
        now = time.monotonic()
        recent = self._recent
        recent.append(now)
        if len(recent) == HOT_EVENTS and now - recent[0] < HOT_WINDOW_S:
            self._hot.set()

    def _hold_spells(self) -> None:
        """Each hot spell: events off for HOLD_S, the reader woken every tick_s, events on."""
        while not self._stopped.is_set():
            self._hot.wait()
            if self._stopped.is_set():
                return
            with self._lock:
                if self._stopped.is_set():
                    return
                self._unschedule()
            self.holds += 1
            end = time.monotonic() + HOLD_S
            while not self._stopped.wait(self._tick_s):
                self._wake()
                if time.monotonic() >= end:
                    break
            with self._lock:
                if self._stopped.is_set():
                    return
                try:
                    self._schedule()
                except Exception:  # the folder went: the caller's scan goes on alone
                    return
                self._recent.clear()
                self._hot.clear()
            self._wake()  # what was written while the events were off is read now

    def _unschedule(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            try:
                self._observer.unschedule(watch)
            except Exception:
                pass

    def stop(self) -> None:
        """Stop watching (waits up to 2 s for the observer's threads). Never raises."""
        with self._lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
            self._hot.set()  # lets the holder end
            obs, self._observer = self._observer, None
        if obs is None:
            return
        try:
            obs.stop()
            obs.join(timeout=2)
        except Exception:
            pass

    @property
    def alive(self) -> bool:
        obs = self._observer
        return obs is not None and obs.is_alive()


def start(folder: str, wake: Wake, tick_s: float = 0.125) -> Watcher | None:
    """Call ``wake`` whenever something under ``folder`` may have new data (files written,
    made, removed or renamed; folders made, removed or renamed); in a hot spell, every
    ``tick_s`` instead (the reader's own pace). None where no observer can be started."""
    w = Watcher(folder, wake, tick_s)
    try:
        w._start()
    except Exception:  # no inotify (limits, odd filesystems): the scan still works
        w.stop()  # threads it may have started before failing
        return None
    return w
