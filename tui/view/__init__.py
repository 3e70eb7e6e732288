"""The Textual screens: the app, its widgets, key bindings and styles. They only render
snapshots; reading and judging happen below (:mod:`tui.source`, :mod:`tui.diagnosis`)."""
