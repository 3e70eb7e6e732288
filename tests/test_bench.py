"""``trainer bench``: sweeps, result analysis (OOM, failures), the table; a fake trainer for
speed, and the real tiny model on CPU with a 2×2 sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from stagewatch.errors import UsageError
from stagewatch.records import RunEnd, RunError, RunStart, Step, encode
from trainer.bench import BENCH_SETTINGS, run_bench
from trainer.bench_report import markdown, report_dict, write_outputs
from trainer.bench_results import analyse_run
from trainer.bench_sweeps import combinations, parse_case, parse_sweep

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "deblur" / "vrt_spike_tiny.yaml")

# A stand-in for `python -m trainer train`: the real timing core writes the run; batch 3 runs
# out of memory at step 2, batch 4 dies before writing anything.
FAKE_TRAINER = textwrap.dedent(
    """
    import sys, time
    from stagewatch.timing import TimingLogger, set_global_timing_logger, timed
    args = sys.argv[1:]
    sets = dict(a.split("=", 1) for a in args[args.index("--cfg") + 2:] if "=" in a)
    log_dir = args[args.index("--log-dir") + 1]
    batch = int(sets.get("TRAIN.BATCH_SIZE", "1"))
    opt = sets.get("TRAIN.OPTIM.TYPE", "adamw")
    steps = int(sets["TRAIN.MAX_STEPS"])
    if batch == 4:
        print("RuntimeError: something unrelated broke", file=sys.stderr)
        sys.exit(3)
    class OutOfMemoryError(RuntimeError):
        pass
    log = TimingLogger(log_dir, enable_console=False, enable_file=False,
                       run_name=sets["LOG.RUN_NAME"], config={"TRAIN": {"BATCH_SIZE": batch}},
                       total_steps=steps, samples_per_step=batch)
    set_global_timing_logger(log)
    log.mark_step_start()
    try:
        for s in range(1, steps + 1):
            with timed("forward"):
                time.sleep(0.004 * batch * (0.5 if opt == "adamw8bit" else 1.0))
            if batch == 3 and s == 2:
                raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            if s == steps:
                with timed("validation"):
                    time.sleep(0.05)
            log.step(samples=batch, memory={"peak": batch * 10**9, "reserved": batch * 2 * 10**9})
    except Exception as e:
        log.close("failed", e)
        raise
    log.close("completed")
    """
)


@pytest.fixture()
def fake(tmp_path: Path):  # type: ignore[no-untyped-def]
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)

    def command(cfg: str, overrides: Sequence[str], log_dir: str) -> list[str]:
        cmd = [sys.executable, str(script), "--cfg", cfg]
        return [*cmd, *overrides, "--log-dir", log_dir]

    return command


def test_parse_sweeps_and_cases() -> None:
    s = parse_sweep("TRAIN.BATCH_SIZE=1, 2,3")
    assert s.key == "TRAIN.BATCH_SIZE" and s.values == ("1", "2", "3")
    for bad in ("TRAIN.BATCH_SIZE", "=1,2", "TRAIN..X=1", "A=1,,2", "A="):
        with pytest.raises(UsageError):
            parse_sweep(bad)
    assert parse_case("A.B=1 C=x") == (("A.B", "1"), ("C", "x"))
    assert parse_case("") == ()
    with pytest.raises(UsageError):
        parse_case("A.B")
    combos = combinations([parse_sweep("A=1,2"), parse_sweep("B=x,y")])
    assert combos == [
        (("A", "1"), ("B", "x")),
        (("A", "1"), ("B", "y")),
        (("A", "2"), ("B", "x")),
        (("A", "2"), ("B", "y")),
    ]
    assert combinations([parse_sweep("B=x,y")], [(), (("A", "2"),)]) == [
        (("B", "x"),),
        (("B", "y"),),
        (("A", "2"), ("B", "x")),
        (("A", "2"), ("B", "y")),
    ]
    with pytest.raises(UsageError, match="swept twice"):
        combinations([parse_sweep("A=1"), parse_sweep("A=2")])


def _write(run: Path, lines: list[str]) -> Path:
    run.mkdir(parents=True)
    (run / "rank0.jsonl").write_text("".join(lines))
    return run


def test_analyse_run_ok_oom_failed(tmp_path: Path) -> None:
    start = encode(RunStart(run_id="x", rank=0, world_size=1, time=0.0, device="cuda:0"))
    steps = [
        encode(
            Step(
                step=i,
                time=float(i),
                wall_ms=w,
                regions=regs,
                samples=2,
                memory={"peak": p, "reserved": p + 5},
            )
        )
        for i, w, regs, p in [
            (1, 900.0, {}, 50),
            (2, 100.0, {}, 70),
            (3, 120.0, {}, 60),
            (4, 400.0, {"validation": (290.0, 1)}, 65),
        ]
    ]
    ok = analyse_run(
        _write(
            tmp_path / "ok", [start, *steps, encode(RunEnd(time=5.0, status="completed", steps=4))]
        ),
        1,
    )
    assert ok["status"] == "ok" and ok["steps_measured"] == 3
    assert ok["step_ms"] == 110.0  # median of 100, 120 and 400 - 290 (validation excluded)
    assert ok["mem_peak"] == 70 and ok["mem_reserved"] == 75 and ok["samples_per_step"] == 2
    oom_end = encode(
        RunEnd(
            time=3.0,
            status="failed",
            steps=2,
            error=RunError(
                "OutOfMemoryError", "CUDA out of memory. Tried to allocate 20.00 MiB\nmore"
            ),
        )
    )
    oom = analyse_run(_write(tmp_path / "oom", [start, *steps[:2], oom_end]), 1)
    assert oom["status"] == "oom" and oom["mem_peak"] == 70
    rt = encode(
        RunEnd(
            time=3.0,
            status="failed",
            steps=1,
            error=RunError("RuntimeError", "CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"),
        )
    )
    assert analyse_run(_write(tmp_path / "oom2", [start, rt]), 1)["status"] == "oom"
    bad = encode(
        RunEnd(time=3.0, status="failed", steps=1, error=RunError("ValueError", "bad shape"))
    )
    failed = analyse_run(_write(tmp_path / "failed", [start, steps[0], bad]), 1)
    assert failed["status"] == "failed" and failed["message"] == "ValueError: bad shape"
    short = analyse_run(_write(tmp_path / "short", [start, steps[0]]), 1)
    assert short["status"] == "failed" and "warm-up" in short["message"]


def test_bench_with_a_fake_trainer(tmp_path: Path, fake) -> None:  # type: ignore[no-untyped-def]
    combos = combinations(
        [parse_sweep("TRAIN.OPTIM.TYPE=adamw,adamw8bit")],
        [(), (("TRAIN.BATCH_SIZE", "3"),), (("TRAIN.BATCH_SIZE", "4"),)],
    )
    out, logs = tmp_path / "out", tmp_path / "logs"
    report = run_bench(
        TINY,
        combos,
        steps=3,
        warmup=1,
        log_dir=str(logs),
        out=str(out),
        command=fake,
        extra=["TRAIN.BATCH_SIZE=1"],
        echo=lambda s: None,
    )
    rows = report.results
    assert [r.outcome.split(":")[0] for r in rows] == ["ok", "ok", "OOM", "OOM", "failed", "failed"]
    base, eight = rows[0], rows[1]
    assert base.step_ratio == 1.0 and eight.step_ratio is not None and eight.step_ratio < 0.9
    assert eight.throughput_ratio == pytest.approx(1 / eight.step_ratio)
    assert base.mem_peak == 10**9 and rows[2].mem_peak == 3 * 10**9  # OOM rows keep their peak
    assert base.samples_per_step == 1 and base.steps_per_epoch == 64  # DATA.SYNTHETIC.TRAIN_CLIPS
    assert base.epoch_s == pytest.approx(64 * base.step_ms / 1000)
    assert base.total_s == pytest.approx(base.epoch_s * 100)  # TRAIN.EPOCHS of the tiny config
    assert base.step_ms is not None and base.step_ms < 40  # the final validation is excluded
    assert "something unrelated broke" in rows[4].message
    for r in rows[:4]:  # every row that started is a normal run the monitor can open
        assert r.run_dir and Path(r.run_dir, "rank0.jsonl").exists()
        assert r.run_id and "-vrt_spike_tiny-bench" in r.run_id
    md = markdown(report)
    assert sum(line.startswith("|") for line in md.splitlines()) == 2 + len(rows)
    assert "| OOM |" in md and "1.00× time, 1.00× throughput" in md
    md_path, js_path = write_outputs(report)  # type: ignore[misc]
    d = json.loads(Path(js_path).read_text())
    assert [r["outcome"] for r in d["rows"]][:4] == ["ok", "ok", "OOM", "OOM"]
    assert d["rows"][1]["settings"] == {"TRAIN.OPTIM.TYPE": "adamw8bit"}
    assert Path(md_path).read_text() == md
    assert json.dumps(report_dict(report), allow_nan=False)
    # each row's process log is kept, with the settings the bench adds first
    assert len(list((out / "logs").iterdir())) == len(rows)
    assert BENCH_SETTINGS[0].startswith("TRAIN.VAL.EVERY")


def test_bad_sweep_key_fails_before_running(tmp_path: Path, fake) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match=r"TRAIN\.BATCH_SIZ"):
        run_bench(
            TINY,
            [(("TRAIN.BATCH_SIZ", "2"),)],
            log_dir=str(tmp_path / "logs"),
            command=fake,
            echo=lambda s: None,
        )
    assert not (tmp_path / "logs").exists()


def test_a_row_predicted_not_to_fit_leaves_no_checkpoint_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from trainer import bench

    def never(*a: object) -> list[str]:
        raise AssertionError("a row predicted not to fit was started")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(bench, "predict_peak", lambda cfg, sets: (2, 1, ""))
    rep = run_bench(TINY, [()], log_dir=str(tmp_path / "logs"), command=never, echo=lambda s: None)
    assert rep.results[0].status == "skipped"
    assert not list(tmp_path.glob("stagewatch-bench-ckpt-*"))


def test_cli_errors() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-m", "trainer", "bench", "--cfg", TINY, "--sweep", "TRAIN.BATCH_SIZE"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert (
        r.returncode == 2
        and "expected KEY.PATH=v1,v2" in r.stderr
        and len(r.stderr.splitlines()) == 1
    )
    r = subprocess.run(
        [sys.executable, "-m", "trainer", "bench", "--cfg", "nope.yaml", "--sweep", "A=1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 2 and "not found" in r.stderr


# Shrinks the tiny model further so four processes fit in a test (the model code is the same).
SMALL = [
    "DATA.CROP_SIZE=16",
    "DATA.SYNTHETIC.HEIGHT=16",
    "DATA.SYNTHETIC.WIDTH=16",
    "DATA.SYNTHETIC.TRAIN_CLIPS=8",
    "DATA.SYNTHETIC.VAL_CLIPS=1",
    "DATA.CLIP_LEN=2",
    "MODEL.USE_SPIKE=false",
    "MODEL.VRT.DEPTHS=[1,1,1,1,1,1,1,1,1]",
    "MODEL.VRT.EMBED_DIMS=[8,8,8,8,8,8,8,8,8]",
    "MODEL.VRT.NUM_HEADS=[1,1,1,1,1,1,1,1,1]",
]


@pytest.mark.slow
def test_real_bench_tiny_2x2_on_cpu(tmp_path: Path) -> None:
    out, logs = tmp_path / "out", tmp_path / "logs"
    cmd = [
        sys.executable,
        "-m",
        "trainer",
        "bench",
        "--cfg",
        TINY,
        "--sweep",
        "TRAIN.OPTIM.TYPE=adamw,adamw8bit",
        "--sweep",
        "TRAIN.BATCH_SIZE=1,2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--out",
        str(out),
        "--log-dir",
        str(logs),
    ]
    for s in SMALL:
        cmd += ["--set", s]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert [r["outcome"] for r in rows] == ["ok"] * 4, r.stdout
    assert [tuple(r["settings"].values()) for r in rows] == [
        ("adamw", "1"),
        ("adamw", "2"),
        ("adamw8bit", "1"),
        ("adamw8bit", "2"),
    ]
    for row in rows:
        assert row["step_ms"] > 0 and row["mem_peak"] > 0 and row["samples_per_s"] > 0
        assert row["steps_measured"] == 1
        assert row["steps_per_epoch"] == 8 // int(row["settings"]["TRAIN.BATCH_SIZE"])
        assert Path(row["run_dir"], "rank0.jsonl").exists()
    assert rows[0]["step_ratio"] == 1.0
    assert "| 4 | TRAIN.OPTIM.TYPE=adamw8bit TRAIN.BATCH_SIZE=2 |" in r.stdout
    # a bench row is a normal run: the monitor's summary reads it
    s = subprocess.run(
        [sys.executable, "-m", "tui", "summary", rows[3]["run_dir"], "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert json.loads(s.stdout)["steps"] == 1


def test_gpu_whatif_script_dry_run(tmp_path: Path, fake, capsys) -> None:  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gpu_whatif_check", ROOT / "benchmarks" / "gpu_whatif_check.py"
    )
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    cases = mod.cumulative_cases()
    assert (
        dict(cases[0])["TRAIN.OPTIM.TYPE"] == "adamw"
        and dict(cases[1])["TRAIN.OPTIM.TYPE"] == "adamw8bit"
    )
    assert dict(cases[3]) == {
        "TRAIN.OPTIM.TYPE": "adamw8bit",
        "TRAIN.BATCH_SIZE": "3",
        "MODEL.VRT.USE_CHECKPOINT_ATTN": "true",
        "MODEL.VRT.USE_CHECKPOINT_FFN": "true",
    }
    assert dict(cases[4])["MODEL.VRT.USE_CHECKPOINT_FFN"] == "false"
    rc = mod.main(
        ["--dry-run", "--out", str(tmp_path / "out"), "--log-dir", str(tmp_path / "logs")],
        command=fake,
    )
    out = capsys.readouterr().out
    assert rc == 0 and "DRY RUN" in out
    table = [line for line in out.splitlines() if line.startswith("| ") and " GB |" in line]
    assert [line.split(" | ")[0] for line in table] == [
        "| baseline",
        "| + 8-bit AdamW",
        "| + batch 2",
        "| + batch 3",
        "| + no checkpointing",
    ]
    assert (
        "| 32 GB |" in table[0] and "| 88.5 h |" in table[0] and "OOM" in table[3]
    )  # fake: batch 3 OOMs
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["world_size"] == 3


def test_a_typo_in_a_sweep_is_named_once_by_its_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 20: the error read "TRAIN.BATCH_SIZ=1: --set TRAIN.BATCH_SIZ=1: ..." (a --set the
    # user never typed, inside a row prefix repeated per combination)
    from trainer.cli import main

    argv = ["bench", "--cfg", TINY, "--log-dir", str(tmp_path), "--no-predict"]
    sweeps = ["--sweep", "TRAIN.BATCH_SIZ=1,2", "--sweep", "TRAIN.OPTIM.TYPE=adamw,adamw8bit"]
    assert main([*argv, *sweeps]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--sweep TRAIN.BATCH_SIZ=1,2: TRAIN.BATCH_SIZ: unknown key" in err
    assert err.count("--sweep") == 1 and "--set" not in err and "BATCH_SIZE" in err
    assert main([*argv, "--case", "TRAIN.BATCH_SIZE=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--case 'TRAIN.BATCH_SIZE=0': TRAIN.BATCH_SIZE:" in err and "--set" not in err
    assert not any(tmp_path.iterdir())  # nothing ran
