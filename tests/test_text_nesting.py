"""Classic text logs: nesting of top-level names inferred from the numbers (issue 20, item 1).

The original logger wrote nested parts (forward total, and VRT inside it) as separate
top-level names and summed them all in its Total line; logs here are generated in its
format, with nested and disjoint top-level names, noise, missing and partial steps.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pytest

from stagewatch.records import Step
from tui.cli import main
from tui.model.nesting import INFERRED, NONE
from tui.report.export import write_csv
from tui.report.summary import open_run, summary_dict, summary_text
from tui.source.nesting import INFER_STEPS, NestPolicy, infer
from tui.source.reader import RunSource
from tui.testing import text_log_block
from tui.view.widgets.header import header_text

Block = list[tuple[str, float, list[tuple[str, float]]]]


def _log(blocks: list[Block], start: int = 1) -> str:
    """The original's text: its Total is the sum of every top-level name."""
    return "".join(
        text_log_block(i, b, sum(ms for _, ms, _ in b)) for i, b in enumerate(blocks, start)
    )


def issue_blocks(n: int = 40, seed: int = 1) -> list[Block]:
    """The issue's log: forward total ⊃ VRT (its stages nested by the log) + spike parts,
    all at top level; ~2.26 s forward, VRT ~83% of it, Stage8 ~43%."""
    rng = random.Random(seed)
    base = [(1, 90), (2, 269), (3, 95), (4, 100), (5, 90), (6, 80), (7, 137), (8, 965)]
    out = []
    for _ in range(n):
        stages = [(f"Stage{i}", v * rng.uniform(0.97, 1.03)) for i, v in base]
        vrt = sum(v for _, v in stages) + rng.uniform(40, 60)
        enc, sa = 200 * rng.uniform(0.95, 1.05), 150 * rng.uniform(0.95, 1.05)
        fwd = vrt + enc + sa + rng.uniform(24, 44)
        out.append(
            [
                ("Forward total", fwd, []),
                ("VRT", vrt, stages),
                ("Spike encoder", enc, []),
                ("Spike self-attention", sa, []),
            ]
        )
    return out


def disjoint_blocks(n: int, seed: int, noise: float = 0.05) -> list[Block]:
    """Disjoint phases, noisy: backward ≈ 2× forward, encoder/decoder of similar cost
    (crossing), and backward ≈ 92% of the others' sum (the near miss a sum rule alone
    would take)."""
    rng = random.Random(seed)

    def j(x: float) -> float:
        return x * rng.uniform(1 - noise, 1 + noise)

    return [
        [
            ("data", j(5), []),
            ("encoder", j(150), []),
            ("decoder", j(150), []),
            ("allreduce", j(200), []),
            ("backward", j(600), [("block", j(300))]),
            ("optimizer", j(50), []),
        ]
        for _ in range(n)
    ]


def _write(tmp_path: Path, text: str, name: str = "timing_rank0.log") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_the_issue_log_comes_out_right(tmp_path: Path) -> None:
    p = _write(tmp_path, _log(issue_blocks()))
    snap = open_run(p)
    assert snap.step == 40
    assert snap.wall.avg == pytest.approx(2260, rel=0.02)  # not the Total line's ~4.5 s
    vrt = snap.region("Forward total/VRT")
    st8 = snap.region("Forward total/VRT/Stage8")
    assert vrt is not None and st8 is not None
    assert vrt.whole.share == pytest.approx(0.83, abs=0.02)
    assert st8.whole.share == pytest.approx(0.43, abs=0.02)
    assert snap.region("VRT") is None and snap.region("Forward total/Spike encoder") is not None
    d = summary_dict(snap)
    by = {r["name"]: r for r in d["regions"]}
    assert by["Forward total/VRT/Stage8"]["class"] == "red"
    assert d["timed_only"] is True
    nest = d["files"][0]["nesting"]
    assert nest["how"] == INFERRED and nest["timed_only"] is True
    rule = nest["rules"][0]
    assert rule["parent"] == "Forward total"
    assert set(rule["children"]) == {"VRT", "Spike encoder", "Spike self-attention"}
    assert rule["fit_steps"] == rule["steps"] == 40 and rule["share_min"] >= 0.9
    text = summary_text(snap).plain
    assert "timed total avg 2.2" in text and "step avg" not in text
    assert "nesting inferred from the numbers: Forward total ⊃ VRT" in text
    assert "no step wall time" in text
    assert "dominates the step" not in text  # the timed total is not "the step"
    dis = summary_text(open_run(_write(tmp_path, _log(disjoint_blocks(40, 0)), "timing_x.log")))
    assert "backward dominates the timed total" in dis.plain


def test_the_screen_header_names_timed_totals_and_the_inference(tmp_path: Path) -> None:
    snap = open_run(_write(tmp_path, _log(issue_blocks())))
    head = header_text(snap, window=False, paused=False, behind_step=None, root="", width=200)
    assert "timed total" in head.plain and "step 2.2" not in head.plain
    assert "nesting inferred" in head.plain
    narrow = header_text(snap, window=False, paused=False, behind_step=None, root="", width=80)
    assert "timed" in narrow.plain
    assert "nesting inferred: Forward total ⊃ VRT +2 (40/40 steps)" in narrow.plain
    assert "steps/s" not in head.plain  # a rate of forward passes is no step rate
    from tui.view.widgets.ranks import rank_text

    assert rank_text(snap, None, False, 0.4, 0.1)[0] == "ranks · timed total"


@pytest.mark.parametrize("seed", range(8))
def test_noisy_disjoint_logs_read_exactly_as_today(tmp_path: Path, seed: int) -> None:
    text = _log(disjoint_blocks(60, seed))
    auto = open_run(_write(tmp_path, text))
    off = open_run(_write(tmp_path, text, "timing_rank1.log"), nest=NestPolicy("off"))
    assert [r.name for r in auto.regions] == [r.name for r in off.regions]
    assert [r.whole for r in auto.regions] == [r.whole for r in off.regions]
    assert auto.wall == off.wall  # the Total line, as before
    assert auto.files[0].nesting.how == NONE


def test_crossing_siblings_and_noise_free_ratios_are_not_nested() -> None:
    rng = random.Random(3)
    # forward and backward of similar cost, crossing: neither holds the other
    xs = [{"forward": rng.uniform(90, 110), "backward": rng.uniform(90, 110)} for _ in range(40)]
    assert infer(xs) == []
    # a small phase well inside a big one, but < 90% of it: not a parent
    ys = [{"backward": 600.0 + i, "forward": 300.0 + i % 3} for i in range(40)]
    assert infer(ys) == []


def test_a_chain_of_top_level_names_becomes_a_tree() -> None:
    rng = random.Random(5)
    rows = []
    for _ in range(40):
        s8 = 900 * rng.uniform(0.95, 1.05)
        s2 = 250 * rng.uniform(0.95, 1.05)
        vrt = s8 + s2 + rng.uniform(10, 30)
        enc = 200 * rng.uniform(0.95, 1.05)
        rows.append(
            {
                "forward": vrt + enc + rng.uniform(5, 20),
                "VRT": vrt,
                "Stage8": s8,
                "Stage2": s2,
                "enc": enc,
            }
        )
    rules = dict(infer(rows))
    assert set(rules["VRT"]) == {"Stage8", "Stage2"}
    assert set(rules["forward"]) == {"VRT", "enc"}


def test_missing_partial_steps_and_non_ascii_names(tmp_path: Path) -> None:
    rng = random.Random(9)
    blocks: list[Block] = []
    for i in range(50):
        kid_a = 300 * rng.uniform(0.95, 1.05)
        kid_b = 120 * rng.uniform(0.9, 1.1)
        parent = kid_a + kid_b + rng.uniform(2, 8)
        b: Block = [("Vorwärts gesamt", parent, []), ("编码器", kid_a, []), ("Übergang", kid_b, [])]
        b.append(("Rückwärts", 2.1 * parent * rng.uniform(0.95, 1.05), []))
        if i == 17:
            b = b[1:]  # a step missing its parent
        blocks.append(b)
    text = _log(blocks)
    text += "=" * 80 + "\nStep 51\n" + "=" * 80 + "\n"
    text += "Vorwärts gesamt                          :   410.00ms ( 45.2%) [avg:   280.00ms]\n"
    text += "编码器                                    :   300.00ms\n"  # cut: no Total line
    snap = open_run(_write(tmp_path, text))
    assert snap.step == 51
    names = {r.name for r in snap.regions}
    assert {"Vorwärts gesamt/编码器", "Vorwärts gesamt/Übergang", "Rückwärts"} <= names
    assert "编码器" not in names
    note = snap.files[0].nesting
    assert note.how == INFERRED and note.rules[0].steps == 51 and note.rules[0].fit >= 49
    # timed total = the outermost times: the parent and backward, never the children again
    assert snap.wall.avg < 1.2 * (snap.region("Vorwärts gesamt").whole.avg * 3.1)


def test_names_the_log_nests_itself_stay_and_stagewatch_logs_are_not_inferred(
    tmp_path: Path,
) -> None:
    from stagewatch.timing.text_log import format_step

    text = "".join(
        format_step(
            i,
            1000.0,
            {"forward": (600.0 + i, 1), "backward": (301.0, 1), "backward/x": (299.0, 1)},
        )
        for i in range(1, 41)
    )
    snap = open_run(_write(tmp_path, text))
    assert snap.files[0].nesting is None  # its own Total is the step wall time
    assert snap.wall.avg == 1000.0 and snap.region("backward/x") is not None


def test_nest_and_no_nest_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _write(tmp_path, _log(issue_blocks()))
    assert main(["summary", str(p), "--no-nest", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["files"][0]["nesting"]["how"] == "off"
    assert d["step_ms"]["avg_ms"] > 4000  # as written: the Total line
    assert main(["summary", str(p), "--nest", "VRT=Stage-none", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["files"][0]["nesting"]["how"] == "given"
    assert "VRT" in {r["name"] for r in d["regions"]}  # forward not inferred over it
    argv = ["summary", str(p), "--nest", "Forward total=VRT", "--nest", "VRT=Spike encoder"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "given by --nest" in out


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--nest", "VRT"], "PARENT=CHILD"),
        (["--nest", "=VRT"], "PARENT=CHILD"),
        (["--nest", "A=B,,C"], "PARENT=CHILD"),
        (["--nest", "A=A"], "itself"),
        (["--nest", "A=B", "--nest", "B=A"], "itself"),
        (["--nest", "A=C", "--nest", "B=C"], "already nests"),
        (["--nest", "A=b/c"], "top-level"),
        (["--nest", "A=B", "--no-nest"], "exclude"),
    ],
)
@pytest.mark.parametrize("command", ["summary", "compare", "export"])
def test_bad_nest_values_are_one_line_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], why: str, command: str
) -> None:
    p = _write(tmp_path, _log(issue_blocks(4)))
    runs = [str(p), str(p)] if command == "compare" else [str(p)]
    assert main([command, *runs, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert why in err and len(err.splitlines()) == 1


def test_replay_and_watch_take_the_flags() -> None:
    import argparse

    from tui.commands import replay, watch

    for mod in (replay, watch):
        ap = argparse.ArgumentParser()
        mod.add_arguments(ap)
        a = ap.parse_args(["x", "--nest", "A=B,C"])
        assert a.nest == ["A=B,C"]


def test_a_rule_later_steps_break_is_dropped_and_the_file_read_again(tmp_path: Path) -> None:
    good = issue_blocks(INFER_STEPS)
    rng = random.Random(2)
    bad: list[Block] = [
        [("Forward total", 500 * rng.uniform(0.9, 1.1), []), *b[1:]] for b in issue_blocks(40, 7)
    ]
    snap = open_run(_write(tmp_path, _log(good + bad)))
    note = snap.files[0].nesting
    assert note.how == NONE and "Forward total" in note.detail
    assert snap.region("VRT") is not None and snap.step == INFER_STEPS + 40


def test_a_live_text_log_with_few_steps_settles_when_idle(tmp_path: Path) -> None:
    p = _write(tmp_path, _log(issue_blocks(6)))
    now = [1000.0]
    src = RunSource(p, clock=lambda: now[0], wall=lambda: 0.0, use_index=False)
    src.poll()
    assert src.agg.last_step < 6  # held for the decision
    now[0] += 60.0
    src.poll()
    snap = src.snapshot()
    assert snap.region("Forward total/VRT") is not None and snap.files[0].nesting.how == INFERRED


def test_export_csv_of_a_text_log_is_nested(tmp_path: Path) -> None:
    p = _write(tmp_path, _log(issue_blocks(10)))
    buf = io.StringIO()
    stats = write_csv(p, buf)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert stats.steps == 10 and len(rows) == 10
    assert "Forward total/VRT/Stage8" in rows[0]
    assert float(rows[0]["wall_ms"]) == pytest.approx(float(rows[0]["Forward total"]))
    buf = io.StringIO()
    write_csv(p, buf, nest=NestPolicy("off"))
    assert "VRT/Stage8" in next(csv.DictReader(io.StringIO(buf.getvalue())))


def test_replay_reads_the_nesting_as_summary_does(tmp_path: Path) -> None:
    from tui.source.replay import ReplaySource

    p = _write(tmp_path, _log(issue_blocks()))
    src = ReplaySource(p, playing=False)
    src.seek(10)
    mid = src.build().selected
    assert mid.step == 10 and mid.region("Forward total/VRT/Stage8") is not None
    src.seek(40)
    end = src.build().selected
    whole = open_run(p)
    assert end.step == 40 and end.wall == whole.wall
    assert [r.name for r in end.regions] == [r.name for r in whole.regions]
    off = ReplaySource(p, playing=False, nest=NestPolicy("off"))
    off.seek(40)
    assert off.build().selected.region("VRT") is not None


def test_replay_of_a_rule_broken_later_does_not_loop(tmp_path: Path) -> None:
    from tui.source.replay import ReplaySource

    rng = random.Random(4)
    bad: list[Block] = [
        [("Forward total", 500 * rng.uniform(0.9, 1.1), []), *b[1:]] for b in issue_blocks(40, 8)
    ]
    p = _write(tmp_path, _log(issue_blocks(INFER_STEPS) + bad))
    src = ReplaySource(p, playing=False)
    src.seek(INFER_STEPS + 40)  # finds the rule broken: reopens without it, where it was
    src.seek(INFER_STEPS + 40)
    snap = src.build().selected
    assert snap.step == INFER_STEPS + 40 and snap.region("VRT") is not None


def test_compare_reads_text_logs_nested(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _write(tmp_path, _log(issue_blocks(40, 1)))
    b = _write(tmp_path, _log(issue_blocks(40, 2)), "timing_rank1.log")
    assert main(["compare", str(a), str(b), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert "Forward total/VRT/Stage8" in json.dumps(d)


def test_a_rare_top_level_name_does_not_slip_into_a_parent(tmp_path: Path) -> None:
    # validation every 20 steps: within the forward total's time, but not inside it (the
    # children's sum overflows in exactly the steps it ran)
    blocks = issue_blocks(40)
    for i in (19, 39):
        blocks[i].append(("validation", 120.0, []))
    snap = open_run(_write(tmp_path, _log(blocks)))
    rule = snap.files[0].nesting.rules[0]
    assert rule.parent == "Forward total" and "validation" not in rule.children
    assert snap.region("validation") is not None
    assert snap.region("Forward total/VRT/Stage8") is not None


def test_watch_passes_the_nesting_to_every_run_it_opens(tmp_path: Path) -> None:
    from tui.source.root import RootReader

    run = tmp_path / "logs" / "old-run"
    run.mkdir(parents=True)
    _write(run, _log(issue_blocks(40)))
    reader = RootReader(tmp_path / "logs")
    reader.nest = NestPolicy("off")
    reader.scan()
    (src,) = reader.runs.values()
    assert src.nest.mode == "off"
    snap = src.load().snapshot()
    assert snap.region("VRT") is not None and snap.files[0].nesting.how == "off"


def test_a_name_the_log_already_nests_is_not_nested_again() -> None:
    from tui.source.nesting import _log_kids

    rng = random.Random(11)
    rows, held = [], []
    for i in range(40):
        s8 = 900 * rng.uniform(0.97, 1.03)
        vrt = s8 + 60 * rng.uniform(0.9, 1.1)
        rows.append({"VRT": vrt, "Stage8": s8})  # Stage8 at top level too ...
        regions = {"VRT": (vrt, 1), "VRT/Stage8": (s8, 1), "Stage8": (s8, 1)}
        held.append((i, Step(step=i + 1, time=0.0, wall_ms=vrt + s8, regions=regions)))
    assert infer(rows) == [("VRT", ("Stage8",))]  # the numbers alone would nest it
    assert infer(rows, (), _log_kids(held)) == []  # ... but the log has VRT/Stage8 already
