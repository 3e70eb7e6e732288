"""The real ``tui watch`` at 64 ranks (headless, a writer process, as ``bench_scale.py``
measures it): the thread CPU of each phase, counted once the writer's spell is steady.

Reader thread: ticks that found lines and ticks that found none, light and full snapshots
posted, and of the snapshots the ranks compared anew (light: at most once a
``COMPARE_EVERY``; full: always). Screen thread: the app's own code per snapshot taken
(``_take``, the header, the panels). What the screen's share has beyond these is Textual's
(composing and writing frames). Used for docs/benchmarks.md ("the monitor's cost at 64
ranks")::

    python benchmarks/profile_watch_phases.py --rate 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.getcwd())
sys.path.insert(0, str(Path(os.getcwd()) / "benchmarks"))

import bench_tui

from tui.model.aggregate import RunAgg
from tui.source.live import LiveSource
from tui.source.root import RootReader
from tui.view.app import MonitorApp

STEADY_S = 4.5  # from the start of this process: the app is up and the writer writing

spent: dict[str, float] = defaultdict(float)
count: dict[str, int] = defaultdict(int)
_t0 = time.monotonic()


def _steady() -> bool:
    return time.monotonic() - _t0 > STEADY_S


def _note(key: str, seconds: float) -> None:
    if _steady():
        spent[key] += seconds
        count[key] += 1


def _timed(cls: type, name: str, key: Callable[[Any, Any], str]) -> None:
    orig = getattr(cls, name)

    def f(self: Any, *a: Any, **k: Any) -> Any:
        t = time.thread_time()
        r = orig(self, *a, **k)
        _note(key(self, r), time.thread_time() - t)
        return r

    setattr(cls, name, f)


def _compare(orig: Callable[..., Any]) -> Callable[..., Any]:
    def f(self: RunAgg, aggs: Any, exact: bool) -> Any:
        before = self._compared
        t = time.thread_time()
        r = orig(self, aggs, exact)
        kind = "full" if exact else "light"
        anew = "anew" if self._compared is not before else "kept"
        _note(f"reader: ranks compared ({kind}, {anew})", time.thread_time() - t)
        return r

    return f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=10.0, help="steps a second per rank")
    ap.add_argument("--seconds", type=float, default=10.0, help="the writer's spell")
    ap.add_argument("--ranks", type=int, default=64)
    args = ap.parse_args()
    _timed(RootReader, "tick", lambda s, r: "reader: tick, lines" if r else "reader: tick, none")
    _timed(
        LiveSource,
        "_post",
        lambda s, r: "reader: light snapshot" if s._last_light else "reader: full snapshot",
    )
    RunAgg._compare_ranks = _compare(RunAgg._compare_ranks)  # type: ignore[method-assign]
    for name in ("_take", "_render_header", "_render_world", "_flush_panels", "_age_header"):
        _timed(MonitorApp, name, lambda s, r, n=name: f"screen: {n}")
    r = bench_tui.bench_latency(rate=args.rate, seconds=args.seconds, ranks=args.ranks)
    keys = ("cpu_pct", "reader_pct", "screen_pct", "posts_per_s", "full_per_s", "p95", "load")
    print(json.dumps({k: round(r[k], 2) for k in keys}))
    print(f"thread CPU from {STEADY_S:g} s on to the end (the writer stops ~2 s before it):")
    for k in sorted(spent):
        n = count[k]
        print(f"  {k:44s} n={n:4d}  {spent[k] * 1000:7.1f} ms  {spent[k] / n * 1000:6.2f} ms each")


if __name__ == "__main__":
    main()
