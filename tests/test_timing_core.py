"""Timing core on CPU: regions, nesting, accumulation, shares, summary, switches, memory."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest

import stagewatch.timing.regions as regions
from stagewatch import records as R
from stagewatch.errors import ConfigError
from stagewatch.timing import (
    NOOP,
    TimingLogger,
    get_global_timing_logger,
    log_timing,
    set_global_timing_logger,
    timed,
)
from stagewatch.timing.jsonl import TimingWarning
from stagewatch.timing.sinks import ConsoleSink, JsonlSink

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """Stands in for perf_counter: seconds, advanced by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance_ms(self, ms: float) -> None:
        self.t += ms / 1000.0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(regions, "_perf", c)
    return c


def make(tmp_path: Path, **kw) -> TimingLogger:
    kw.setdefault("enable_console", False)
    kw.setdefault("collect_memory", False)
    kw.setdefault("handle_sigterm", False)
    return TimingLogger(tmp_path, **kw)


def read_records(lg: TimingLogger) -> list[R.Record]:
    assert lg.run_dir is not None
    path = Path(lg.run_dir) / R.rank_file_name(lg.rank)
    return [R.decode(line) for line in path.read_text().splitlines()]


def steps_of(lg: TimingLogger) -> list[R.Step]:
    return [r for r in read_records(lg) if isinstance(r, R.Step)]


# --------------------------------------------------------------------------- regions


def test_nesting_accumulation_and_absolute_names(tmp_path, clock):
    lg = make(tmp_path)
    set_global_timing_logger(lg)
    with timed("forward"):
        clock.advance_ms(1)
        with timed("vrt"):
            for _ in range(3):  # a loop over blocks: summed, with a count
                with timed("block"):
                    clock.advance_ms(2)
        with timed("/loss"):  # absolute: not forward/loss
            clock.advance_ms(4)
    clock.advance_ms(3)
    log_timing("/allreduce", 5.0)  # leading slash tolerated, absolute anyway
    log_timing("forward/vrt/extra", 0.5)
    lg.step()
    lg.close()
    (s,) = steps_of(lg)
    assert s.step == 1
    assert s.wall_ms == pytest.approx(14.0)
    assert s.regions["forward"] == (pytest.approx(11.0), 1)
    assert s.regions["forward/vrt"] == (pytest.approx(6.0), 1)
    assert s.regions["forward/vrt/block"] == (pytest.approx(6.0), 3)
    assert s.regions["forward/vrt/extra"] == (pytest.approx(0.5), 1)
    assert s.regions["loss"] == (pytest.approx(4.0), 1)
    assert s.regions["allreduce"] == (pytest.approx(5.0), 1)
    assert "forward/loss" not in s.regions


def test_region_stack_survives_exceptions(tmp_path, clock):
    lg = make(tmp_path)
    set_global_timing_logger(lg)
    with pytest.raises(ValueError), timed("outer"):
        clock.advance_ms(1)
        raise ValueError("boom")
    with timed("after"):  # not outer/after: the stack was unwound
        clock.advance_ms(1)
    lg.step()
    lg.close()
    (s,) = steps_of(lg)
    assert set(s.regions) == {"outer", "after"}


def test_interleaved_regions_do_not_corrupt_nesting(tmp_path, clock):
    """A generator holding a region open across yields closes it out of order."""
    lg = make(tmp_path)
    set_global_timing_logger(lg)

    def gen():
        with timed("g"):
            yield
            clock.advance_ms(1)
            yield

    it = gen()
    next(it)  # "g" is open
    with timed("b"):  # opened inside "g": g/b
        next(it)
        clock.advance_ms(2)
        next(it, None)  # "g" closes while "b" is still open
    with timed("c"):  # both closed: top level again
        clock.advance_ms(4)
    lg.step()
    lg.close()
    (s,) = steps_of(lg)
    assert s.regions["g"] == (pytest.approx(3.0), 1)
    assert s.regions["g/b"] == (pytest.approx(3.0), 1)
    assert s.regions["c"] == (pytest.approx(4.0), 1)


def test_decorator_binds_at_call_time(tmp_path, clock):
    @timed("data")  # decorated before any logger exists
    def load(x: int) -> int:
        clock.advance_ms(7)
        return x * 2

    assert load(1) == 2  # no logger: plain call
    assert load.__name__ == "load"
    lg = make(tmp_path)
    set_global_timing_logger(lg)

    @lg.region("bound")
    def work() -> None:
        clock.advance_ms(1)

    with timed("forward"):
        assert load(2) == 4  # nested at call time: forward/data
    work()
    lg.step()
    lg.close()
    (s,) = steps_of(lg)
    assert s.regions["forward/data"] == (pytest.approx(7.0), 1)
    assert s.regions["bound"] == (pytest.approx(1.0), 1)


def test_steps_split_regions_and_numbering(tmp_path, clock):
    lg = make(tmp_path, start_step=100, samples_per_step=4)
    set_global_timing_logger(lg)
    with pytest.warns(TimingWarning, match="not a number"):
        for i in range(3):
            with timed("forward"):
                clock.advance_ms(10 + i)
            lg.step(epoch=2, scalars={"loss": 0.5 - i * 0.1, "bad": "x"})
    lg.log_eval(103, {"psnr": 28.0, "nan": float("nan")})
    lg.close()
    recs = read_records(lg)
    assert isinstance(recs[0], R.RunStart) and recs[0].start_step == 100
    assert recs[0].pid == os.getpid() and recs[0].host and recs[0].samples_per_step == 4
    steps = [r for r in recs if isinstance(r, R.Step)]
    assert [s.step for s in steps] == [101, 102, 103]
    assert [s.regions["forward"][0] for s in steps] == pytest.approx([10, 11, 12])
    assert all(s.samples == 4 and s.epoch == 2 for s in steps)
    assert steps[0].scalars == {"loss": 0.5}  # non-numbers dropped, never raised
    ev = [r for r in recs if isinstance(r, R.Eval)]
    assert ev[0].metrics == {"psnr": 28.0}  # NaN written as null, read back as absent
    end = recs[-1]
    assert isinstance(end, R.RunEnd) and end.status == "completed" and end.steps == 103


def test_begin_end_from_other_threads(tmp_path):
    lg = make(tmp_path)
    set_global_timing_logger(lg)
    n_threads, n = 4, 500

    def hook_work() -> None:
        for _ in range(n):
            h = lg.begin("backward/vrt/stage8")
            lg.end(h)

    threads = [threading.Thread(target=hook_work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for _ in range(n):
        with timed("forward"):
            pass
    for t in threads:
        t.join()
    lg.step()
    lg.close()
    (s,) = steps_of(lg)
    assert s.regions["backward/vrt/stage8"][1] == n_threads * n
    assert s.regions["forward"][1] == n


# --------------------------------------------------------------------------- shares


def test_shares_against_hand_computed_example(tmp_path, clock):
    """The original logger divided by the sum of top-level names: logging "Forward total"
    and "VRT" both at top level gave Total = 280 + 150 + 300 + 20 = 750 ms and forward
    37.3%. The step really took 620 ms: forward is 45.2%, VRT (inside forward) 24.2%."""
    lg = make(tmp_path)
    set_global_timing_logger(lg)
    log_timing("forward", 280.0)
    log_timing("forward/vrt", 150.0)
    log_timing("forward/vrt/stage1", 25.0)
    log_timing("backward", 300.0)
    log_timing("optimizer", 20.0)
    clock.advance_ms(620.0)
    lg.step()
    lg.close()
    (s,) = steps_of(lg)
    assert s.wall_ms == pytest.approx(620.0)
    share = {k: v[0] / s.wall_ms for k, v in s.regions.items()}
    assert share["forward"] == pytest.approx(0.4516, abs=1e-4)
    assert share["forward/vrt"] == pytest.approx(0.2419, abs=1e-4)
    assert R.unaccounted_ms(s.wall_ms, s.regions) == pytest.approx(20.0)
    original_total = 280 + 150 + 300 + 20
    assert original_total == 750 and 280 / original_total == pytest.approx(0.3733, abs=1e-4)

    text = (Path(lg.run_dir) / R.text_log_name(0)).read_text()
    lines = text.splitlines()
    assert lines[:3] == ["=" * 80, "Step 1", "=" * 80]
    body = lines[3:]
    assert body[0].startswith("backward ") and "300.00ms ( 48.4%)" in body[0]
    assert body[1].startswith("forward ") and "280.00ms ( 45.2%)" in body[1]
    assert body[2].startswith("  - vrt ") and "150.00ms ( 24.2%)" in body[2]
    assert body[3].startswith("    - stage1 ") and "25.00ms (  4.0%)" in body[3]
    assert body[4].startswith("optimizer ") and "20.00ms (  3.2%)" in body[4]
    assert body[5].startswith("Unaccounted ") and "20.00ms (  3.2%)" in body[5]
    assert body[6] == "Total" + "-" * 36 + ":    620.00ms"
    # every line puts its colon in the same column
    assert len({ln.index(":") for ln in body}) == 1


def test_text_log_counts_avg_and_untimed_parents(tmp_path, clock):
    lg = make(tmp_path)
    set_global_timing_logger(lg)
    for ms in (10.0, 30.0):
        for _ in range(2):
            log_timing("net/block", ms / 2)
        clock.advance_ms(40.0)
        lg.step()
    lg.close()
    blocks = (Path(lg.run_dir) / R.text_log_name(0)).read_text().split("=" * 80 + "\nStep ")
    last = blocks[-1].splitlines()
    assert last[0] == "2"
    assert last[2].startswith("net ") and "not timed itself" in last[2]
    assert "30.00ms ( 75.0%) [avg:     20.00ms] x2" in last[3]
    # net itself was not timed: its child is not counted as covered time
    assert "40.00ms (100.0%)" in last[4] and last[4].startswith("Unaccounted")


def test_get_summary_and_print_summary(tmp_path, clock, capsys):
    lg = make(tmp_path)
    set_global_timing_logger(lg)
    for ms in (10.0, 20.0, 60.0):
        with timed("forward"):
            clock.advance_ms(ms)
        with timed("optimizer"):
            clock.advance_ms(1.0)
            with timed("step"):
                pass
        lg.step()
    summ = lg.get_summary()
    f = summ["forward"]
    assert (f["avg"], f["min"], f["max"], f["count"]) == pytest.approx((30.0, 10.0, 60.0, 3))
    assert summ["optimizer"]["avg"] == pytest.approx(1.0)
    assert summ["optimizer/step"]["calls"] == 3
    st = lg.get_step_summary()
    assert st["wall"]["avg"] == pytest.approx(31.0)
    assert st["unaccounted"]["total"] == pytest.approx(0.0)
    lg.print_summary()
    out = capsys.readouterr().out
    assert "Timing summary: 3 steps, avg step 31.00ms" in out
    fwd = next(ln for ln in out.splitlines() if ln.startswith("forward"))
    assert "30.00ms" in fwd and "10.00ms" in fwd and "60.00ms" in fwd and "96.8%" in fwd
    assert any(ln.startswith("  - step") for ln in out.splitlines())
    lg.close()


def test_brief_snippet_runs_unchanged(tmp_path, capsys):
    """The BRIEF's usage snippet, verbatim apart from the import line (and the two
    placeholders it leaves open: the log folder and a measured ms value)."""
    snippet = """
logger = TimingLogger(log_dir=LOG_DIR, enable_console=True, enable_file=True,
                      console_update_interval=10, file_flush_interval=50)
set_global_timing_logger(logger)
log_timing("Module", ms); log_timing("Module/Sub", ms)
logger.step()            # end of every training step
logger.print_summary(); logger.close()
"""
    code = "from stagewatch.timing import TimingLogger, set_global_timing_logger, log_timing\n"
    env = {"LOG_DIR": str(tmp_path), "ms": 12.5}
    exec(code + snippet, env)
    logger = env["logger"]
    assert get_global_timing_logger() is logger
    (s,) = steps_of(logger)
    assert s.regions == {"Module": (12.5, 1), "Module/Sub": (12.5, 1)}
    assert isinstance(read_records(logger)[-1], R.RunEnd)
    assert "Module" in capsys.readouterr().out
    assert (Path(logger.run_dir) / "timing_rank0.log").exists()


# --------------------------------------------------------------------------- switches


def test_from_config_maps_log_keys(tmp_path):
    lg = TimingLogger.from_config(
        {
            "ENABLE_TIMING_LOG": True,
            "TIMING_CONSOLE": False,
            "TIMING_FILE": False,
            "TIMING_JSONL": True,
            "TIMING_CONSOLE_INTERVAL": 3,
            "TIMING_FILE_INTERVAL": 7,
            "SOMETHING_ELSE": "ignored",
        },
        log_dir=tmp_path,
        handle_sigterm=False,
    )
    assert lg.enabled and lg.console_update_interval == 3 and lg.file_flush_interval == 7
    assert [type(s) for s in lg._sinks] == [JsonlSink]  # no console panel, no text log
    lg.close()
    off = TimingLogger.from_config({"ENABLE_TIMING_LOG": False}, log_dir=tmp_path)
    assert not off.enabled and off.run_dir is None
    # keyword arguments win over the section
    lg2 = TimingLogger.from_config(
        {"TIMING_FILE_INTERVAL": 7},
        log_dir=tmp_path,
        file_flush_interval=2,
        enable_console=False,
        handle_sigterm=False,
    )
    assert lg2.file_flush_interval == 2
    lg2.close()


@pytest.mark.parametrize(
    "section, key",
    [
        ({"TIMING_CONSOLE_INTERVAL": 0}, "LOG.TIMING_CONSOLE_INTERVAL"),
        ({"TIMING_FILE_INTERVAL": "50"}, "LOG.TIMING_FILE_INTERVAL"),
        ({"TIMING_FILE_INTERVAL": True}, "LOG.TIMING_FILE_INTERVAL"),
        ({"TIMING_CONSOLE": "yes"}, "LOG.TIMING_CONSOLE"),
        ({"ENABLE_TIMING_LOG": 1}, "LOG.ENABLE_TIMING_LOG"),
    ],
)
def test_from_config_rejects_bad_values(tmp_path, section, key):
    with pytest.raises(ConfigError) as e:
        TimingLogger.from_config(section, config_file="cfg.yaml", log_dir=tmp_path)
    assert e.value.key == key
    assert str(e.value).startswith(f"cfg.yaml: {key}: expected")
    assert not any(tmp_path.iterdir())


def test_disabled_logger_is_a_noop(tmp_path):
    lg = TimingLogger(tmp_path, enabled=False)
    set_global_timing_logger(lg)
    assert timed("x") is timed("x")  # shared no-op object
    with timed("x"), lg.region("y"):
        log_timing("z", 1.0)
    h = lg.begin("a")
    lg.end(h)
    lg.step(scalars={"loss": 1.0})
    lg.log_eval(1, {"psnr": 1.0})
    lg.flush()
    lg.print_summary()
    lg.close()
    assert lg.run_dir is None and lg.get_summary() == {}
    assert not any(tmp_path.iterdir())


def test_no_logger_calls_are_noops():
    set_global_timing_logger(None)
    assert timed("a") is timed("a")
    with timed("a") as r:
        assert r is timed("a")
    log_timing("a", 3.0)
    assert NOOP.__enter__() is NOOP


def test_env_switch_disables_timing(tmp_path, monkeypatch):
    monkeypatch.setenv("STAGEWATCH_TIMING", "0")
    lg = TimingLogger(tmp_path)
    assert not lg.enabled
    set_global_timing_logger(lg)
    assert timed("a") is timed("a")
    lg.step()
    lg.close()
    assert not any(tmp_path.iterdir())


def test_env_switch_at_import_returns_plain_functions(tmp_path):
    code = (
        "from stagewatch.timing import timed\n"
        "def f(): return 1\n"
        "g = timed('data')(f)\n"
        "assert g is f, 'decorator must return the function itself'\n"
        "print('ok')\n"
    )
    env = dict(os.environ, STAGEWATCH_TIMING="off")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_import_and_cpu_run_never_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from stagewatch.timing import TimingLogger, timed, set_global_timing_logger\n"
        f"lg = TimingLogger({str(tmp_path)!r}, enable_console=False)\n"
        "set_global_timing_logger(lg)\n"
        "with timed('a'): pass\n"
        "lg.step(); lg.close()\n"
        "import stagewatch.records\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'textual' not in sys.modules\n"
        "print(open(lg.run_dir + '/rank0.jsonl').readline())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    start = json.loads(out.stdout)
    assert start["torch_version"] is None and start["device"] == "cpu"


def test_run_id_sources(tmp_path, monkeypatch):
    lg = make(tmp_path, run_id="my/../run id")
    assert lg.run_id == "my_.._run_id" and Path(lg.run_dir).parent == tmp_path
    lg.close()
    monkeypatch.setenv("STAGEWATCH_RUN_ID", "shared-123")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    lg = make(tmp_path)
    assert (lg.run_id, lg.rank, lg.world_size) == ("shared-123", 2, 3)
    assert not any(isinstance(s, ConsoleSink) for s in lg._sinks)  # the panel is rank 0's only
    lg.close()
    start = read_records(lg)[0]
    assert isinstance(start, R.RunStart) and (start.rank, start.world_size) == (2, 3)
    assert (tmp_path / "shared-123" / "rank2.jsonl").exists()


def test_run_id_broadcast_by_torch_distributed(tmp_path, monkeypatch):
    """With an initialised process group, rank 0's id reaches every rank (fake dist)."""
    import types

    calls = []
    fake = types.ModuleType("torch.distributed")
    fake.is_available = lambda: True
    fake.is_initialized = lambda: True
    fake.get_rank = lambda: 1
    fake.get_world_size = lambda: 3

    def broadcast_object_list(box, src):
        calls.append((list(box), src))
        box[0] = "20261126-000000-from_rank0-abcd"

    fake.broadcast_object_list = broadcast_object_list
    monkeypatch.setitem(sys.modules, "torch.distributed", fake)
    monkeypatch.delenv("STAGEWATCH_RUN_ID", raising=False)
    monkeypatch.setenv("STAGEWATCH_CLOCK_SYNC", "0")  # the fake has no collectives to time
    lg = make(tmp_path)
    assert (lg.rank, lg.world_size, lg.run_id) == (1, 3, "20261126-000000-from_rank0-abcd")
    assert len(calls) == 1 and calls[0][1] == 0
    lg.close()


def test_several_ranks_without_a_shared_id_warn(tmp_path, monkeypatch):
    monkeypatch.delenv("STAGEWATCH_RUN_ID", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delitem(sys.modules, "torch.distributed", raising=False)
    with pytest.warns(RuntimeWarning, match="separate run folders"):
        lg = make(tmp_path)
    lg.close()


def test_memory_recorded_and_override(tmp_path):
    lg = TimingLogger(tmp_path, enable_console=False, handle_sigterm=False)
    lg.step()
    with pytest.warns(TimingWarning, match="not a byte count"):
        lg.step(memory={"allocated": 5, "reserved": 7.0, "bad": "x"})
    lg.close()
    s1, s2 = steps_of(lg)
    if os.path.exists("/proc/self/statm"):
        assert s1.memory is not None and s1.memory["rss"] > 1 << 20
    assert s2.memory == {"allocated": 5, "reserved": 7}
    assert lg.peak_memory["allocated"] == 5


def test_close_status_and_context_manager(tmp_path):
    with pytest.raises(RuntimeError), make(tmp_path) as lg:
        lg.step()
        raise RuntimeError("out of memory")
    end = read_records(lg)[-1]
    assert isinstance(end, R.RunEnd)
    assert (end.status, end.error_type, end.error_message) == (
        "failed",
        "RuntimeError",
        "out of memory",
    )
    lg.close("completed")  # idempotent: nothing more written
    assert read_records(lg)[-1] == end
    lg2 = make(tmp_path)
    with pytest.warns(RuntimeWarning):
        lg2.close("weird")
    assert read_records(lg2)[-1].status == "failed"


def test_log_timing_rejects_non_durations(tmp_path):
    lg = make(tmp_path)
    set_global_timing_logger(lg)
    with pytest.warns(RuntimeWarning, match="not"):
        log_timing("a", "fast")
        log_timing("a", float("nan"))
        log_timing("a", -1.0)
    log_timing("a", 2)
    lg.step()
    lg.close()
    (s,) = steps_of(lg)
    assert s.regions == {"a": (2.0, 1)}


def test_memory_is_constant_in_the_number_of_steps(tmp_path):
    lg = make(tmp_path, enable_file=True, file_flush_interval=50)
    set_global_timing_logger(lg)

    def run(n: int) -> None:
        for i in range(n):
            with timed("forward"):
                with timed("vrt"):
                    pass
                with timed("loss"):
                    pass
            log_timing("data", 0.1)
            lg.step(scalars={"loss": float(i)})

    run(100)  # warm caches and stats entries
    tracemalloc.start()
    try:
        run(300)
        lg.flush()
        gc.collect()
        a = tracemalloc.get_traced_memory()[0]
        run(600)
        lg.flush()
        gc.collect()
        b = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    lg.close()
    # a history list would keep >= 8 bytes per value: 5 regions x 600 steps = 24 kB
    assert b - a < 8 * 1024, f"memory grew by {b - a} bytes over 600 steps"
    assert len(steps_of(lg)) == 1000


def test_demo_command_writes_a_valid_run(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "trainer",
        "demo",
        "--steps",
        "4",
        "--size",
        "8",
        "--log-dir",
        str(tmp_path),
        "--no-console",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    (run,) = list(tmp_path.iterdir())
    recs = [R.decode(x) for x in (run / "rank0.jsonl").read_text().splitlines()]
    steps = [r for r in recs if isinstance(r, R.Step)]
    assert [s.step for s in steps] == [1, 2, 3, 4]
    assert "forward/stage8/block" in steps[0].regions and recs[-1].status == "completed"
    assert "Timing summary: 4 steps" in out.stdout
    bad = subprocess.run([*cmd[:5], "0"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "--steps must be at least 1" in bad.stderr
