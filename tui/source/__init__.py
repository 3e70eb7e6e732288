"""Where the monitor's data comes from: run files on disk, followed as they grow.

Files are tailed (``tail``: complete lines only), decoded in one typed pass (``decode``, with
the optional C fast path ``_regions``; classic text logs through ``textlog``), and each rank's
records are folded into its run's aggregate (``feed``, into :mod:`tui.model`). ``reader`` is
one run, ``root`` the runs under a log root, ``bulk`` a whole run read at once, ``check`` a
quick look before a screen opens. A live source (``live``: ``tui watch``, woken by file
events from ``watcher``) or a replay source (``replay``) hands them on as snapshots. A
finished run's folded state is cached beside it (``index``).
"""
