"""The ``tui`` command line as a new user meets it: usage errors (exit 2), the CI gate,
sorting and span, JSON figures, closed pipes, export safety, and no control character from a
log or a path reaching the terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stagewatch.records import RunEnd, RunError, Step, encode
from tui.cli import main
from tui.testing import start_line, write_run

ROOT = Path(__file__).resolve().parent.parent
# C0/C1 controls and DEL; a newline ends a line and is allowed
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def hand_run(
    root: Path,
    name: str = "r",
    regions: dict[str, float] | None = None,
    steps: int = 6,
    scalars: dict[str, float] | None = None,
) -> Path:
    run = root / name
    run.mkdir(parents=True)
    regions = regions or {"forward": 30.0, "backward": 60.0}
    lines = [start_line(name, total_steps=steps)]
    for i in range(1, steps + 1):
        lines.append(
            encode(
                Step(
                    step=i,
                    time=float(i),
                    wall_ms=100.0,
                    samples=1,
                    regions={k: (v, 1) for k, v in regions.items()},
                    scalars=scalars,
                )
            )
        )
    lines.append(encode(RunEnd(time=steps + 1.0, status="completed", steps=steps)))
    (run / "rank0.jsonl").write_text("".join(lines))
    return run


# --------------------------------------------------------------------------- options


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from tui import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out


@pytest.mark.parametrize(
    "given, share", [("40", 0.40), ("40%", 0.40), ("12.5", 0.125), ("0.5%", 0.005), ("100", 1.0)]
)
def test_thresholds_are_percentages(given: str, share: float) -> None:
    from tui.commands._common import percent

    assert percent(given) == pytest.approx(share)


@pytest.mark.parametrize(
    "given, why",
    [
        ("0.4", "ambiguous"),
        ("abc", "percentage"),
        ("150", "(0, 100]"),
        ("-5", "(0, 100]"),
        ("nan", "percentage"),
    ],
)
def test_bad_thresholds_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], given: str, why: str
) -> None:
    run = hand_run(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["summary", str(run), "--red", given])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--red" in err and why in err


# --------------------------------------------------------------------------- summary


def test_summary_sorts_by_share_by_default_and_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = hand_run(
        tmp_path, regions={"data": 1.0, "forward": 20.0, "backward": 50.0, "optimizer": 5.0}
    )
    assert main(["summary", str(run)]) == 0
    out = capsys.readouterr().out
    names = [
        ln.split()[0]
        for ln in out.splitlines()
        if ln.split() and ln.split()[0] in ("data", "forward", "backward", "optimizer")
    ]
    assert names == ["backward", "forward", "optimizer", "data"]
    assert "sorted by share of time" in out
    assert main(["summary", str(run), "--sort", "name"]) == 0
    out = capsys.readouterr().out
    names = [
        ln.split()[0]
        for ln in out.splitlines()
        if ln.split() and ln.split()[0] in ("data", "forward", "backward", "optimizer")
    ]
    assert names == ["backward", "data", "forward", "optimizer"]


def test_summary_names_its_span_and_uses_it_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "r"
    run.mkdir()
    lines = [start_line("r", total_steps=40)]
    for i in range(1, 41):  # forward dominates early, backward in the last 10 steps
        regs = (
            {"forward": (80.0, 1), "backward": (10.0, 1)}
            if i <= 30
            else {"forward": (10.0, 1), "backward": (80.0, 1)}
        )
        lines.append(encode(Step(step=i, time=float(i), wall_ms=100.0, regions=regs)))
    (run / "rank0.jsonl").write_text("".join(lines))
    assert main(["summary", str(run)]) == 0
    whole = capsys.readouterr().out
    assert "span: whole run (40 steps)" in whole and "advice — whole run (40 steps):" in whole
    assert "forward dominates" in whole
    assert main(["summary", str(run), "--span", "recent", "--window", "10"]) == 0
    recent = capsys.readouterr().out
    assert "span: last 10 steps (31–40)" in recent and "advice — last 10 steps (31–40):" in recent
    assert "backward dominates" in recent and "forward dominates" not in recent
    first = next(ln for ln in recent.splitlines() if ln.startswith(("forward", "backward")))
    assert first.startswith("backward") and " 80.0%" in first  # the table is of the same span
    assert main(["summary", str(run), "--json", "--span", "recent", "--window", "10"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["span"] == {"kind": "recent", "label": "last 10 steps (31–40)"}
    assert d["regions"][0]["name"] == "backward" and d["regions"][0]["class"] == "red"
    assert (
        d["advice"][-1]["rule"] == "dominant"
        and d["advice"][-1]["evidence"]["region"] == "backward"
    )


def test_summary_always_ends_with_advice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    quiet = hand_run(tmp_path, regions={"a": 30.0, "b": 30.0, "c": 35.0})
    assert main(["summary", str(quiet)]) == 0
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    assert lines[-2].startswith("advice — ") and "nothing stands out" in lines[-1]
    loud = hand_run(tmp_path, "loud", regions={"a": 90.0})
    assert main(["summary", str(loud)]) == 0
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("advice — "))
    assert all(ln.startswith("  ") for ln in lines[i + 1 :]) and "a dominates" in lines[-1]


def test_summary_json_keeps_significant_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = hand_run(tmp_path, scalars={"lr": 1.05e-05, "loss": 0.123456789, "tiny": 3.2e-12})
    assert main(["summary", str(run), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["scalars"]["lr"] == 1.05e-05 and d["scalars"]["tiny"] == 3.2e-12
    assert d["scalars"]["loss"] == pytest.approx(0.123457, abs=1e-9)


@pytest.mark.parametrize(
    "argv",
    [
        ["summary", "--json"],
        ["summary"],
        ["export", "--format", "csv", "-o", "-"],
        ["export", "-o", "-"],
    ],
)
def test_closed_pipe_is_quiet(tmp_path: Path, argv: list[str]) -> None:
    run = write_run(tmp_path, steps=300, n_regions=120)
    cmd = (
        f"{sys.executable} -m tui {' '.join(argv[:1])} {run} {' '.join(argv[1:])} "
        "| head -c 100 >/dev/null"
    )
    out = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "Error" not in out.stderr and "Traceback" not in out.stderr


def test_absurd_figures_never_crash_summary_or_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tui.fmt import fmt_bytes, fmt_duration, fmt_ms, fmt_num, fmt_pct, fmt_rate, sig

    for f in (fmt_ms, fmt_duration, fmt_bytes, fmt_rate, fmt_pct, fmt_num, sig):
        for x in (
            float("inf"),
            float("-inf"),
            float("nan"),
            10**400,
            -(10**400),
            1e308,
            None,
            0,
            -1,
        ):
            f(x)  # total: never raises
    run = tmp_path / "r"
    run.mkdir()
    # the largest figures the shared record limits let through (beyond them a line is malformed)
    lines = [start_line("r", total_steps=10**12 - 1)]
    for i in range(1, 4):
        lines.append(
            encode(
                Step(
                    step=i,
                    time=float(i),
                    wall_ms=1e11,
                    regions={"forward": (1e11, 1)},
                    scalars={"x": 9.99e299},
                    memory={"allocated": 2**62},
                )
            )
        )
    lines.append('{"v":1,"kind":"step","step":4,"time":4.0,"wall_ms":1e400,"regions":{}}\n')  # inf
    lines.append(
        '{"v":1,"kind":"step","step":5,"time":5.0,"wall_ms":1.0,"regions":{},"memory":{"peak":'
        + "9" * 400
        + "}}\n"
    )
    (run / "rank0.jsonl").write_text("".join(lines))
    assert main(["summary", str(run)]) == 0
    capsys.readouterr()
    assert main(["summary", str(run), "--json"]) == 0
    json.loads(capsys.readouterr().out)
    for fmt in ("chrome", "csv"):
        out = tmp_path / f"o.{fmt}"
        assert main(["export", str(run), "--format", fmt, "-o", str(out)]) == 0
    json.loads((tmp_path / "o.chrome").read_text())


# --------------------------------------------------------------------------- watch


def test_watch_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = hand_run(tmp_path / "logs")
    assert main(["watch", str(run / "rank0.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "tui summary" in err
    # no terminal (pytest captures stdout): say what to use instead
    assert main(["watch", str(tmp_path / "logs")]) == 2
    err = capsys.readouterr().err
    assert "needs a terminal" in err and "tui summary" in err


def test_watch_one_level_above_the_log_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tui.commands.watch import resolve_root

    top = tmp_path / "runs"
    hand_run(top / "logs")
    (top / "demo").mkdir()  # not (yet) holding runs
    assert resolve_root(str(top)) == str(top / "logs")
    assert "watching the log folder below it" in capsys.readouterr().err
    hand_run(top / "demo")
    from stagewatch.errors import UsageError

    with pytest.raises(UsageError, match=r"holds log folders, not runs: watch one of .*demo.*logs"):
        resolve_root(str(top))
    assert resolve_root(str(top / "logs")) == str(top / "logs")  # a log folder as is
    assert resolve_root(str(top / "logs" / "r")) == str(top / "logs" / "r")  # one run folder
    assert resolve_root(str(tmp_path / "new")) == str(
        tmp_path / "new"
    )  # not there yet: wait for it


# --------------------------------------------------------------------------- export


def test_export_never_overwrites_an_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = hand_run(tmp_path)
    before = (run / "rank0.jsonl").read_bytes()
    (run / "timing_rank0.log").write_text("the text log\n")
    for target in (run / "rank0.jsonl", run / ".." / "r" / "rank0.jsonl", run / "timing_rank0.log"):
        for force in ([], ["--force"]):
            for src in (run, run / "rank0.jsonl"):
                assert main(["export", str(src), "-o", str(target), *force]) == 2
                assert "one of the run's own files" in capsys.readouterr().err
    link = tmp_path / "link.json"
    link.symlink_to(run / "rank0.jsonl")
    assert main(["export", str(run), "-o", str(link), "--force"]) == 2
    assert (run / "rank0.jsonl").read_bytes() == before and (
        run / "timing_rank0.log"
    ).read_text() == "the text log\n"


def test_export_asks_for_force_to_replace_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = hand_run(tmp_path)
    out = tmp_path / "trace.json"
    out.write_text("mine")
    assert main(["export", str(run), "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == "mine"
    assert main(["export", str(run), "-o", str(out), "--force"]) == 0
    assert json.loads(out.read_text())["traceEvents"]
    # the default output inside the run folder is not an input, but is not replaced silently either
    assert main(["export", str(run)]) == 0
    assert main(["export", str(run)]) == 2
    assert main(["export", str(run), "--force"]) == 0
    assert not [p for p in tmp_path.rglob("*.tmp*")]


@pytest.mark.parametrize("make", ["text_file", "empty_dir", "fifo_dir"])
def test_export_of_a_non_run_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: str
) -> None:
    target = tmp_path / "x"
    if make == "text_file":
        target.write_text("hello\n")
    elif make == "empty_dir":
        target.mkdir()
    else:
        target.mkdir()
        os.mkfifo(target / "rank0.jsonl")  # would block a plain open() forever
    assert main(["export", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tui export: error: ") and "not a run" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- compare gate


def test_compare_gate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = hand_run(tmp_path, "a", regions={"forward": 30.0, "backward": 60.0})
    b = hand_run(tmp_path, "b", regions={"forward": 36.0, "backward": 60.0})
    # step time is the same (100 ms): passes; forward is 20% slower: fails at 10%, passes at 25%
    assert main(["compare", str(a), str(b), "--max-regression-pct", "5"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("ok step time: B (b)")
    assert (
        main(["compare", str(a), str(b), "--max-regression-pct", "10", "--region", "forward"]) == 1
    )
    last = capsys.readouterr().out.splitlines()[-1]
    assert (
        last.startswith("FAIL region forward: B (b)") and "+20.0%" in last and "10% limit" in last
    )
    assert (
        main(["compare", str(a), str(b), "--max-regression-pct", "25%", "--region", "forward"]) == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "compare",
                str(a),
                str(b),
                "--json",
                "--max-regression-pct",
                "10",
                "--region",
                "forward",
            ]
        )
        == 1
    )
    out = capsys.readouterr()
    assert json.loads(out.out)["gate"]["failed"] is True and out.err.startswith("FAIL")
    assert main(["compare", str(a), str(b), "--max-regression-pct", "10", "--region", "nope"]) == 2
    assert "no region 'nope'" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "--region", "forward"]) == 2


# --------------------------------------------------------------------------- hostile strings


HOSTILE = "x\x1b]0;pwned\x07\x1b[2J\r\x08\x9b31m\x00y"  # in records
HOSTILE_PATH = HOSTILE.replace("\x00", "")  # in folder names (a path cannot hold NUL)


def test_no_control_character_reaches_cli_output(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / f"logs{HOSTILE_PATH}"
    run = root / f"run{HOSTILE_PATH}"
    run.mkdir(parents=True)
    lines = [start_line(f"run{HOSTILE}", total_steps=8)]
    for i in range(1, 9):
        lines.append(
            encode(
                Step(
                    step=i,
                    time=float(i),
                    wall_ms=100.0,
                    regions={
                        f"fwd{HOSTILE}": (50.0, 1),
                        f"fwd{HOSTILE}/in{HOSTILE}": (20.0, 1),
                        "b": (30.0, 1),
                    },
                    scalars={f"loss{HOSTILE}": 0.5},
                )
            )
        )
    lines.append("not json " + HOSTILE + "\n")
    lines.append(
        encode(
            RunEnd(
                time=9.0,
                status="failed",
                steps=8,
                error=RunError(f"E{HOSTILE}", f"boom{HOSTILE}"),
            )
        )
    )
    (run / "rank0.jsonl").write_text("".join(lines))
    other = hand_run(tmp_path, "base")
    runs = [
        ["summary", str(run)],
        ["summary", str(run), "--json"],
        ["summary", str(run), "--sort", "name"],
        ["export", str(run), "-o", str(tmp_path / "t.json")],
        ["export", str(run), "--format", "csv", "-o", "-"],
        ["export", str(run), "-o", str(run / "rank0.jsonl")],
        ["compare", str(other), str(run), "--text"],
        ["compare", str(other), str(run), "--json"],
        ["compare", str(other), str(run), "--max-regression-pct", "1"],
        ["compare", str(other), str(run), "--max-regression-pct", "1", "--region", f"fwd{HOSTILE}"],
        ["summary", str(tmp_path / f"missing{HOSTILE_PATH}")],
        ["export", str(tmp_path / f"missing{HOSTILE_PATH}")],
        ["watch", str(run / "rank0.jsonl")],
        ["watch", str(root)],
    ]
    for argv in runs:
        try:
            main(argv)
        except SystemExit:
            pass
        out, err = capfd.readouterr()
        for stream, text in (("stdout", out), ("stderr", err)):
            bad = CONTROL.search(text)
            assert bad is None, (
                f"{argv[0]} {stream}: {text[max(0, bad.start() - 40) : bad.end() + 40]!r}"
            )
        if argv != ["watch", str(root)]:  # (that one says it needs a terminal, naming nothing)
            assert "\\x1b" in out + err or "\\u001b" in out + err, (
                argv
            )  # the hostile text is shown, escaped


def test_replay_without_a_terminal_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = hand_run(tmp_path)
    assert main(["replay", str(run)]) == 2
    err = capsys.readouterr().err
    assert "needs a terminal" in err and "tui summary" in err
