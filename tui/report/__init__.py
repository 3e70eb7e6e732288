"""The monitor's text outputs, no screen needed: ``summary``, ``compare`` and ``export``."""
