"""The run index: a run's folded state saved beside it, so reopening it reads no old bytes.

After a run was read to the end and has ended (or stayed idle :data:`IDLE_S`), the reader
saves the statistics (:class:`~tui.model.aggregate.RunAgg`) and each rank file's position and
counters in ``<run>/.stagewatch-index`` (``.<file>.stagewatch-index`` for a single rank
file given alone). Each file is keyed by its size, modification time and a hash of its
first and last :data:`KEY_BYTES` bytes before the position read to; a later open whose
files still start with those bytes restores the state and reads only what was appended.

A missing, stale (a file shrank, was replaced or rewritten, a rank file appeared or went),
corrupt, foreign-version or unwritable index is ignored: never trusted, never fatal; the
run is read in full instead. The result is the same as a full read (the statistics are
accumulated in file order, whatever the batches). The file holds msgpack (``msgspec``) of
plain values and raw numpy buffers, compressed, with a checksum; nothing in it is executed.

``--no-index`` on the ``tui`` commands (or ``STAGEWATCH_NO_INDEX=1``) bypasses it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zlib
from collections import deque
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from stagewatch.records import Eval, RunEnd, RunStart
from tui.model.aggregate import RankAgg, RunAgg
from tui.model.rankstats import MemTrend

if TYPE_CHECKING:
    from tui.source.reader import RunSource

INDEX_NAME = ".stagewatch-index"
FORMAT = "stagewatch-run-index"
VERSION = (
    3  # 3: records as the format's own structs; 2: a ring slot is the row number mod the window
)
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


def index_path(src: RunSource) -> str:
    if src.single:
        return os.path.join(src.dir, f".{src.path.name}{INDEX_NAME}")
    return os.path.join(src.dir, INDEX_NAME)


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


def _key_of(path: str, end: int) -> dict[str, Any]:
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UnusableIndex("not a regular file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        h, t = file_key(fd, end)
    finally:
        os.close(fd)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "head_hash": h, "tail_hash": t}


# --------------------------------------------------------------------------- values


def _nd(a: np.ndarray) -> list[Any]:
    a = np.ascontiguousarray(a)
    return [a.dtype.str, list(a.shape), a.tobytes()]


def _un_nd(x: Any, like: np.ndarray, cap: int, fresh_cap: int) -> np.ndarray:
    dt, shape, buf = x
    if dt != like.dtype.str or len(shape) != like.ndim:
        raise UnusableIndex("array of another type")
    want = [cap if d == fresh_cap else d for d in like.shape]
    if list(shape) != want:
        raise UnusableIndex("array of another shape")
    a = np.frombuffer(buf, dtype=like.dtype)
    if a.size != int(np.prod(want)):
        raise UnusableIndex("array of another size")
    return a.reshape(want).copy()


def _rank_state(a: RankAgg) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in vars(a).items():
        if k == "_schemas":
            continue  # a cache, rebuilt from cols
        if isinstance(v, np.ndarray):
            out[k] = _nd(v)
        elif isinstance(v, MemTrend):
            out[k] = {
                s: (list(getattr(v, s)) if s == "_ring" else getattr(v, s))
                for s in MemTrend.__slots__
            }
        else:
            out[k] = v
    return out


_FRESH_CAP = 16  # RankAgg's first allocation


def _rank_from(d: dict[str, Any], window: int) -> RankAgg:
    rank = d["rank"]
    fresh = RankAgg(rank, window)
    if fresh.cap != _FRESH_CAP:
        raise UnusableIndex("RankAgg changed")
    want = {k for k in vars(fresh) if k != "_schemas"}
    if set(d) != want:
        raise UnusableIndex("RankAgg fields differ")
    cap = d["cap"]
    names, cols = d["names"], d["cols"]
    if type(cap) is not int or not len(names) <= cap or cols != {n: i for i, n in enumerate(names)}:
        raise UnusableIndex("inconsistent region columns")
    a = RankAgg.__new__(RankAgg)
    for k, v in d.items():
        like = getattr(fresh, k)
        if isinstance(like, np.ndarray):
            v = _un_nd(v, like, cap, _FRESH_CAP)
        elif isinstance(like, MemTrend):
            mt = MemTrend(like.window, like.skip)
            for s in MemTrend.__slots__:
                setattr(mt, s, deque(v[s], maxlen=mt.window) if s == "_ring" else v[s])
            v = mt
        elif (
            like is not None
            and type(like) is not type(v)
            and not (isinstance(like, float) and type(v) is int)
        ):
            raise UnusableIndex(f"field {k} of another type")
        setattr(a, k, v)
    a._schemas = {}
    if a.window != window:
        raise UnusableIndex("another window")
    return a


def _rec(cls: type, d: dict[str, Any]) -> Any:
    try:
        return msgspec.convert(d, cls)
    except msgspec.ValidationError as e:
        raise UnusableIndex(f"{cls.__name__}: {e}") from None


def agg_state(agg: RunAgg) -> dict[str, Any]:
    return {
        "window": agg.window,
        "ranks": {r: _rank_state(a) for r, a in agg.ranks.items()},
        "starts": {r: msgspec.to_builtins(s) for r, s in agg.starts.items()},
        "ends": {r: msgspec.to_builtins(e) for r, e in agg.ends.items()},
        "evals": agg.evals,
        "eval_step": agg.eval_step,
        "tails": {r: [list(x) for x in t] for r, t in agg.tails.items()},
    }


def agg_from(d: dict[str, Any], run_id: str, path: str, window: int) -> RunAgg:
    if d["window"] != window:
        raise UnusableIndex("another window")
    agg = RunAgg(run_id, path, window)
    agg.ranks = {int(r): _rank_from(a, window) for r, a in d["ranks"].items()}
    agg.starts = {int(r): _rec(RunStart, s) for r, s in d["starts"].items()}
    agg.ends = {int(r): _rec(RunEnd, e) for r, e in d["ends"].items()}
    agg.evals = {str(k): float(v) for k, v in d["evals"].items()}
    agg.eval_step = d["eval_step"]
    agg.tails = {
        int(r): deque(((int(s), float(w)) for s, w in t), maxlen=agg.pending_limit)
        for r, t in d["tails"].items()
    }
    _ = Eval  # records of other kinds are not kept by the aggregate
    return agg


_FEED_FIELDS = ("lines", "malformed", "skipped", "last_error", "duplicates", "_prev_step")
_TAIL_FIELDS = ("offset", "partial", "skipping", "head", "overlong")


# --------------------------------------------------------------------------- save / load


def save(src: RunSource) -> bool:
    """Write the run's index (True when written). Never raises."""
    try:
        return _save(src)
    except Exception:  # read-only folder, disk full, a race with the writer...: no index
        return False


def _save(src: RunSource) -> bool:
    feeds = list(src.feeds.values())
    if not feeds or any(
        f.kind != "jsonl" or f.tail.state != "ok" or f.tail.ident is None for f in feeds
    ):
        return False
    files = []
    for f in feeds:
        end = f.tail.offset - len(f.tail.partial)
        key = _key_of(f.tail.path, end)
        files.append(
            {
                "name": os.path.basename(f.tail.path),
                "rank": f.rank,
                "end": end,
                **key,
                "feed": {k: getattr(f, k) for k in _FEED_FIELDS},
                "tail": {k: getattr(f.tail, k) for k in _TAIL_FIELDS},
                "cuts": [list(c) for c in f.cuts],
            }
        )
    payload = msgspec.msgpack.encode(
        {
            "format": FORMAT,
            "version": VERSION,
            "run_id": src.run_id,
            "window": src.window,
            "files": files,
            "agg": agg_state(src.agg),
        }
    )
    body = zlib.compress(payload, 1)
    if len(body) > MAX_INDEX_BYTES:
        return False
    path = index_path(src)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(MAGIC + _hash(body) + body)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


def load(src: RunSource) -> bool:
    """Restore the run from its index when the index matches the files (True when done).
    Never raises; on False ``src`` is untouched."""
    try:
        return _load(src)
    except Exception:
        return False


def _load(src: RunSource) -> bool:
    path = index_path(src)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_INDEX_BYTES:
        return False
    with open(path, "rb") as fh:
        raw = fh.read(MAX_INDEX_BYTES + 64)
    if not raw.startswith(MAGIC):
        return False
    digest, body = raw[len(MAGIC) : len(MAGIC) + 16], raw[len(MAGIC) + 16 :]
    if _hash(body) != digest:
        return False
    d = msgspec.msgpack.decode(zlib.decompress(body))
    if type(d) is not dict or d.get("format") != FORMAT or d.get("version") != VERSION:
        return False
    if d["window"] != src.window:
        return False
    feeds = {os.path.basename(f.tail.path): f for f in src.feeds.values()}
    files = d["files"]
    if sorted(x["name"] for x in files) != sorted(feeds) or any(
        f.kind != "jsonl" for f in feeds.values()
    ):
        return False  # a rank file appeared or went
    for x in files:
        f = feeds[x["name"]]
        end = x["end"]
        now = _key_of(f.tail.path, end)
        if (
            now["size"] < x["size"]
            or now["head_hash"] != x["head_hash"]
            or now["tail_hash"] != x["tail_hash"]
            or f.rank != x["rank"]
        ):
            return False  # shrank, replaced or rewritten since
    for x in files:
        if set(x["feed"]) != set(_FEED_FIELDS) or set(x["tail"]) != set(_TAIL_FIELDS):
            return False
        if not 0 <= x["end"] <= x["tail"]["offset"] <= x["size"]:
            return False
    agg = agg_from(d["agg"], src.run_id, str(src.dir), src.window)
    agg.snapshot()  # a value of the wrong kind fails here, not on the screen
    cuts = {x["name"]: [(int(a), int(b)) for a, b in x["cuts"]] for x in files}
    idents = {}
    for name, f in feeds.items():
        fst = os.stat(f.tail.path)
        idents[name] = (fst.st_dev, fst.st_ino)
    for x in files:  # nothing below fails: the run is changed only now
        f = feeds[x["name"]]
        f.reset()
        for k, v in x["feed"].items():
            setattr(f, k, v)
        for k, v in x["tail"].items():
            setattr(f.tail, k, v)
        f.cuts = cuts[x["name"]]
        f.restore_cuts()
        f.tail.ident = idents[x["name"]]
        f.tail.size = x["size"]
        f.tail.mtime = x["mtime_ns"] / 1e9
    src.agg = agg
    return True
