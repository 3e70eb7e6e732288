"""Build hook for the optional C extensions: the reader's fast path (tui/source/_regions.c)
and the text log's block formatting (stagewatch/timing/_fmt.c).

Everything else is in pyproject.toml. ``optional=True``: without a C compiler the install
still succeeds and each uses its pure-Python path (same results, more CPU).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("tui.source._regions", ["tui/source/_regions.c"], optional=True),
        Extension("stagewatch.timing._fmt", ["stagewatch/timing/_fmt.c"], optional=True),
    ]
)
