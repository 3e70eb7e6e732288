"""Build hook for the one optional C extension (the reader's fast path, tui/source/_regions.c).

Everything else is in pyproject.toml. ``optional=True``: without a C compiler the install
still succeeds and the reader uses its pure-Python path (same results, more CPU).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("tui.source._regions", ["tui/source/_regions.c"], optional=True)])
