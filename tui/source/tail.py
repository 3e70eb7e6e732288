"""Files followed by (inode, offset): complete lines only, a partial last line kept.

A file that shrinks, is replaced (new inode) or whose first bytes change is read again from
the start (the caller rebuilds what it derived from it). Only regular files are opened; a
missing, unreadable or odd file is reported in :attr:`TailFile.status`, never raised.
"""

from __future__ import annotations

import errno
import os
import stat

import msgspec

from stagewatch.records import MAX_LINE_BYTES as MAX_LINE

CHUNK = 256 * 1024  # bytes read from one file per round (ranks are read interleaved)
_HEAD = 512  # first bytes (the run_start line: time, pid) compared to notice a rewrite in place
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)

FILE_OK = "ok"
FILE_MISSING = "missing"
FILE_UNREADABLE = "unreadable"
FILE_NOT_REGULAR = "not-regular"
FILE_LOOP = "symlink-loop"


class TailState(msgspec.Struct, frozen=True):
    """Where a :class:`TailFile` stands (the run index saves it)."""

    offset: int
    partial: bytes
    skipping: bool
    head: bytes
    overlong: int
    size: int
    mtime: float
    lines: int = 0  # lines returned, blank ones and dropped overlong ones too
    long_at: int = 0  # the line number of the last overlong line (0: none)


class TailFile:
    """One file followed by (inode, offset). Only complete lines are returned."""

    def __init__(self, path: str | os.PathLike[str], chunk: int = CHUNK) -> None:
        self.path = os.fspath(path)
        self.chunk = chunk
        self.ident: tuple[int, int] | None = None
        self.offset = 0
        self.partial = b""
        self.skipping = False
        self.head = b""
        self.size = 0
        self.overlong = 0  # lines dropped for being longer than MAX_LINE
        self.lines = 0  # lines returned, blank ones too, and the overlong ones dropped
        self.long_at = 0  # the line number (as an editor shows it) of the last overlong one
        self.mtime = 0.0
        self.status = FILE_OK  # or missing / unreadable / not a regular file / symlink loop
        self.problem = ""  # one line saying what is wrong with the file, "" when fine
        # (device, inode, size, mtime, ctime) of the file when last read to its end
        self._unchanged: tuple[int, ...] | None = None

    def reset(self) -> None:
        self._unchanged = None
        self.ident = None
        self.offset = 0
        self.partial = b""
        self.skipping = False
        self.head = b""
        self.size = 0
        self.overlong = 0
        self.lines = self.long_at = 0

    def state(self) -> TailState:
        """Position, partial line and counters, to :meth:`restore` later."""
        return TailState(
            self.offset,
            self.partial,
            self.skipping,
            self.head,
            self.overlong,
            self.size,
            self.mtime,
            self.lines,
            self.long_at,
        )

    def restore(self, state: TailState, ident: tuple[int, int]) -> None:
        """Go on from ``state``, the file being ``ident`` (device, inode) now: a file
        replaced after this is noticed by the next :meth:`read`."""
        self.reset()
        self.ident = ident
        self.offset, self.partial, self.skipping = state.offset, state.partial, state.skipping
        self.head, self.overlong = state.head, state.overlong
        self.size, self.mtime = state.size, state.mtime
        self.lines, self.long_at = state.lines, state.long_at

    def _trouble(self, status: str, problem: str) -> tuple[list[bytes], bool, bool]:
        self.status, self.problem = status, problem
        return [], False, False  # keep what was read: the screen flags the file instead

    def read(self) -> tuple[list[bytes], bool, bool]:
        """(complete new lines, reset happened, more data waiting).

        Only regular files are opened (stat first, then a non-blocking open checked again):
        a FIFO or a folder under a rank file's name is reported in :attr:`status`, never read.
        """
        try:
            st = os.stat(self.path)
        except OSError as e:
            return self._trouble(*_os_trouble(e))
        if not stat.S_ISREG(st.st_mode):
            return self._trouble(FILE_NOT_REGULAR, f"not a regular file ({_file_type(st.st_mode)})")
        unchanged = self._unchanged == _key(st) and self.status == FILE_OK
        self._unchanged = None
        try:
            fd = os.open(self.path, os.O_RDONLY | _O_NONBLOCK)
        except OSError as e:
            return self._trouble(*_os_trouble(e))
        if unchanged:
            # the same file, read to its end, not written since (size and both times): still
            # readable, nothing to read (64 ranks, 8 ticks a second: most find nothing)
            os.close(fd)
            self._unchanged = _key(st)
            return [], False, False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # swapped between the stat and the open
                return self._trouble(
                    FILE_NOT_REGULAR, f"not a regular file ({_file_type(st.st_mode)})"
                )
            self.status, self.problem = FILE_OK, ""
            ident = (st.st_dev, st.st_ino)
            reset = False
            if self.ident is not None and (
                ident != self.ident
                or st.st_size < self.offset
                or (self.head and os.pread(fd, len(self.head), 0) != self.head)
            ):
                self.reset()
                reset = True
            self.ident = ident
            self.size = st.st_size
            self.mtime = st.st_mtime
            if st.st_size <= self.offset:
                if st.st_size == self.offset:
                    self._unchanged = _key(st)
                return [], reset, False
            data = os.pread(fd, self.chunk, self.offset)
        except OSError as e:
            return self._trouble(*_os_trouble(e))
        finally:
            os.close(fd)
        if len(self.head) < _HEAD and self.offset < _HEAD:
            self.head = (self.head + data[: _HEAD - self.offset])[:_HEAD]
        self.offset += len(data)
        more = self.offset < st.st_size
        if self.offset == st.st_size:
            self._unchanged = _key(st)
        if self.skipping:  # inside an overlong line (counted once): drop up to its end
            i = data.find(b"\n")
            if i < 0:
                return [], reset, more
            data = data[i + 1 :]
            self.skipping = False
        lines = (self.partial + data).split(b"\n") if self.partial else data.split(b"\n")
        self.partial = lines.pop()
        self.lines += len(lines)
        if len(self.partial) > MAX_LINE:
            self.partial = b""
            self.overlong += 1
            self.skipping = True
            self.lines += 1  # its number, after this read's lines: the next ones count it
            self.long_at = self.lines
        return lines, reset, more


def _key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _os_trouble(e: OSError) -> tuple[str, str]:
    """(file status, one-line reason) of an error opening or reading a file."""
    if e.errno == errno.ENOENT:
        return FILE_MISSING, "removed (figures are from what was read before)"
    if e.errno == errno.ELOOP:
        return FILE_LOOP, "symlink loop"
    if e.errno in (errno.EACCES, errno.EPERM):
        return FILE_UNREADABLE, "permission denied"
    return FILE_UNREADABLE, e.strerror or type(e).__name__


def _file_type(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a file"
