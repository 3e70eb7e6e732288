"""Sub-commands of the ``tui`` CLI (see ``tui.cli``)."""
