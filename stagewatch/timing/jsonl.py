"""Append-only line files that never raise into training, and the timing core's warnings.

A :class:`LineFile` buffers whole lines and appends them with ``os.write`` on an
``O_APPEND`` descriptor, so a process killed at any moment leaves at most one partial last
line. On the first IO error (disk full, permission denied, folder removed) it emits one
:class:`TimingWarning`, drops its buffer and disables itself; training goes on. Appending
to a file whose last line is partial (a writer killed or out of disk space) starts a new
line first, so the partial line stays one malformed line and the new records stay whole.
A LineFile is not thread-safe: its owner serialises calls (the logger holds a lock).
"""

from __future__ import annotations

import os
import sys
import warnings


class TimingWarning(RuntimeWarning):
    """Something went wrong in the timing core; training continues without it."""


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # stagewatch/


def warn(message: str) -> None:
    """Warn (a :class:`TimingWarning`) at the first line outside stagewatch that led here: the
    user's call, wherever inside the library the problem was found."""
    level, f = 2, sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith(_PACKAGE):
        f, level = f.f_back, level + 1
    warnings.warn(f"stagewatch: {message}", TimingWarning, stacklevel=level)


class LineFile:
    """Whole lines appended to one file; buffered; disabled after one warning on error."""

    __slots__ = (
        "_buf",
        "_bytes",
        "_fd",
        "_in_flush",
        "_need_newline",
        "_pid",
        "disabled",
        "max_buffer_bytes",
        "path",
    )

    def __init__(self, path: str, max_buffer_bytes: int = 1 << 20) -> None:
        self.path = path
        self.max_buffer_bytes = max_buffer_bytes
        self._fd: int | None = None
        self._buf: list[bytes] = []
        self._bytes = 0
        self._in_flush = False
        self._need_newline = False
        self._pid = os.getpid()
        self.disabled = False

    def open(self) -> bool:
        """Create the folder and open the file for appending; False (warned) on error."""
        if self.disabled:
            return False
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            self._fd = os.open(self.path, flags, 0o644)
            size = os.fstat(self._fd).st_size
        except OSError as e:
            self._fail(e)
            return False
        if size > 0:
            try:
                with open(self.path, "rb") as f:  # our descriptor is write-only
                    f.seek(size - 1)
                    self._need_newline = f.read(1) not in (b"\n", b"")
            except OSError:
                self._need_newline = True  # an extra empty line is harmless; a glued one is not
        return True

    def write(self, line: str | bytes) -> None:
        """Queue one complete line (must end with ``\\n``)."""
        if self.disabled:
            return
        if type(line) is str:
            line = line.encode("utf-8", "replace")
        self._buf.append(line)
        self._bytes += len(line)
        if self._bytes >= self.max_buffer_bytes:
            self.flush()

    def flush(self) -> None:
        """Append the queued lines to the file. Never raises."""
        # _in_flush: a signal handler that interrupts a flush must not append (it would
        # land in the middle of a line); the interrupted flush finishes or the process ends.
        if self.disabled or self._in_flush or not self._buf:
            return
        if os.getpid() != self._pid:
            # a forked child (e.g. a DataLoader worker) holds a copy of the parent's buffer:
            # writing it would duplicate the parent's lines
            self._buf.clear()
            self._bytes = 0
            return
        if self._fd is None and not self.open():
            return
        self._in_flush = True
        try:
            data = b"".join(self._buf)
            if self._need_newline:
                data = b"\n" + data
            fd = self._fd
            assert fd is not None
            if os.fstat(fd).st_nlink == 0:  # writes to an unlinked file would vanish silently
                raise FileNotFoundError(2, "the log file or its folder was removed", self.path)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            self._need_newline = False
            self._buf.clear()
            self._bytes = 0
        except OSError as e:
            self._fail(e)
        finally:
            self._in_flush = False

    def close(self) -> None:
        self.flush()
        if self._fd is not None and os.getpid() == self._pid:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _fail(self, e: OSError) -> None:
        self.disabled = True
        self._buf.clear()
        self._bytes = 0
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        reason = e.strerror or str(e)
        warn(f"cannot write {self.path}: {reason}; this log is off for the rest of the run")
