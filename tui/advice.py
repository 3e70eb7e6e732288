"""Advice about a run (what to change to train faster). Torch-free.

The rules, thresholds and evidence are in :mod:`tui.diagnosis` (see docs/advice.md); the
screen calls :func:`advice_for` on every snapshot and shows what it returns.
"""

from __future__ import annotations

from tui.diagnosis import WARN, advice_for_run
from tui.snapshot import RunSnapshot


def advice_for(run: RunSnapshot) -> list[str]:
    """Plain-text lines of advice for ``run``, warnings first; empty when there is nothing to say yet."""
    try:
        advice = advice_for_run(run, scan=False)
    except Exception:  # the screen never dies of its advice
        return []
    return [("⚠ " if a.severity == WARN else "") + a.line() for a in advice]
