"""Each rank's clock offset to rank 0, measured at run start over the process group.

Ranks on different hosts stamp their records with their own ``time.time()``; placing them on
one timeline (``tui export``, a captured trace beside the stage regions) needs the offset
between the clocks. Rank 0 and each other rank in turn exchange :data:`ROUNDS` ping-pongs of
a small int64 tensor over a gloo group (the default group when it is gloo, else a new gloo
group: CPU tensors, timestamps taken right at send and receive)::

    rank r: t1 = now; send(t1) ......> rank 0: t2 = now (received); t3 = now; send(t2, t3)
    rank r: t4 = now (received) <......

    offset = ((t1 - t2) + (t4 - t3)) / 2     this rank's clock minus rank 0's
    error  = ((t4 - t1) - (t3 - t2)) / 2     half the round trip spent off either host

Of the rounds, the one with the shortest round trip is kept (the minimum-round-trip
estimate): whatever the path's asymmetry, the true offset lies within ``offset ± error``.
It is a collective (every rank must create its logger at the same point, as for the shared
run id); ``STAGEWATCH_CLOCK_SYNC=0`` turns it off.

Test only: ``STAGEWATCH_TEST_CLOCK_SKEW_MS`` adds that many ms to this process's clock as
this measurement sees it (a fake offset, for testing on one host). Never set it otherwise.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from stagewatch.timing.identity import _initialized_dist

SYNC_ENV = "STAGEWATCH_CLOCK_SYNC"
SKEW_ENV = "STAGEWATCH_TEST_CLOCK_SKEW_MS"  # test only
ROUNDS = 8


def env_off() -> bool:
    v = os.environ.get(SYNC_ENV)
    return v is not None and v.strip().lower() in ("0", "false", "off", "no")


def _skew_ns() -> int:
    try:
        return int(float(os.environ.get(SKEW_ENV, "0")) * 1e6)
    except ValueError:
        return 0


def for_logger(lg: Any) -> tuple[float, float] | None:
    """:func:`measure` for a logger opening its run (None when off or failed, with one
    warning for a failure)."""
    if env_off():
        return None
    try:
        return measure(lg.rank, lg.world_size)
    except Exception as e:
        lg._warn_once("clock", f"could not measure the clock offset to rank 0: {e}")
        return None


def estimate(samples: list[tuple[int, int, int, int]]) -> tuple[float, float]:
    """(offset, error) ms from (t1, t2, t3, t4) ns samples: the minimum-round-trip one."""
    best = min(samples, key=lambda s: (s[3] - s[0]) - (s[2] - s[1]))
    t1, t2, t3, t4 = best
    offset = ((t1 - t2) + (t4 - t3)) / 2.0
    err = max(0.0, ((t4 - t1) - (t3 - t2)) / 2.0)
    return offset / 1e6, err / 1e6


def measure(rank: int, world_size: int, rounds: int = ROUNDS) -> tuple[float, float] | None:
    """This rank's (offset, error) ms to rank 0 (``(0.0, 0.0)`` on rank 0); None when
    torch.distributed is not initialised, there is one rank, or the exchange failed."""
    dist: Any = _initialized_dist()
    torch: Any = sys.modules.get("torch")  # imported with torch.distributed (never here)
    if dist is None or world_size < 2 or torch is None:
        return None

    group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    try:
        return _exchange(dist, torch, group, rank, world_size, rounds)
    finally:
        if group is not None:
            dist.destroy_process_group(group)


def _exchange(
    dist: Any, torch: Any, group: Any, rank: int, world_size: int, rounds: int
) -> tuple[float, float]:
    """The ping-pongs (rank 0 answers each other rank in turn)."""
    skew = _skew_ns()

    def now() -> int:
        return time.time_ns() + skew

    if rank == 0:
        box = torch.zeros(2, dtype=torch.int64)
        for r in range(1, world_size):
            for _ in range(rounds):
                dist.recv(box[:1], src=r, group=group)
                t2 = now()
                box[0] = t2
                box[1] = now()
                dist.send(box, dst=r, group=group)
        return 0.0, 0.0
    ping = torch.zeros(1, dtype=torch.int64)
    pong = torch.zeros(2, dtype=torch.int64)
    samples = []
    for _ in range(rounds):
        t1 = now()
        ping[0] = t1
        dist.send(ping, dst=0, group=group)
        dist.recv(pong, src=0, group=group)
        t4 = now()
        samples.append((t1, int(pong[0]), int(pong[1]), t4))
    return estimate(samples)
