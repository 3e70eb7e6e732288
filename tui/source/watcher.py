"""File events under a folder wake the reader of ``tui watch`` at once.

watchdog's observer (inotify on Linux, FSEvents on macOS, ReadDirectoryChangesW on
Windows) watches the folder and the folders below it. The caller's periodic scan stays the
ground truth: events are missed on network filesystems, and where the observer cannot start
(no inotify watches left, an odd filesystem) :func:`start` returns None and the scan alone
finds new data. Its threads cost about half a point of a core more than a dedicated inotify
thread did, with 3 ranks appending 20 steps a second (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Wake = Callable[[], None]


class Watcher:
    """A folder being watched; :meth:`stop` ends it."""

    def __init__(self, observer: Any) -> None:
        self._observer = observer

    def stop(self) -> None:
        """Stop watching (waits up to 2 s for the observer's threads). Never raises."""
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
        return self._observer is not None and self._observer.is_alive()


def start(folder: str, wake: Wake) -> Watcher | None:
    """Call ``wake`` whenever something under ``folder`` may have new data (files written,
    made, removed or renamed; folders made, removed or renamed). None where no observer can
    be started."""
    obs = None
    try:
        from watchdog import events as ev
        from watchdog.observers import Observer

        class _Handler(ev.FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if event.event_type != "opened" and event.event_type != "closed_no_write":
                    wake()

        obs = Observer()
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
        obs.schedule(_Handler(), folder, recursive=True, event_filter=kinds)
        obs.daemon = True
        obs.start()
    except Exception:  # no inotify (limits, odd filesystems): the scan still works
        if obs is not None:
            Watcher(obs).stop()  # threads it may have started before failing
        return None
    return Watcher(obs)
