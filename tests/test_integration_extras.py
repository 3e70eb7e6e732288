"""The [lightning] and [hf] extras keep the torch already installed (torch is installed
first, for the machine's build; an extra must never pull another one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_framework_extras_never_replace_torch(tmp_path: Path) -> None:
    import torch

    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet",
         "--disable-pip-version-check", "--report", str(report), ".[lightning,hf]"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    planned = {i["metadata"]["name"].lower(): i["metadata"]["version"]
               for i in json.loads(report.read_text())["install"]}  # fmt: skip
    assert "torch" not in planned, (torch.__version__, planned)
