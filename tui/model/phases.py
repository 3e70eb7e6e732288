"""The phases of a training step as the straggler verdict reads them: which regions are
waiting, input, copy and the backward an unmeasured wait hides in, and :func:`find_phase`,
which finds them as named or nested under a loop's own region (``train/data``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: the regions in which a rank waits for the other ranks (or holds the exposed all-reduce):
#: the trainer's ``allreduce`` (trainer/distributed.py) and the library's ``comm/...``
#: (stagewatch/ddp.py); never the cause of a rank's slowness, only its symptom
WAIT_REGIONS = ("allreduce", "comm")
#: measured exposed all-reduce, first found wins: the library's hook, the trainer's region
EXPOSED_REGIONS = ("comm/exposed", "allreduce")
#: time a rank spent in its own comm hook before handing the collective off (stagewatch/ddp.py)
LAUNCH_REGION = "comm/launch"
#: DDP's buffer broadcast at the start of forward (stagewatch/ddp.py): waiting, like exposed
BUFFERS_REGION = "comm/buffers"
#: the region a DDP loop calls ``loss.backward()`` in: where an unmeasured wait hides
SYNC_REGION = "backward"
#: a rank's own time by class; compute is the rest of its own time. Input: the trainer's
#: ``data`` or the library's ``data/wait`` (stagewatch's timed_loader and callbacks); a
#: ``data/h2d`` under ``data`` is the copy, not input. Copy: ``h2d`` or ``data/h2d``.
INPUT_REGIONS = ("data/wait", "data")
H2D_REGIONS = ("h2d", "data/h2d")
#: RankInfo.recent columns after the step number (judge_stragglers reads 3 or more);
#: ``untimed``: the step's time outside every top-level region (its unaccounted time)
RECENT_COLUMNS = ("wall", "wait", "data", "h2d", "launch", "sync", "exposed", "untimed")
#: path segments under which a phase name is a part of that phase, not the phase itself
#: (a model block called ``data`` inside ``forward`` is compute; ``eval/…`` is evaluation)
_PHASES = frozenset(("forward", "backward", "optimizer", "data", "h2d", "eval", *WAIT_REGIONS))


def find_phase(names: Iterable[str], wanted: Sequence[str]) -> str | None:
    """The region of ``names`` that holds a phase known by ``wanted`` (e.g. INPUT_REGIONS):
    the first of ``wanted`` present as is; else, for a loop that nests its phases under a
    region of its own (``train/data``, ``train/backward``), the shallowest region whose path
    ends with one of them (in ``wanted``'s order) and has no phase above it. None: absent."""
    have = names if isinstance(names, (set, frozenset, dict)) else set(names)
    for w in wanted:
        if w in have:
            return w
    for w in wanted:
        tail = "/" + w
        hits = [
            n
            for n in have
            if n.endswith(tail) and not _PHASES.intersection(n[: -len(tail)].split("/"))
        ]
        if hits:
            return min(hits, key=lambda n: (n.count("/"), n))
    return None


#: said when two ranks look alike and the wait was not measured
OUTSIDE_BACKWARD = (
    "; one of them may be waiting outside `backward`, e.g. in DDP's buffer broadcast at "
    "the start of forward"
)
#: said when no rank is named and the wait was not measured, by how it was known
UNMEASURED_CAVEAT = {
    "backward": (
        "; the all-reduce wait is not measured but estimated from `backward`, so a rank slow "
        "inside backward itself cannot be told from one waiting there "
        "(stagewatch.watch_ddp(model) measures it)"
    ),
    "rest": (
        "; the all-reduce wait is not measured but estimated from the untimed rest of the "
        "step (there is no `backward` region), so a rank slow in untimed work (forward, "
        "backward, optimizer) cannot be told from one waiting for it "
        "(stagewatch.watch_ddp(model) measures it)"
    ),
    "none": (
        "; the all-reduce wait is not measured and there is no `backward` region, so under "
        "DDP a slow rank cannot be told from one waiting for it "
        "(stagewatch.watch_ddp(model) measures it)"
    ),
}


def top_regions(names: Mapping[str, int]) -> list[int]:
    """The columns of ``names`` (region -> column) that cover a step side by side: each
    timed region with no timed region above it (``forward/enc`` when ``forward`` itself is
    not timed, as under ``instrument`` or ``timed_loader`` alone). Of the library's
    ``comm/...`` figures (stagewatch/ddp.py), which lie inside ``loss.backward()`` and the
    model's call, only the exposed all-reduce and the buffer broadcast, and only when no
    ``backward`` / ``forward`` region holds them."""
    have = set(names)
    alone = {
        EXPOSED_REGIONS[0]: find_phase(have, (SYNC_REGION,)) is None,
        BUFFERS_REGION: find_phase(have, ("forward",)) is None,
    }
    out = []
    for n in names:
        if n.startswith("comm/") and not alone.get(n, False):
            continue
        segs = n.split("/")
        if not any("/".join(segs[:i]) in have for i in range(1, len(segs))):
            out.append(names[n])
    return out


def top_columns(agg: Any) -> np.ndarray:
    """:func:`top_regions` of a rank's ``cols``, cached on it (names only grow)."""
    c = getattr(agg, "_top_cache", None)
    if c is None or c[0] != len(agg.cols):
        c = agg._top_cache = (len(agg.cols), np.fromiter(top_regions(agg.cols), np.int64))
    return c[1]  # type: ignore[no-any-return]
