"""Where the monitor's data comes from: run files on disk, followed as they grow.

Files are tailed (``reader``, complete lines only), decoded in one typed pass (``decode``,
with the optional C fast path ``_regions``; classic text logs through ``textlog``), folded
into a run's aggregate (:mod:`tui.model`), and handed on as snapshots by a live source
(``live``: ``tui watch``, woken by file events) or a replay source (``replay``). A finished
run's folded state is cached beside it (``index``).
"""
