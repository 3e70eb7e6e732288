"""Sub-commands of the ``trainer`` CLI (see ``trainer.cli``)."""
