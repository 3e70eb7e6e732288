"""Advice about a run (what to change to train faster), for the screen and ``tui summary``.

The rules, thresholds and evidence are in :mod:`tui.diagnosis.rules` (see docs/advice.md).
The source attaches the screen's lines to every full snapshot (:func:`with_advice`, off the
screen's thread): ``RunSnapshot.advice`` of the whole run and ``advice_window`` of the
recent window, shown under :func:`advice_span`, which says which steps they are of.
"""

from __future__ import annotations

from dataclasses import replace

from tui.diagnosis.facts import facts_from_snapshot, span_label
from tui.diagnosis.rules import Advice, diagnose
from tui.diagnosis.thresholds import DEFAULT_THRESHOLDS, WARN, Thresholds
from tui.model.snapshot import RunSnapshot

__all__ = ["advice_for", "advice_for_run", "advice_span", "span_label", "with_advice"]


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
    is nothing to say yet, or when the advice fails (a snapshot never dies of its advice).

    ``window``: of the recent window's statistics instead of the whole run's (pass the span the
    table next to it shows). The straggler verdict is always of the recent steps and says so.
    """
    try:
        advice = advice_for_run(run, window=window)
    except Exception:
        return []
    return [("⚠ " if a.severity == WARN else "") + a.line() for a in advice]


def with_advice(snap: RunSnapshot) -> RunSnapshot:
    """``snap`` carrying its advice lines of both spans (``advice``, ``advice_window``); a
    light snapshot (no region figures) is returned as it is."""
    if snap.light:
        return snap
    return replace(
        snap,
        advice=tuple(advice_for(snap, window=False)),
        advice_window=tuple(advice_for(snap, window=True)),
    )


def advice_span(run: RunSnapshot, window: bool = False) -> str:
    """``advice — whole run (40 steps)``: the heading of the advice for that span."""
    return f"advice — {span_label(run, window)}"
