"""Build hook for the one optional C extension (the reader's fast path, tui/_regions.c).

Everything else is in pyproject.toml. ``optional=True``: without a C compiler the install
still succeeds and the reader uses its pure-Python path (same results, more CPU).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("tui._regions", ["tui/_regions.c"], optional=True)])
