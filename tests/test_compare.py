"""``tui compare``: two synthetic runs side by side (text, JSON, the Textual screen)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from textual.widgets import DataTable

from tui.report.compare import compare_paths, comparison_dict, comparison_text, label
from tui.testing import write_run
from tui.view.widgets.compare import CompareApp

ROOT = Path(__file__).resolve().parent.parent


def region_avgs(run: Path) -> dict[str, float]:
    """Mean inclusive ms per region straight from the JSONL (all ranks)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for f in sorted(run.glob("rank*.jsonl")):
        for line in f.read_text().splitlines():
            d = json.loads(line)
            if d["kind"] == "step":
                for k, (ms, _) in d["regions"].items():
                    sums[k] = sums.get(k, 0.0) + ms
                    counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


@pytest.fixture()
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    a = write_run(tmp_path, "20261126-120000-base-0001", steps=20, n_regions=11, seed=1)
    b = write_run(
        tmp_path, "20261126-130000-other-0002", steps=25, n_regions=13, seed=2, straggler=0
    )
    return a, b


def test_values_differences_and_ratios(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    c = compare_paths([a, b])
    assert [r.label for r in c.runs] == ["A", "B"] and c.runs[0].run_id == a.name
    ea, eb = region_avgs(a), region_avgs(b)
    rows = {r.name: r for r in c.regions}
    for name in ea:
        r = rows[name]
        assert r.ms[0] == pytest.approx(ea[name], rel=1e-9)
        assert r.ms[1] == pytest.approx(eb[name], rel=1e-9)
        assert r.diff[1] == pytest.approx(eb[name] - ea[name], rel=1e-6)
        assert r.ratio[1] == pytest.approx(eb[name] / ea[name], rel=1e-9)
        assert r.ratio[0] == 1.0
    # straggler rank 0 of B runs 1.3x slower: B's backward is ~1.3x A's
    assert rows["backward"].ratio[1] == pytest.approx(1.3, rel=0.05)
    # regions only B has: no baseline value, no ratio
    only_b = set(eb) - set(ea)
    assert only_b == {"allreduce", "optimizer"}
    for name in only_b:
        assert math.isnan(rows[name].ms[0]) and math.isnan(rows[name].ratio[1])
    # tree order: each parent before its children; unaccounted last
    names = [r.name for r in c.regions]
    for n in names[:-1]:
        if "/" in n:
            assert names.index(n.rsplit("/", 1)[0]) < names.index(n)
    assert names[-1] == "(unaccounted)"
    assert c.step.ratio[1] == pytest.approx(c.runs[1].step_ms / c.runs[0].step_ms)
    # shares are of each run's own step time
    assert rows["backward"].share[0] == pytest.approx(ea["backward"] / c.runs[0].step_ms, rel=1e-9)


def test_json_and_text(two_runs: tuple[Path, Path]) -> None:
    c = compare_paths(list(two_runs), stat="p50")
    d = json.loads(json.dumps(comparison_dict(c), allow_nan=False))
    assert d["stat"] == "p50" and d["baseline"] == two_runs[0].name
    bw = next(r for r in d["regions"] if r["name"] == "backward")
    assert bw["runs"][0]["ratio"] == 1.0 and bw["runs"][1]["ratio"] > 1.2
    opt = next(r for r in d["regions"] if r["name"] == "optimizer")
    assert opt["runs"][0]["ms"] is None and opt["runs"][1]["ms"] > 0
    text = comparison_text(c).plain
    assert "A = 20261126-120000-base-0001" in text and "(baseline)" in text
    assert "Δ vs A" in text and "stage8" in text


def test_labels() -> None:
    assert [label(i) for i in (0, 1, 25, 26, 27)] == ["A", "B", "Z", "AA", "AB"]


def test_cli(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def tui(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tui", "compare", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    a, b = map(str, two_runs)
    r = tui(a, b, "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)["runs"]) == 2
    r = tui(a, b)  # not a terminal: text
    assert (
        r.returncode == 0
        and "B = 20261126-130000-other-0002" in r.stdout
        and "\x1b[" not in r.stdout
    )
    r = tui(a)
    assert r.returncode == 2 and "at least two runs" in r.stderr
    r = tui(a, str(tmp_path / "nope"))
    assert r.returncode == 2 and "no such run" in r.stderr


def test_screen(two_runs: tuple[Path, Path]) -> None:
    c = compare_paths(list(two_runs))
    app = CompareApp(c)

    async def drive() -> None:
        async with app.run_test(size=(160, 40)) as pilot:
            await pilot.pause()
            table = app.screen.query_one(DataTable)
            assert table.row_count == 1 + len(c.regions)
            assert len(table.columns) == 1 + 2 + 4
            row = table.get_row("backward")
            assert str(row[0]).strip() == "backward" and str(row[6]).endswith("×")
            await pilot.press("q")
            await pilot.pause()

    asyncio.run(drive())  # no async pytest plugin needed
    assert app.return_code == 0
