"""The original logger's text logs as a user's file holds them (QA of issue 20): every
variant read with no step lost, nesting where it is nested, figures as by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from _orig_log import RULE, original_log

from tui.cli import main
from tui.source.reader import RunSource
from tui.testing import write_run

_LINE = re.compile(r"^(\S.*?)\s*:\s*([0-9.]+)ms", re.M)


def _means(text: str) -> dict[str, float]:
    """Each top-level name's mean over the blocks, straight from the file's text."""
    vals: dict[str, list[float]] = {}
    for name, ms in _LINE.findall(text.replace("\r\n", "\n")):
        if not name.startswith("Total"):
            vals.setdefault(name, []).append(float(ms))
    return {k: sum(v) / len(v) for k, v in vals.items()}


def _summary(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    capsys.readouterr()
    assert main(["summary", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def _write(tmp_path: Path, text: str, name: str = "timing_20261207_101500.log") -> Path:
    run = tmp_path / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / name).write_bytes(text.encode("utf-8"))
    return run


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"flat_stages": True},
        {"noise": 0.05, "seed": 3},
        {"crlf": True, "seed": 4},
        {"noise": 0.03, "crlf": True, "seed": 5},
    ],
)
def test_original_logger_files_read_whole_and_nested(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kw: dict
) -> None:
    text = original_log(60, **kw)
    run = _write(tmp_path, text)
    d = _summary(capsys, str(run))
    assert d["steps"] == 60 and d["step_ms"]["steps"] == 60  # no step lost to a noise line
    assert d["timed_only"] is True
    rules = {r["parent"]: r["children"] for r in d["files"][0]["nesting"]["rules"]}
    assert "VRT" in rules["Forward total"] or "VRT" in rules.get("VRT", [])
    assert d["files"][0]["nesting"]["how"] == "inferred"
    m = _means(text)
    # the timed total is the forward total, not the Total line (twice it)
    assert d["step_ms"]["avg_ms"] == pytest.approx(m["Forward total"], rel=1e-3)
    regs = {r["name"]: r for r in d["regions"]}
    vrt = next(r for n, r in regs.items() if n.endswith("VRT"))
    assert vrt["share"] == pytest.approx(m["VRT"] / m["Forward total"], abs=2e-3)
    assert d["unaccounted"]["share"] == pytest.approx(0.0, abs=1e-9)


def test_disjoint_phases_a_user_added_stay_at_top_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = original_log(60, extras=True)
    d = _summary(capsys, str(_write(tmp_path, text)))
    names = {r["name"] for r in d["regions"]}
    assert {"Backward", "Optimizer step", "Forward total/VRT"} <= names
    m = _means(text)
    timed = m["Forward total"] + m["Backward"] + m["Optimizer step"]
    # (Data loading, 0.1 ms, fits in the forward's slack: the numbers cannot tell; at most
    # 0.1 ms of the timed total, not asserted either way)
    assert d["step_ms"]["avg_ms"] == pytest.approx(timed, abs=0.2)
    back = next(r for r in d["regions"] if r["name"] == "Backward")
    assert back["share"] == pytest.approx(m["Backward"] / timed, abs=1e-3)
    assert back["class"] == "red"


def test_a_truncated_last_block_and_a_restart_lose_no_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _summary(capsys, str(_write(tmp_path, original_log(60, truncate=True))))
    assert d["step_ms"]["steps"] == 60  # the last block, cut mid-line, still counts
    run = _write(tmp_path / "b", original_log(80, restart_at=50))
    d = _summary(capsys, str(run))
    # Step 1..50, then the logger restarted: Step 1..30 are numbered on as 51..80
    assert d["steps"] == 80 and d["step_ms"]["steps"] == 80
    assert d["files"][0]["restarts"] == 1 and d["files"][0]["superseded"] == 0
    capsys.readouterr()
    assert main(["summary", str(run)]) == 0
    assert "the logger restarted" in capsys.readouterr().out


def test_values_outside_the_record_limits_are_refused_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = [
        "huge : 1e300ms",
        "nanval : nanms ( nan%) [avg: nanms]",
        "infval :      infms",
        "neg : -1.00ms ( 0.0%)",
        "calls : 1.00ms x" + "9" * 5000,  # int() of 5000 digits would raise
        "y" * 5000 + " : 1.00ms",
    ]
    body = ""
    for s in range(1, 11):
        body += f"{RULE}\nStep {s}\n{RULE}\n"
        body += f"{'Forward total':<41}:   100.00ms ( 50.0%) [avg:   100.00ms]\n"
        body += "\n".join(bad) + f"\n{'Total':-<40}: 1e300ms\n"
    d = _summary(capsys, str(_write(tmp_path, body)))
    assert d["step_ms"]["steps"] == 10
    assert d["step_ms"]["avg_ms"] == pytest.approx(100.0)  # the Total 1e300 is not taken
    assert [r["name"] for r in d["regions"]] == ["Forward total"]
    f = d["files"][0]
    assert f["malformed"] == 10 * len(bad)
    assert "not a time" in f["last_error"] or "longer than" in f["last_error"]


def test_a_name_always_zero_is_not_nested(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = original_log(40)
    out = []
    for line in text.splitlines():
        out.append(line)
        if line.startswith("Loss"):
            out.append(f"{'Unused module':<41}:     0.00ms (  0.0%) [avg:     0.00ms]")
    d = _summary(capsys, str(_write(tmp_path, "\n".join(out) + "\n")))
    assert "Unused module" in {r["name"] for r in d["regions"]}  # top level, as written


def test_compare_names_a_text_logs_timed_total_and_its_nesting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text_run = _write(tmp_path, original_log(40))
    jrun = write_run(tmp_path / "logs", "jsonl-run", steps=40)
    capsys.readouterr()
    assert main(["compare", str(text_run), str(jrun)]) == 0
    out = capsys.readouterr().out
    assert "A = run  finished, 40 steps, timed total avg" in out
    assert "B = jsonl-run  finished, 40 steps, step avg" in out
    assert "A: classic text log, timed totals only" in out
    assert "A: nesting inferred from the numbers: Forward total ⊃ VRT" in out
    assert "\ntimed total | step " in out
    assert main(["compare", "--json", str(text_run), str(jrun)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [r["timed_only"] for r in d["runs"]] == [True, False]
    assert d["runs"][0]["nesting"] and not d["runs"][1]["nesting"]


def test_non_ascii_and_control_characters_in_names(tmp_path: Path) -> None:
    body = ""
    ctl = "bell\x07esc\x1b[31m"
    for s in range(1, 41):
        body += f"{RULE}\nStep {s}\n{RULE}\n"
        body += f"{'Zeit für Ä-Stufe 𝛼':<41}:    {10 + s % 3:.2f}ms ( 50.0%) [avg: 10.00ms]\n"
        body += f"{ctl:<41}:    {5 + s % 2:.2f}ms ( 50.0%) [avg: 5.00ms]\n"
        body += f"{'Total':-<40}: 99.00ms\r\n"
    run = _write(tmp_path, body)
    snap = RunSource(run, use_index=False).load().snapshot()
    assert snap.wall.steps == 40
    assert {r.name for r in snap.regions} == {"Zeit für Ä-Stufe 𝛼", "bell\x07esc\x1b[31m"}


def test_a_nest_the_log_lacks_or_the_numbers_belie_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = str(_write(tmp_path, original_log(40)))
    capsys.readouterr()
    assert main(["summary", run, "--nest", "Foo=Bar"]) == 0
    assert "Foo ⊃ Bar (none of them is in the log)" in capsys.readouterr().out
    assert main(["summary", run, "--nest", "Loss=VRT"]) == 0
    out = capsys.readouterr().out
    assert "Loss ⊃ VRT (sum within it in 0/40 steps" in out
    assert "the numbers do not bear it out" in out
    rule = _summary(capsys, run, "--nest", "Loss=VRT")["files"][0]["nesting"]["rules"][0]
    assert rule["share_min"] > 10 and rule["share_max"] >= rule["share_avg"] >= rule["share_min"]


def test_watch_counts_an_idle_logs_open_last_block_as_summary_does(tmp_path: Path) -> None:
    import os

    run = tmp_path / "run"
    run.mkdir()
    p = run / "timing_rank0.log"
    p.write_text(original_log(40, truncate=True))  # its last block has no Total line
    now = [0.0]
    t0 = 1.7e9
    os.utime(p, (t0, t0))
    src = RunSource(run, clock=lambda: now[0], wall=lambda: t0 + now[0], use_index=False)
    src.poll(None)
    assert src.snapshot().wall.steps == 39  # live: the open block may still grow
    now[0] += 120.0  # idle past stale_after: the run reads as finished ...
    src.poll(None)
    snap = src.snapshot()
    assert snap.state == "finished"
    full = RunSource(run, use_index=False).load().snapshot()
    assert snap.wall.steps == full.wall.steps == 40  # ... with the step summary counts
    assert snap.wall.avg == pytest.approx(full.wall.avg)
    with open(p, "a") as f:  # the block goes on after all: read again, whole
        f.write("ms [avg: 1.00ms]\n" + original_log(2, seed=7))
    now[0] += 1.0
    os.utime(p, (t0 + now[0], t0 + now[0]))
    src.poll(None)
    snap = src.snapshot()
    assert snap.wall.steps == 42 and snap.files[0].malformed == 0


def test_progress_bars_and_the_console_panel_in_the_file_are_not_regions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """stdout logged into the same file: tqdm's carriage returns before a line, and the
    original's console panel (its ``└─ Total:  620.0ms`` footer looks like an entry)."""
    panel = [
        "┌─ Timing Profile (Step 42) ─────────────────────",
        "│ Forward total       █████████████░░░░░░░░░░░░░░░░░  280.0ms 45.2%",
        "└─ Total:  620.0ms ──────────────────────────────",
    ]
    out = []
    for line in original_log(40, seed=11).splitlines():
        if line.startswith("Loss"):
            out += panel
        if line.startswith(("Step ", "Spike self")):
            line = " 46%|████▌     | 46/100 [00:12<00:15, 3.5it/s]\r" + line
        out.append(line)
    run = _write(tmp_path, "\n".join(out) + "\n")
    d = _summary(capsys, str(run))
    assert d["step_ms"]["steps"] == 40
    plain = _summary(capsys, str(_write(tmp_path / "p", original_log(40, seed=11))))
    assert [r["name"] for r in d["regions"]] == [r["name"] for r in plain["regions"]]
    assert d["step_ms"]["avg_ms"] == pytest.approx(plain["step_ms"]["avg_ms"])
    assert d["files"][0]["malformed"] == 40 * len(panel)
    csv_path = tmp_path / "out.csv"
    assert main(["export", str(run), "--format", "csv", "-o", str(csv_path)]) == 0
    assert len(csv_path.read_text().splitlines()) == 1 + 40


def test_a_long_nesting_brief_keeps_its_short_form_in_the_header(tmp_path: Path) -> None:
    from tui.view.widgets.header import header_text

    body = ""
    long = "x" * 300
    for s in range(1, 41):
        body += f"{RULE}\nStep {s}\n{RULE}\n"
        body += f"{'Forward total':<41}:   {100 + s % 5:.2f}ms ( 50.0%) [avg: 100.00ms]\n"
        body += f"{long:<41}:   {95 + s % 5:.2f}ms ( 50.0%) [avg: 95.00ms]\n"
        body += f"{'Total':-<40}: 999.00ms\n"
    snap = RunSource(_write(tmp_path, body), use_index=False).load().snapshot()
    assert snap.files[0].nesting.rules  # Forward total ⊃ xxx…
    text = header_text(
        snap, width=118, window=False, paused=False, behind_step=None, root=str(tmp_path)
    ).plain
    assert text.splitlines()[2].startswith("nesting inferred")  # not dropped for its length


def test_a_second_text_log_of_a_rank_is_named_not_silently_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _write(tmp_path, original_log(30), "timing_20261207_101500.log")
    (run / "timing_20261207_141500.log").write_text(original_log(50, seed=2))
    d = _summary(capsys, str(run))
    assert d["step_ms"]["steps"] == 30
    assert d["files_not_read"] == ["timing_20261207_141500.log"]
    assert main(["summary", str(run)]) == 0
    assert "not read: timing_20261207_141500.log" in capsys.readouterr().out
    # stagewatch's own text log beside the rank's JSONL file is replaced by it, not "unread"
    jrun = write_run(tmp_path / "logs", "j", steps=5)
    (jrun / "timing_rank0.log").write_text(original_log(5))
    assert _summary(capsys, str(jrun))["files_not_read"] == []


def test_a_latin1_name_and_a_byte_order_mark_lose_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = original_log(40).replace("Loss", "Zeit für Verlust")
    run = _write(tmp_path, "")
    (run / "timing_20261207_101500.log").write_bytes(b"\xef\xbb\xbf" + text.encode("latin-1"))
    d = _summary(capsys, str(run))
    assert d["files"][0]["malformed"] == 0 and d["step_ms"]["steps"] == 40
    assert "Forward total/Zeit f\ufffdr Verlust" in {r["name"] for r in d["regions"]}
    assert d["step_ms"]["avg_ms"] == pytest.approx(_means(text)["Forward total"], rel=1e-3)


def test_header_total_and_summary_variants(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = original_log(40, truncate=True)
    text = re.sub(r"^Step (\d+)$", r"Step \1/1000 (epoch 0)", text, flags=re.M)
    text = text.replace("Total----", "TOTAL----")
    # print_summary() written into the file after a last block cut short (no Total line)
    text += "\n" + RULE + "\nTiming Summary (40 steps)\n" + RULE + "\n"
    text += f"{'Forward total':<41}: 1916.99ms [min: 1800.00ms, max: 2050.00ms]\n"
    d = _summary(capsys, str(_write(tmp_path, text)))
    assert d["step_ms"]["steps"] == 40
    assert d["files"][0]["malformed"] == 1  # the line cut short, and nothing else
    assert "TOTAL" not in {r["name"] for r in d["regions"]}
    # the cut block's Forward total is its own, not summed with the summary's line
    assert d["step_ms"]["max_ms"] < 2100


def test_a_tiny_disjoint_phase_is_not_nested_on_the_clocks_tolerance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The brief's step: forward = VRT + spike + loss (its parts add up to it), data
    loading 0.1 ms, backward, allreduce and optimizer at top level. Data loading fits in
    the forward's 0.2% clock tolerance (3.7 ms), not in any time of the forward's own."""
    import random

    from _orig_log import OrigLogger

    rng = random.Random(5)
    log = OrigLogger()
    body = ""
    for step in range(1, 61):
        stages = [(f"Stage{i}", v * rng.uniform(0.95, 1.05)) for i, v in [(2, 269), (8, 965)]]
        vrt = round(sum(v for _, v in stages) + 566 * rng.uniform(0.95, 1.05), 2)
        spike = round(5 * rng.uniform(0.8, 1.2), 2)
        loss = round(50 * rng.uniform(0.9, 1.1), 2)
        top = [
            ("Forward total", vrt + spike + loss, []),
            ("VRT", vrt, stages),
            ("Spike modules", spike, []),
            ("Loss", loss, []),
            ("Data loading", 0.1 * rng.uniform(0.5, 1.5), []),
            ("Backward", 4500 * rng.uniform(0.9, 1.1), []),
            ("DDP allreduce", 150 * rng.uniform(0.7, 1.3), []),
            ("Optimizer step", 75 * rng.uniform(0.7, 1.3), []),
        ]
        body += log.block(step, top)
    d = _summary(capsys, str(_write(tmp_path, body)))
    rules = {r["parent"]: set(r["children"]) for r in d["files"][0]["nesting"]["rules"]}
    assert rules == {"Forward total": {"VRT", "Spike modules", "Loss"}}
    top_level = {r["name"] for r in d["regions"] if r["depth"] == 0}
    assert {"Data loading", "Backward", "DDP allreduce", "Optimizer step"} <= top_level


def test_the_ci_gate_on_text_logs_names_the_timed_total(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _write(tmp_path / "a", original_log(40, seed=1))
    b = _write(tmp_path / "b", original_log(40, seed=2))
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--max-regression-pct", "50"]) == 0
    out = capsys.readouterr().out
    assert "ok timed total: B (run)" in out and "step time" not in out


def test_minus_zero_is_zero_and_a_negative_time_is_refused() -> None:
    from tui.source.textlog import parse_text

    steps, bad = parse_text("Step 1\nA : -0.00ms\nB : -0.01ms\nD : 5.00ms\nTotal: 5.00ms\n")
    assert bad == 1 and steps[0].regions == {"A": (0.0, 1), "D": (5.0, 1)}


def test_the_summary_does_not_claim_nothing_is_unaccounted_in_a_text_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _write(tmp_path, original_log(40))
    capsys.readouterr()
    assert main(["summary", str(run)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("(unaccounted)"))
    assert "not measured" in line and "0.0%" not in line


def test_the_screen_does_not_claim_nothing_is_unaccounted_in_a_text_log(tmp_path: Path) -> None:
    import asyncio

    from tui.source.replay import ReplaySource
    from tui.view.app import MonitorApp
    from tui.view.widgets.tree import StageTree

    run = _write(tmp_path, original_log(40))
    app = MonitorApp(ReplaySource(run, playing=False, use_index=False))

    async def go() -> None:
        async with app.run_test(size=(160, 45)) as pilot:
            await pilot.press("end")
            for _ in range(200):
                await pilot.pause(0.02)
                tree = app.query_one(StageTree)
                node = tree.nodes_by_name.get("(unaccounted)")
                if node is not None and app.world is not None and app.world.selected.step == 40:
                    break
            label = str(app.query_one(StageTree).label_of("(unaccounted)"))
            assert "0.0%" not in label and "—" in label, label

    asyncio.run(go())


def test_one_character_names_keep_their_own_line() -> None:
    # instrument's nn.Sequential children are "0", "1", "2": a one-character name was read
    # up to the colon of the line's "[avg:" (one region per distinct figure, 14 calls, 1...)
    from tui.source.textlog import parse_text

    text = "".join(
        f"Step {s}\n"
        "backward                                 :          - (not timed itself)\n"
        "  - enc                                  :      8.73ms ( 10.6%) [avg:      8.73ms]\n"
        f"    - 2                                  :      {s}.23ms ( 10.0%) [avg:      8.23ms]\n"
        "    - a:b                                : 0.45ms\n"
        "Total: 82.00ms\n"
        for s in (1, 2)
    )
    steps, bad = parse_text(text)
    assert (
        bad == 0
        and [sorted(x.regions) for x in steps]
        == [["backward/enc", "backward/enc/2", "backward/enc/a:b"]] * 2
    )
    assert steps[1].regions["backward/enc/2"][0] == pytest.approx(2.23)
