"""The run index: a run's folded state saved beside it, so reopening it reads no old bytes.

After a run was read to the end and has ended (or stayed idle :data:`IDLE_S`), the reader
saves the statistics (:class:`~tui.model.state.RunAggState`) and each rank file's position
and counters (:class:`~tui.source.feed.FeedState`) in ``<run>/.stagewatch-index``
(``.<file>.stagewatch-index`` for a single rank file given alone). Each file is keyed by
its size, modification time and a hash of its first and last :data:`KEY_BYTES` bytes
before the position read to; a later open whose files still start with those bytes
restores the state and reads only what was appended.

A missing, stale (a file shrank, was replaced or rewritten, a rank file appeared or went),
corrupt, foreign-version or unwritable index is ignored: never trusted, never fatal; the
run is read in full instead. The result is the same as a full read (the statistics are
accumulated in file order, whatever the batches). The file holds msgpack (``msgspec``) of
those states and raw numpy buffers, compressed, with a checksum, decoded into typed structs
(a value of another type makes the index unusable); nothing in it is executed.

``--no-index`` on the ``tui`` commands (or ``STAGEWATCH_NO_INDEX=1``) bypasses it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zlib
from collections.abc import Sequence

import msgspec

from tui.model.aggregate import RunAgg
from tui.model.state import RunAggState, agg_from_state, state_of
from tui.source.feed import Feed, FeedState
from tui.source.tail import FILE_OK

INDEX_NAME = ".stagewatch-index"
FORMAT = "stagewatch-run-index"
# 6: each rank's downsampled region series (the chart); 5: the feeds' step sets, cuts of
# resumes and of repeated steps; 4: typed states of the feeds and the aggregate; 3: records
# as the format's own structs; 2: a ring slot is the row number mod the window
VERSION = 6
MAGIC = b"SWIDX\x01\n"
KEY_BYTES = 4096
IDLE_S = 300.0  # a run whose files have not grown for this long is indexed, ended or not
MAX_INDEX_BYTES = 256 * 2**20
_enabled = os.environ.get("STAGEWATCH_NO_INDEX", "") in ("", "0")


def set_enabled(on: bool) -> None:
    """Use (and write) run indexes or not, for this process (``--no-index``)."""
    global _enabled
    _enabled = bool(on)


def enabled() -> bool:
    return _enabled


class UnusableIndex(Exception):
    """An index that cannot be used (the run is read in full instead)."""


def index_path(folder: str | os.PathLike[str], single_file: str | None = None) -> str:
    """Where the index of the run in ``folder`` lives; ``single_file``: the name of a rank
    file given alone (its index is ``.<file>.stagewatch-index`` beside it)."""
    if single_file is not None:
        return os.path.join(folder, f".{single_file}{INDEX_NAME}")
    return os.path.join(folder, INDEX_NAME)


class FileKey(msgspec.Struct, frozen=True):
    """A rank file when indexed: size, modification time, hashes of its first and last
    :data:`KEY_BYTES` bytes before the position read to."""

    size: int
    mtime_ns: int
    head_hash: bytes
    tail_hash: bytes


class IndexedFile(msgspec.Struct, frozen=True):
    name: str  # the file's name in the run folder
    rank: int
    end: int  # the position read to (its partial last line left out)
    key: FileKey
    feed: FeedState


class Index(msgspec.Struct, frozen=True):
    format: str
    version: int
    run_id: str
    window: int
    files: list[IndexedFile]
    agg: RunAggState


_decode_index = msgspec.msgpack.Decoder(Index).decode

# --------------------------------------------------------------------------- keys


def _hash(b: bytes) -> bytes:
    return hashlib.blake2b(b, digest_size=16).digest()


def file_key(fd: int, end: int) -> tuple[bytes, bytes]:
    """Hashes of the first and the last KEY_BYTES bytes before ``end`` of an open file."""
    head = os.pread(fd, min(KEY_BYTES, end), 0)
    lo = max(0, end - KEY_BYTES)
    tail = os.pread(fd, end - lo, lo)
    if len(head) != min(KEY_BYTES, end) or len(tail) != end - lo:
        raise UnusableIndex("file shorter than indexed")
    return _hash(head), _hash(tail)


def _key_of(path: str, end: int) -> FileKey:
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UnusableIndex("not a regular file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        h, t = file_key(fd, end)
    finally:
        os.close(fd)
    return FileKey(st.st_size, st.st_mtime_ns, h, t)


# --------------------------------------------------------------------------- save / load


def save(path: str, run_id: str, window: int, feeds: Sequence[Feed], agg: RunAgg) -> bool:
    """Write the index of a run (its ``feeds``, folded into ``agg``) to ``path``.
    True when written; never raises."""
    try:
        return _save(path, run_id, window, feeds, agg)
    except Exception:  # read-only folder, disk full, a race with the writer...: no index
        return False


def _save(path: str, run_id: str, window: int, feeds: Sequence[Feed], agg: RunAgg) -> bool:
    if not feeds or any(
        f.kind != "jsonl" or f.tail.status != FILE_OK or f.tail.ident is None for f in feeds
    ):
        return False
    files = []
    for f in feeds:
        end = f.tail.offset - len(f.tail.partial)
        name = os.path.basename(f.tail.path)
        files.append(IndexedFile(name, f.rank, end, _key_of(f.tail.path, end), f.state()))
    idx = Index(FORMAT, VERSION, run_id, window, files, state_of(agg))
    body = zlib.compress(msgspec.msgpack.encode(idx), 1)
    if len(body) > MAX_INDEX_BYTES:
        return False
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(MAGIC + _hash(body) + body)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


def load(
    path: str, run_id: str, run_path: str, window: int, feeds: Sequence[Feed]
) -> RunAgg | None:
    """The run's aggregate from the index at ``path``, the ``feeds`` restored to where it
    was saved, when the index matches the files; None (the feeds untouched) otherwise.
    ``run_path`` is the aggregate's path. Never raises."""
    try:
        return _load(path, run_id, run_path, window, feeds)
    except Exception:
        return None


def _read(path: str) -> Index | None:
    """The index file decoded, or None when it is not one of this version."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_INDEX_BYTES:
        return None
    with open(path, "rb") as fh:
        raw = fh.read(MAX_INDEX_BYTES + 64)
    if not raw.startswith(MAGIC):
        return None
    digest, body = raw[len(MAGIC) : len(MAGIC) + 16], raw[len(MAGIC) + 16 :]
    if _hash(body) != digest:
        return None
    idx = _decode_index(zlib.decompress(body))
    return idx if idx.format == FORMAT and idx.version == VERSION else None


def _matches(x: IndexedFile, f: Feed) -> bool:
    """The file still starts with what was indexed, and the saved position fits it."""
    now = _key_of(f.tail.path, x.end)
    return (
        now.size >= x.key.size
        and now.head_hash == x.key.head_hash
        and now.tail_hash == x.key.tail_hash
        and f.rank == x.rank
        and 0 <= x.end <= x.feed.tail.offset <= x.key.size
    )


def _load(
    path: str, run_id: str, run_path: str, window: int, feeds: Sequence[Feed]
) -> RunAgg | None:
    idx = _read(path)
    if idx is None or idx.window != window:
        return None
    by_name = {os.path.basename(f.tail.path): f for f in feeds}
    if sorted(x.name for x in idx.files) != sorted(by_name) or any(
        f.kind != "jsonl" for f in feeds
    ):
        return None  # a rank file appeared or went
    if not all(_matches(x, by_name[x.name]) for x in idx.files):
        return None  # shrank, replaced or rewritten since
    agg = agg_from_state(idx.agg, run_id, run_path, window)
    agg.snapshot()  # a value of the wrong kind fails here, not on the screen
    idents = {}
    for name, f in by_name.items():
        fst = os.stat(f.tail.path)
        idents[name] = (fst.st_dev, fst.st_ino)
    for x in idx.files:  # nothing below fails: the feeds are changed only now
        by_name[x.name].restore(x.feed, idents[x.name])
    return agg
