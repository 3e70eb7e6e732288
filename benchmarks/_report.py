"""Write one benchmark's section of ``docs/benchmarks.md``, leaving the others alone.

Each benchmark owns the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nMeasured figures only; each section says its machine and date.\n"


def machine() -> str:
    """One line describing this machine (CPU model, cores, Python)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def today() -> str:
    return _dt.date.today().isoformat()


def write_section(name: str, markdown: str, doc: Path = DOC) -> None:
    """Replace (or append) the section ``name`` of the benchmarks document."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = doc.read_text() if doc.exists() else HEADER
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def load_printed(path: Path) -> dict[str, dict[str, list[dict]]]:
    """An interleaved before/after run's results re-read from the JSON lines it printed
    (``{"side": "base"|"new", "kind": ..., ...}``), to re-render without measuring."""
    res: dict[str, dict[str, list[dict]]] = {"base": {}, "new": {}}
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            res[r["side"]].setdefault(r["kind"], []).append(r)
    return res
