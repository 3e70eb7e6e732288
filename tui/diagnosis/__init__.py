"""Judging a run: thresholds, the facts of a snapshot, the rules that turn them into advice.

Reads :mod:`tui.model` snapshots only (never files or widgets); the screen, ``tui summary``
and ``tui compare`` all show what it returns.
"""
