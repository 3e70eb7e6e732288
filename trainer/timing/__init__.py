"""Deprecated: the timing core moved to :mod:`stagewatch`; import it from there.

``from trainer.timing import TimingLogger, timed, ...`` keeps working for this release
(with a DeprecationWarning) and will be removed in the next one.
"""

import warnings

from stagewatch.timing import *  # noqa: F403  (the same names, from where they live now)
from stagewatch.timing import __all__  # noqa: F401

warnings.warn(
    "trainer.timing moved to stagewatch: use `from stagewatch import TimingLogger, timed, ...`;"
    " trainer.timing will be removed in the next release",
    DeprecationWarning,
    stacklevel=2,
)
