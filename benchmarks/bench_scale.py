"""The monitor at 64 ranks (issue 22), this tree against an earlier checkout, interleaved.

Per round, for each side in turn (which side goes first alternates), each in its own
processes with ``PYTHONPATH`` set to its checkout:

- ``tui watch`` while a writer process appends 64 ranks x 40 regions at 2 and at 10 steps/s
  (10 s each): CPU of the monitor process and the header's latency (line written -> its step
  shown), through ``benchmarks/bench_tui.py``'s ``bench_latency`` of that checkout;
- the first screen of a finished 64-rank run (1,000 steps x 40 regions, no run index):
  ``tui replay`` and ``tui watch``, launch -> first rendered run.

Targets: watch 64 x 2 steps/s <= 5% of a core, 64 x 10 <= 12%, header p95 <= 150 ms, first
screen <= 1 s. Writes section "scale" of docs/benchmarks.md. Usage::

    git worktree add --detach /tmp/base <commit>
    (cd /tmp/base && python setup.py build_ext --inplace)
    python benchmarks/bench_scale.py --base /tmp/base --label "main (<commit>)"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import load_printed, machine, today, write_section  # noqa: E402

RANKS = 64
CACHE = Path(tempfile.gettempdir()) / "stagewatch-bench-scale"

_CHILD_WATCH = """
import json, sys
sys.path.insert(0, "benchmarks")
from bench_tui import bench_latency
r = bench_latency(rate=float(sys.argv[1]), seconds=float(sys.argv[2]), ranks=int(sys.argv[3]))
print(json.dumps(r))
"""

_CHILD_FIRST = """
import json, sys, time
t_launch = float(sys.argv[2])
from tui.source import index
index.set_enabled(False)
from tui.view.app import MonitorApp
from tui.source.check import check_run
from tui.source.live import LiveSource
from tui.source.replay import ReplaySource

class Probe(MonitorApp):
    done = False
    def _render_world(self, force_tree=False):
        super()._render_world(force_tree)
        w = self.world
        if w is not None and w.selected is not None and not self.done:
            self.done = True
            print(json.dumps({"first_screen_s": time.time() - t_launch,
                              "ranks": len(w.selected.rank_info)}), flush=True)
            self.exit()

run = sys.argv[1]
if sys.argv[3] == "replay":
    check_run(run)
    Probe(ReplaySource(run, speed=10.0)).run(headless=True, size=(160, 48))
else:
    Probe(LiveSource(str(__import__("pathlib").Path(run).parent))).run(
        headless=True, size=(160, 48))
"""

# (figure, kind, key, unit, target): lower is better for all
FIGURES = (
    (f"`tui watch`, {RANKS} ranks x 2 steps/s: CPU", "watch2", "cpu_pct", "% of a core", 5.0),
    ("  of it the reader thread", "watch2", "reader_pct", "% of a core", None),
    ("  of it the screen (event loop)", "watch2", "screen_pct", "% of a core", None),
    ("  header latency p95", "watch2", "p95", "ms", 150.0),
    (f"`tui watch`, {RANKS} ranks x 10 steps/s: CPU", "watch10", "cpu_pct", "% of a core", 12.0),
    ("  of it the reader thread", "watch10", "reader_pct", "% of a core", None),
    ("  of it the screen (event loop)", "watch10", "screen_pct", "% of a core", None),
    ("  header latency p95", "watch10", "p95", "ms", 150.0),
    (f"first screen, finished {RANKS}-rank run: `tui replay`", "replay", "first_screen_s", "s", 1),
    ("the same: `tui watch`", "watchfirst", "first_screen_s", "s", 1.0),
)
KINDS = ("watch2", "watch10", "replay", "watchfirst")
NOTES = """"Before" is this session's start (ebcfc24); "after" adds three changes to
`tui watch`'s pacing and reading, none to a figure it shows (tests/test_tui_crossrank.py,
test_tui_incremental.py and the snapshots unchanged): the panels' gap also keeps the
reader's full snapshot within 0.6% of a core (`tui.view.pacing.FULL_BUDGET`: at 64 ranks
the panels come every ~2-3 s, bounded by `MAX_GAP` 3 s; a small run keeps once a second);
a rank file not written since it was read to its end is opened but not read
(`tui/source/tail.py`); and one post per step: a light snapshot that moves only the newest
rank's step is held up to one `min_gap` (125 ms) for the rest of the step's lines, and the
panels' catch-up snapshot rides on the next step's post while steps come
(`tui/source/live.py`). Posts at 2 steps/s 2.97-3.08 -> 2.02 a second, panel redraws
~0.95 -> ~0.3-0.4 a second.

**Both CPU targets met on this quiet run: 4.26% at 2 steps/s (<= 5) and 10.3% at 10 steps/s
(<= 12).** The margin is small and the machine's load moves every figure: the same changes
read 3.9-5.2% at 2 steps/s in an earlier run at load 0.5-1.35 (other agents' tests on the
2 shared cores), and the "before" side, 8.4% and 14.8% in the previous round's run, reads 6.0
and 11.4% here. What each step still costs at 64 ranks: one light snapshot (~3-5 ms;
the ranks compared anew once a second, 8-12 ms) and one header frame (~4 ms, ~3 of it
Textual's), and reading each rank's line (~45-55 us). Header latency p95 and the first
screens met. The earlier rounds' figures are in git history and the sections below."""


def finished_run(steps: int = 1000) -> Path:
    """A finished 64-rank run (cached between invocations)."""
    root = CACHE / f"root-{RANKS}-{steps}"
    run = root / "20261126-100000-scale-0001"
    if (run / ".complete").exists():
        return run
    from tui.testing import write_run

    write_run(root, run.name, steps=steps, ranks=RANKS, n_regions=40, straggler=5)
    (run / ".complete").touch()
    return run


def _env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tree)
    return env


def _last_json(out: str) -> dict:
    return json.loads([x for x in out.splitlines() if x.startswith("{")][-1])


def measure(tree: Path, kind: str, seconds: float, run: Path) -> dict:
    """One measurement of ``kind`` with the code of checkout ``tree``, in its own process."""
    if kind.startswith("watch") and kind != "watchfirst":
        args = ["-c", _CHILD_WATCH, kind[5:], str(seconds), str(RANKS)]
    else:
        args = ["-c", _CHILD_FIRST, str(run), repr(time.time()), kind]
    cmd = [sys.executable, *args]
    out = subprocess.run(cmd, cwd=tree, env=_env(tree), capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{kind} on {tree} failed:\n{out.stderr[-2000:]}")
    return _last_json(out.stdout)


def run_rounds(base: Path, rounds: int, seconds: float) -> dict[str, dict[str, list[dict]]]:
    run = finished_run()
    res: dict[str, dict[str, list[dict]]] = {"base": {}, "new": {}}
    for i in range(rounds):
        for kind in KINDS:
            sides = [("base", base), ("new", ROOT)]
            for side, tree in sides if i % 2 == 0 else sides[::-1]:
                r = measure(tree, kind, seconds, run)
                r["load"] = os.getloadavg()[0]
                res[side].setdefault(kind, []).append(r)
                print(json.dumps({"round": i, "side": side, "kind": kind, **r}), flush=True)
    return res


def render(res: dict, label: str, rounds: int, seconds: float) -> str:
    rows = []
    for name, kind, key, unit, target in FIGURES:
        b = [r[key] for r in res["base"].get(kind, []) if key in r]
        n = [r[key] for r in res["new"].get(kind, []) if key in r]
        if not b or not n:
            continue
        mb, mn = statistics.median(b), statistics.median(n)
        goal = ""
        if target is not None:
            goal = f"≤ {target:g}: " + ("met" if mn <= target else "**not met**")
        rows.append(
            f"| {name} | {unit} | {mb:.3g} | **{mn:.3g}** | {mn / mb if mb else float('nan'):.2f} "
            f"| {min(n):.3g}–{max(n):.3g} | {goal} |"
        )
    loads = [r["load"] for side in res.values() for rs in side.values() for r in rs]
    return "\n".join(
        [
            "## scale (64 ranks on one screen)",
            "",
            f"Measured {today()} on {machine()}: `python benchmarks/bench_scale.py` — this tree",
            f"against {label}, interleaved in one run ({rounds} rounds, sides alternating which",
            f"goes first, each in its own processes). Watch: a writer process appends {RANKS} rank",
            f"files x 40 regions for {seconds:g} s; the monitor runs headless at 160x48. First",
            f"screen: a finished {RANKS}-rank run of 1,000 steps x 40 regions, no run index.",
            "Medians over the rounds; load average during the run "
            f"{min(loads):.1f}–{max(loads):.1f} (2 shared cores: CPU shares are of one core and",
            "move with the load).",
            "",
            "| figure | unit | before | after | after / before | after's range | target |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            NOTES,
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="the earlier checkout")
    ap.add_argument("--label", default="the earlier checkout")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="of each watch measurement")
    ap.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md alone")
    ap.add_argument("--from", dest="from_file", type=Path, help="re-render from printed JSON")
    args = ap.parse_args()
    if args.from_file:
        res = load_printed(args.from_file)
        args.rounds = len(res["base"].get("watch2", [])) or args.rounds
    else:
        res = run_rounds(args.base.resolve(), args.rounds, args.seconds)
    md = render(res, args.label, args.rounds, args.seconds)
    print(md)
    if not args.no_write:
        write_section("scale", md)


if __name__ == "__main__":
    main()
