"""Advice about a run (what to change to train faster). Torch-free.

The rules, thresholds and evidence are in :mod:`tui.diagnosis.rules` (see docs/advice.md); the
screen calls :func:`advice_for` on every snapshot and shows what it returns, with
:func:`advice_span` as the heading so that it says which steps the advice is of.
"""

from __future__ import annotations

from tui.diagnosis.rules import WARN, advice_for_run, span_label
from tui.model.snapshot import RunSnapshot


def advice_for(run: RunSnapshot, window: bool = False) -> list[str]:
    """Plain-text lines of advice for ``run``, warnings first; empty when there is nothing to say yet.

    ``window``: of the recent window's statistics instead of the whole run's (pass the span the
    table next to it shows). The straggler verdict is always of the recent steps and says so.
    """
    try:
        advice = advice_for_run(run, scan=False, window=window)
    except Exception:  # the screen never dies of its advice
        return []
    return [("⚠ " if a.severity == WARN else "") + a.line() for a in advice]


def advice_span(run: RunSnapshot, window: bool = False) -> str:
    """``advice — whole run (40 steps)``: the heading of the advice for that span."""
    return f"advice — {span_label(run, window)}"
