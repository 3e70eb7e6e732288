"""Smoke test of benchmarks/fault_campaign.py with tiny counts (the full run is in
docs/reliability.md)."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "fault_campaign", ROOT / "benchmarks" / "fault_campaign.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fault_campaign"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


fc = _load()


def test_tiny_campaign_finds_nothing_and_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    rc = fc.main(["--fuzz", "60", "--kills", "2", "--quick", "--budget", "10", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["failures"] == [] and rc == 0
    parts = {p["name"]: p for p in data["parts"]}
    assert set(parts) == {"reader fuzz", "tailing faults", "writer faults", "kill -9 and resume"}
    assert parts["reader fuzz"]["tried"] >= 60 and parts["reader fuzz"]["records_expected"] > 0
    assert parts["tailing faults"]["survived"] == len(fc.TAILING)
    assert parts["writer faults"]["survived"] == len(fc.WRITER_FAULTS)
    assert (
        parts["kill -9 and resume"]["records_read"]
        == parts["kill -9 and resume"]["records_expected"]
        > 0
    )
    assert data["records_lost"] == 0 and data["crashes"] == 0


def test_the_campaign_counts_a_crash_and_a_lost_record(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # the counting itself must be able to fail: a reader that raises, valid lines that are not kept
    def raising(path):  # type: ignore[no-untyped-def]
        raise RuntimeError("reader bug")

    with monkeypatch.context() as m:
        m.setattr(fc, "open_run", raising)
        part = fc.reader_fuzz(tmp_path / "a", 20, 1, 5.0)
    assert part.crashes >= 1 and "reader bug" in part.failures[0]
    with monkeypatch.context() as m:
        m.setattr(
            fc, "_sentinel", lambda n: f'{{"kind":"step","step":{n}}}'
        )  # not a valid record: not kept
        part = fc.reader_fuzz(tmp_path / "c", 20, 1, 5.0)
    assert part.lost > 0 and "valid lines kept" in part.failures[0]

    def fault(d: Path) -> bool:
        raise OSError("tail bug")

    monkeypatch.setattr(fc, "TAILING", [("boom", fault)])
    tail = fc.tailing_faults(tmp_path / "b")
    assert tail.crashes == 1 and "tail bug" in tail.failures[0]


def test_mutants_are_hostile_and_reproducible() -> None:
    a = [fc._mutant(random.Random(3), 5) for _ in range(50)]
    b = [fc._mutant(random.Random(3), 5) for _ in range(50)]
    assert a == b
    hows = {h for _, h in (fc._mutant(random.Random(i), 5) for i in range(400))}
    assert {"truncate", "retype", "duplicate", "huge", "deep", "name", "bytes", "ctrl"} <= hows
