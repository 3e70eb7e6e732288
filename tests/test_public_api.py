"""The library's public API, and the old import path kept for one release."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import stagewatch

PUBLIC = (
    "TimingLogger",
    "timed",
    "log_timing",
    "set_global_timing_logger",
    "get_global_timing_logger",
    "TimingWarning",
)


def test_the_public_names_come_from_stagewatch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for name in PUBLIC:
        assert name in stagewatch.__all__ and getattr(stagewatch, name) is not None
    log = stagewatch.TimingLogger(tmp_path, enable_console=False, run_name="api")
    stagewatch.set_global_timing_logger(log)
    try:
        assert stagewatch.get_global_timing_logger() is log
        with stagewatch.timed("forward"):
            stagewatch.log_timing("forward/part", 1.5)
        log.step(samples=1)
    finally:
        stagewatch.set_global_timing_logger(None)
        log.close()
    assert (tmp_path / log.run_id / "rank0.jsonl").read_text().count('"kind":"step"') == 1


def test_trainer_timing_still_works_for_this_release_and_says_it_moved() -> None:
    sys.modules.pop("trainer.timing", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("trainer.timing")
    assert any(
        issubclass(w.category, DeprecationWarning) and "stagewatch" in str(w.message)
        for w in caught
    )
    for name in PUBLIC:
        assert getattr(old, name) is getattr(stagewatch, name)


def test_importing_the_library_imports_neither_torch_nor_textual() -> None:
    code = (
        "import sys, stagewatch, stagewatch.records, stagewatch.runs, stagewatch.cli, "
        "stagewatch.gpus\n"
        "assert 'torch' not in sys.modules and 'textual' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'textual'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_a_warning_points_at_the_users_line_wherever_the_library_found_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log = stagewatch.TimingLogger(tmp_path, start_step=-5, enable_console=False)
        log.log("x", "abc")
        log.step(scalars={"a": "b"})
        log.close()
    found = [w for w in caught if issubclass(w.category, stagewatch.TimingWarning)]
    assert len(found) == 3
    assert {w.filename for w in found} == {__file__}
