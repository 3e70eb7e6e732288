"""Advice about a run (what to change to train faster), for the screen and ``tui summary``.

The rules, thresholds and evidence are in :mod:`tui.diagnosis.rules` (see docs/advice.md);
the screen shows :func:`advice_for` of every snapshot under :func:`advice_span`, which says
which steps the advice is of.
"""

from __future__ import annotations

from tui.diagnosis.facts import facts_from_snapshot, span_label
from tui.diagnosis.rules import Advice, diagnose
from tui.diagnosis.thresholds import DEFAULT_THRESHOLDS, WARN, Thresholds
from tui.model.snapshot import RunSnapshot

__all__ = ["advice_for", "advice_for_run", "advice_span", "span_label"]


def advice_for_run(
    snap: RunSnapshot,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    *,
    window: bool = False,
) -> list[Advice]:
    """Advice for a run snapshot, from its facts (statistics, config, memory trend, verdict).

    ``window``: judge the recent window's statistics instead of the whole run's (use the span
    the figures next to the advice are of; :func:`span_label` names it).
    """
    facts = facts_from_snapshot(snap, window=window, thresholds=thresholds)
    return diagnose(facts, thresholds)


def advice_for(run: RunSnapshot, window: bool = False) -> list[str]:
    """Plain-text lines of advice for ``run``, warnings first (marked ``⚠``); empty when there
    is nothing to say yet, or when the advice fails (the screen never dies of its advice).

    ``window``: of the recent window's statistics instead of the whole run's (pass the span the
    table next to it shows). The straggler verdict is always of the recent steps and says so.
    """
    try:
        advice = advice_for_run(run, window=window)
    except Exception:
        return []
    return [("⚠ " if a.severity == WARN else "") + a.line() for a in advice]


def advice_span(run: RunSnapshot, window: bool = False) -> str:
    """``advice — whole run (40 steps)``: the heading of the advice for that span."""
    return f"advice — {span_label(run, window)}"
