"""This tree against an earlier checkout, interleaved in one run: the monitor and step().

Runs each checkout's own benchmark scripts as whole processes, alternating (A B A B ...),
so that a busy spell of the shared machine hits both sides alike:

- ``benchmarks/bench_tui.py --only read|watch|idle|writer --no-write`` (the monitor: whole-run
  read CPU, reopen through the index, ``tui watch`` CPU at 3 ranks x 20 steps/s, idle watch;
  the writer's ``step()``);
- ``benchmarks/bench_timing.py --quick --no-write --json`` (the timing core: ``step()`` with
  20 regions, JSONL only and with the text log; a region's enter + exit).

Each side runs with ``PYTHONPATH`` set to its own checkout (children inherit it), so the
earlier checkout needs its C extension built in place
(``python setup.py build_ext --inplace``). Writes section "before-after" of
docs/benchmarks.md. Usage::

    git worktree add --detach /tmp/before 15e1bec
    (cd /tmp/before && python setup.py build_ext --inplace)
    python benchmarks/bench_before_after.py --base /tmp/before --label "before issue 19 (15e1bec)"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import load_printed, machine, today, write_section  # noqa: E402

# (figure, measurement, key in its JSON, unit): lower is better for all
FIGURES = (
    ("whole-run read, one process: CPU", "read", "serial_cpu", "s"),
    ("the same, pure-Python path: CPU", "read", "pure_cpu", "s"),
    ("ranks in parallel processes: wall", "read", "parallel_s", "s"),
    ("reopen through the run index: CPU", "read", "reopen_cpu", "s"),
    ("`tui replay` first screen (index)", "read", "first_screen_s", "s"),
    ("`tui watch`, 3 ranks x 20 steps/s: CPU", "watch", "cpu_pct", "% of a core"),
    ("header latency p95", "watch", "p95", "ms"),
    ("idle watch: CPU", "idle", "cpu_pct", "% of a core"),
    ("writer `step()` (JSONL + text log), median", "writer", "median_us", "µs"),
    ("timing core `step()`, 20 regions, JSONL only", "timing", "step_jsonl_us", "µs"),
    ("timing core `step()`, 20 regions, + text log", "timing", "step_text_us", "µs"),
    ("a region's enter + exit", "timing", "region_ns", "ns"),
)
KINDS = ("writer", "timing", "read", "watch", "idle")
# What a figure can resolve, where that is coarse: the idle watch's CPU is read from
# /proc in clock ticks (10 ms) over 30 s, so one tick is 0.033% of a core, 11% of ~0.3%
RESOLUTION = {"idle": 100 / (100 * 30.0)}


def _env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tree)
    return env


def _last_json(out: str) -> dict:
    return json.loads([x for x in out.splitlines() if x.startswith("{")][-1])


def _timing(tree: Path) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run(
            [
                sys.executable,
                "benchmarks/bench_timing.py",
                "--quick",
                "--no-write",
                "--json",
                f.name,
            ],
            cwd=tree,
            env=_env(tree),
            check=True,
            capture_output=True,
            text=True,
        )
        raw = json.loads(Path(f.name).read_text())
    steps = raw["per_step"]
    return {
        "step_jsonl_us": steps["JSONL only"]["windows"]["101"]["median_us"],
        "step_text_us": steps["JSONL + text log"]["windows"]["101"]["median_us"],
        "region_ns": raw["calls_ns"]["region_ns"],
    }


def measure(tree: Path, kind: str, steps: int) -> dict:
    """One measurement of ``kind`` on the checkout ``tree``, in its own processes."""
    if kind == "timing":
        return _timing(tree)
    cmd = [sys.executable, "benchmarks/bench_tui.py", "--only", kind, "--no-write"]
    if kind == "read":
        cmd += ["--steps", str(steps), "--repeats", "1"]
    out = subprocess.run(cmd, cwd=tree, env=_env(tree), check=True, capture_output=True, text=True)
    return _last_json(out.stdout)


def run(base: Path, rounds: int, steps: int) -> dict[str, dict[str, list[dict]]]:
    res: dict[str, dict[str, list[dict]]] = {"base": {}, "new": {}}
    for i in range(rounds):
        for kind in KINDS:
            # alternate which side goes first: a warm cache or a quiet spell favours neither
            order = (
                (("base", base), ("new", ROOT)) if i % 2 == 0 else (("new", ROOT), ("base", base))
            )
            for side, tree in order:
                r = measure(tree, kind, steps)
                res[side].setdefault(kind, []).append(r)
                print(json.dumps({"round": i, "side": side, "kind": kind, **r}), flush=True)
    return res


def render(res: dict, label: str, rounds: int, steps: int) -> str:
    rows = []
    worst = 0.0
    coarse = []
    for name, kind, key, unit in FIGURES:
        b = [r[key] for r in res["base"].get(kind, []) if key in r]
        n = [r[key] for r in res["new"].get(kind, []) if key in r]
        if not b or not n:
            continue
        mb, mn = statistics.median(b), statistics.median(n)
        ratio = mn / mb if mb else float("nan")
        note = ""
        if abs(mn - mb) <= RESOLUTION.get(kind, 0.0) * 1.01:  # (the 30 s are a little more)
            note = " (within one clock tick)"
            coarse.append(name)
        else:
            worst = max(worst, ratio)
        spread = f"{min(b):.3g}–{max(b):.3g} / {min(n):.3g}–{max(n):.3g}"
        rows.append(f"| {name} | {unit} | {mb:.3g} | {mn:.3g} | {ratio:.2f}{note} | {spread} |")
    return "\n".join(
        [
            f"Measured {today()} on {machine()}: this tree against {label}, interleaved in one",
            f"run of `benchmarks/bench_before_after.py` ({rounds} rounds, each side's own scripts,",
            f"sides alternating which goes first; whole-run read on {steps:,} steps x 3 ranks x",
            "40 regions). Medians over the rounds; the last column is each side's range.",
            "",
            "| figure | unit | before | after | after / before | range before / after |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Worst ratio: {worst:.2f} (target: no figure more than 10% worse, ≤ 1.10)"
            + (
                f"; not counted, as their difference is within what the measurement resolves: "
                f"{', '.join(coarse)} (CPU read in 10 ms clock ticks over 30 s)."
                if coarse
                else "."
            ),
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, type=Path, help="the earlier checkout")
    ap.add_argument("--label", default="the earlier checkout", help="its name in the report")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100_000, help="steps of the read benchmark")
    ap.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md alone")
    ap.add_argument(
        "--from",
        dest="from_file",
        type=Path,
        help="re-render from the JSON lines an earlier run printed (nothing is measured)",
    )
    args = ap.parse_args()
    if args.from_file:
        res = load_printed(args.from_file)
        args.rounds = len(res["base"].get("writer", [])) or args.rounds
    else:
        res = run(args.base.resolve(), args.rounds, args.steps)
    md = render(res, args.label, args.rounds, args.steps)
    print(md)
    if not args.no_write:
        write_section("before-after", md)


if __name__ == "__main__":
    main()
