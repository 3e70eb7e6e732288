"""The life of a source's read loop, shared by ``tui watch`` and ``tui replay``.

:meth:`ReadLoop.run` is the loop, blocking, in whichever thread calls it (the app runs it in
a Textual worker); :meth:`ReadLoop.start` runs it in a daemon thread for callers without
Textual (tests, benchmarks); :meth:`ReadLoop.stop_loop` ends it. A source says what its
loop does (``_loop``) and what comes before and after it (``_begin``, ``_end``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from tui.model.snapshot import WorldSnapshot

Post = Callable[[WorldSnapshot], None]


class ReadLoop:
    """A loop run once, until :meth:`stop_loop`; subclasses call :meth:`_init_loop`."""

    thread_name = "stagewatch-source"

    def _init_loop(self) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._loop_ident: int | None = None  # the thread running run() (None: not running)
        self._ended = threading.Event()  # run() returned
        self._control = threading.Lock()  # run() starting or ending, against a control

    def _begin(self) -> None:
        """Before the loop, in its thread (not when stopped before it ran)."""

    def _end(self) -> None:
        """After the loop, in its thread (also when stopped before it ran)."""

    def _loop(self, post: Post) -> None:
        raise NotImplementedError

    def start(self, post: Post) -> None:
        """:meth:`run` in a daemon thread."""
        threading.Thread(target=self.run, args=(post,), name=self.thread_name, daemon=True).start()

    def run(self, post: Post) -> None:
        """Read and post snapshots until stopped: the loop, in the caller's thread."""
        with self._control:
            self._loop_ident = threading.get_ident()
        try:
            if not self._stop.is_set():  # stopped before it ran: start nothing
                self._begin()
                self._loop(post)
        finally:
            self._end()
            with self._control:
                self._loop_ident = None
            self._ended.set()

    @property
    def running(self) -> bool:
        """True while :meth:`run` runs (in whichever thread)."""
        return self._loop_ident is not None

    def stop_loop(self) -> bool:
        """End :meth:`run`, waiting up to 2 s for it (unless called from its own thread).
        False when it was not running."""
        self._stop.set()
        self._wake.set()
        ident = self._loop_ident
        if ident is not None and ident != threading.get_ident():
            self._ended.wait(timeout=2)
        return ident is not None
