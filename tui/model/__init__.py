"""What the monitor knows about a run: folded statistics and the immutable snapshots of them.

Records from :mod:`tui.source` are folded per rank (``ranks``: histograms, rings of recent
steps, running totals; ``readout``: their Stats) and per run (``aggregate``), and read out
as one :class:`~tui.model.snapshot.RunSnapshot` per tick (``build``), carrying the rank
statistics (``rankstats``: memory trend, straggler verdict) that the diagnosis judges and
the screens only render. ``order`` defines the stage tree's row order. No file access, no
widgets and no advice here.
"""
