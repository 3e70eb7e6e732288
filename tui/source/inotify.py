"""Linux inotify through libc, for ``tui watch``: one thread that wakes the reader when
something under the log root may have new data.

watchdog's observer runs three threads and builds an event object per write: with 3 ranks
appending 20 steps a second that cost ~1% of a core. Here one thread blocks in ``select``
and, per batch of events the kernel hands over, only looks for new folders (a new run) to
watch them too, then sets the reader's wake-up. The root and the folders directly under it
are watched (where run folders and rank files live). :func:`start` returns None where
inotify is not available (another OS, no libc, the watch limit reached): the caller falls
back to watchdog or to its periodic scan.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import sys
import threading
from typing import Any

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
# what can mean new data: appends, truncation, files and folders made, removed or renamed
# (never opens, reads or closes without writing: the reader's own reads)
MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
_HEAD = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


class Inotify:
    """Watches ``root`` and the folders directly under it; calls ``wake`` per batch of events."""

    def __init__(self, libc: Any, fd: int, root: str, wake: Any) -> None:
        self._libc = libc
        self.fd = fd
        self.root = root
        self._wake = wake
        self._root_wd = -1
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None
        self.batches = 0  # batches of events read (tests)

    def _add(self, path: str) -> int:
        return int(self._libc.inotify_add_watch(self.fd, os.fsencode(path), MASK))

    def watch_tree(self) -> bool:
        """Watch the root and its folders; False when the root cannot be watched."""
        self._root_wd = self._add(self.root)
        if self._root_wd < 0:
            return False
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            entries = []
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    self._add(e.path)  # a failure (limit reached) leaves that run to the scan
            except OSError:
                pass
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="stagewatch-inotify", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        for fd in (self.fd, self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _loop(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.fd, self._stop_r], [], [])
            except OSError:
                return
            if self._stop_r in ready:
                return
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                continue
            except OSError:
                return
            self.batches += 1
            self._new_folders(data)
            self._wake.set()

    def _new_folders(self, data: bytes) -> None:
        """Watch folders made (or moved) under the root: a new run."""
        i, n = 0, len(data)
        while i + _HEAD.size <= n:
            wd, mask, _cookie, ln = _HEAD.unpack_from(data, i)
            start = i + _HEAD.size
            i = start + ln
            if wd == self._root_wd and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO) and ln:
                name = data[start : start + ln].split(b"\0", 1)[0]
                if name:
                    self._add(os.path.join(self.root, os.fsdecode(name)))


def start(root: str, wake: Any) -> Inotify | None:
    """Watch ``root`` (a folder) and wake ``wake`` (a ``threading.Event``) on changes; None
    where inotify cannot be used."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        fd = int(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    ino = Inotify(libc, fd, root, wake)
    try:
        ok = ino.watch_tree()
    except OSError:
        ok = False
    if not ok:
        ino.stop()
        return None
    ino.start()
    return ino
