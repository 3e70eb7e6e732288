"""Advice about a run (what to change to train faster). Torch-free.

The diagnosis issue fills this in; the screen already calls it on every snapshot and shows
what it returns.
"""

from __future__ import annotations

from tui.snapshot import RunSnapshot


def advice_for(run: RunSnapshot) -> list[str]:
    """Plain-text lines of advice for ``run``; empty when there is nothing to say yet."""
    del run
    return []
