"""Deprecated: the timing core moved to :mod:`stagewatch`; import it from there.

``from trainer.timing import TimingLogger, timed, ...`` keeps working for this release
(with a DeprecationWarning) and will be removed in the next one.
"""

import warnings

from stagewatch.timing import (
    ENV_SWITCH,
    NOOP,
    TimingLogger,
    TimingWarning,
    env_disabled,
    get_global_timing_logger,
    log_timing,
    set_global_timing_logger,
    timed,
)

warnings.warn(
    "trainer.timing moved to stagewatch: use `from stagewatch import TimingLogger, timed, ...`;"
    " trainer.timing will be removed in the next release",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "ENV_SWITCH",
    "NOOP",
    "TimingLogger",
    "TimingWarning",
    "env_disabled",
    "get_global_timing_logger",
    "log_timing",
    "set_global_timing_logger",
    "timed",
]
