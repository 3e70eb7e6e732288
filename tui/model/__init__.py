"""What the monitor knows about a run: folded statistics and the immutable snapshots of them.

Records from :mod:`tui.source` are folded per rank (``aggregate``: histograms, rings of
recent steps, running totals) and read out as one :class:`~tui.model.snapshot.RunSnapshot`
per tick, which the diagnosis judges and the screens only render. No file access and no
widgets here.
"""
