"""What the straggler verdict's two readings of a wait in the loop's own collective cost.

``python benchmarks/bench_verdict_gaps.py [--ranks 64 512] [--rounds 5]``: a finished run
of N ranks with no straggler (every comparison then looks for a hidden wait), read once;
then, interleaved per round, the ranks' comparison made again (``RunAgg._compare_ranks``,
what a snapshot pays when a rank folded steps) with and without
:func:`tui.model.hidden.hidden_wait`, and ``judge_stragglers`` alone on the recent rows
with and without the reading of :func:`tui.model.causes.untimed_behind` (the
``untimed`` column). Process CPU time, median of the rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tui.model.aggregate as aggregate
import tui.model.rankstats as rankstats
from tui.model.rankstats import judge_stragglers
from tui.source.reader import RunSource
from tui.testing import write_run


def _cpu_ms(fn: Callable[[], object], n: int) -> float:
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n * 1000.0


def bench(ranks: int, rounds: int) -> dict[str, float]:
    root = tempfile.mkdtemp()
    run = write_run(root, "20261126-100000-gaps-0001", steps=60, ranks=ranks, n_regions=12)
    agg = RunSource(run, use_index=False).load(parallel=False).agg
    aggs = [agg.ranks[r] for r in sorted(agg.ranks)]
    snap = agg.snapshot()
    recent = {ri.rank: ri.recent for ri in snap.rank_info}
    real, real_untimed = aggregate.hidden_wait, rankstats.untimed_wait

    def no_untimed(own, x, ranks, floor, t, keep):  # type: ignore[no-untyped-def]
        return None, *keep, None

    n = max(1, 200 // ranks)

    def compare() -> None:
        agg._compared = None
        agg._compare_ranks(aggs, exact=True)

    out: dict[str, list[float]] = {k: [] for k in ("with", "without", "judge", "judge_cut")}
    for _ in range(rounds):
        aggregate.hidden_wait = real
        out["with"].append(_cpu_ms(compare, n))
        aggregate.hidden_wait = lambda _aggs, v: v
        out["without"].append(_cpu_ms(compare, n))
        aggregate.hidden_wait = real
        out["judge"].append(_cpu_ms(lambda: judge_stragglers(recent, window=agg.window), n))
        rankstats.untimed_wait = no_untimed
        out["judge_cut"].append(_cpu_ms(lambda: judge_stragglers(recent, window=agg.window), n))
        rankstats.untimed_wait = real_untimed
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    for k in a.ranks:
        r = bench(k, a.rounds)
        print(
            f"{k} ranks: comparison {r['with']:.2f} ms with the hidden-wait reading, "
            f"{r['without']:.2f} ms without; judge_stragglers {r['judge']:.2f} ms "
            f"with the untimed reading, {r['judge_cut']:.2f} ms without"
        )
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
