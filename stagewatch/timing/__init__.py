"""The timing core: named regions per training step, without stalling the GPU.

Imports neither torch nor Textual (torch only when a logger is created for a CUDA device).
Its public names are re-exported by :mod:`stagewatch`::

    from stagewatch import TimingLogger, set_global_timing_logger, log_timing, timed

    log = TimingLogger("runs/logs", device="cuda")
    set_global_timing_logger(log)
    for batch in loader:
        with timed("forward"):
            ...
        log.step(samples=len(batch), scalars={"loss": loss_value})
    log.close()

See docs/timing.md.
"""

from stagewatch.timing.capture import CaptureOptions
from stagewatch.timing.jsonl import TimingWarning
from stagewatch.timing.logger import (
    TimingLogger,
    get_global_timing_logger,
    set_global_timing_logger,
)
from stagewatch.timing.regions import ENV_SWITCH, NOOP, env_disabled, log_timing, timed

__all__ = [
    "ENV_SWITCH",
    "NOOP",
    "CaptureOptions",
    "TimingLogger",
    "TimingWarning",
    "env_disabled",
    "get_global_timing_logger",
    "log_timing",
    "set_global_timing_logger",
    "timed",
]
