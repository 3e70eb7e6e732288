"""``pip install stagewatch`` (no extras) gives the library and the monitor without torch.

A person watching a cluster's logs from a laptop must not need several GB of CUDA torch.
This installs the project, as a user would, into a new virtual environment that has never
seen torch, then runs ``tui summary`` and ``tui export`` on a run there. It needs the
package index (the monitor's own dependencies are downloaded); under CI it must pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tui.testing import write_run

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _tracked_tree(dest: Path) -> None:
    """A copy of the project's tracked files (what a clone holds): no build outputs."""
    try:
        names = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(
            ROOT,
            dest,
            ignore=shutil.ignore_patterns(".venv", "runs", "build", "*.egg-info", ".git"),
        )
        return
    for n in filter(None, names):
        src = ROOT / os.fsdecode(n)
        if src.is_file():
            (dest / os.fsdecode(n)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(n))


def _run(cmd: list[str | Path], **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=900, **kw
    )


def test_the_monitor_installs_and_runs_without_torch(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tracked_tree(src)
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    assert _run([base, "-m", "venv", venv]).returncode == 0
    py = venv / "bin" / "python"
    inst = _run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", src])
    if inst.returncode != 0:
        offline = "No matching distribution" in inst.stderr or "Network" in inst.stderr
        if offline and not os.environ.get("CI"):
            pytest.skip(f"no package index here: {inst.stderr.strip().splitlines()[-1]}")
        pytest.fail(f"pip install . failed:\n{inst.stderr[-3000:]}")

    listed = _run([py, "-m", "pip", "list", "--format=freeze"]).stdout.lower()
    names = {line.split("==")[0] for line in listed.splitlines()}
    assert {"stagewatch", "textual", "watchdog", "msgspec"} <= names, listed
    assert not names & {"torch", "bitsandbytes", "pyyaml", "nvidia-cuda-runtime-cu12"}, listed
    probe = _run([py, "-c", "import torch"])
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr

    run = write_run(tmp_path / "logs", steps=12, ranks=2)
    summary = _run([venv / "bin" / "tui", "summary", run, "--json"])
    assert summary.returncode == 0, summary.stderr
    assert '"regions"' in summary.stdout and "backward" in summary.stdout
    text = _run([venv / "bin" / "tui", "summary", run])
    assert text.returncode == 0 and "forward" in text.stdout, text.stderr
    for fmt, out in (("csv", tmp_path / "steps.csv"), ("chrome", tmp_path / "trace.json")):
        exp = _run([venv / "bin" / "tui", "export", run, "--format", fmt, "-o", out])
        assert exp.returncode == 0, exp.stderr
        assert out.stat().st_size > 0
    assert len((tmp_path / "steps.csv").read_text().splitlines()) == 1 + 12 * 2

    # the library's public API too: a plain CPU loop times itself, no torch anywhere
    loop = (
        "import sys\n"
        "from stagewatch import TimingLogger, set_global_timing_logger, timed\n"
        "log = TimingLogger(sys.argv[1], enable_console=False, run_name='laptop')\n"
        "set_global_timing_logger(log)\n"
        "for _ in range(3):\n"
        "    with timed('forward'):\n"
        "        sum(range(1000))\n"
        "    log.step(samples=1)\n"
        "log.close()\n"
        "assert 'torch' not in sys.modules\n"
    )
    lib = _run([py, "-c", loop, tmp_path / "own"], cwd=tmp_path)
    assert lib.returncode == 0, lib.stderr
    # the trainer's command says what it needs instead of a traceback
    tr = _run([venv / "bin" / "trainer", "info", "--cfg", "x.yaml"], cwd=tmp_path)
    assert tr.returncode == 2 and "stagewatch[train]" in tr.stderr, tr.stderr
