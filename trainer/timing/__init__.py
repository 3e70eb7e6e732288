"""The stagewatch timing core: named regions per training step, without stalling the GPU.

Imports neither torch nor Textual (torch only when a logger is created for a CUDA device)::

    from trainer.timing import TimingLogger, set_global_timing_logger, log_timing, timed

    log = TimingLogger("runs/logs", device="cuda")
    set_global_timing_logger(log)
    for batch in loader:
        with timed("forward"):
            ...
        log.step(samples=len(batch), scalars={"loss": loss_value})
    log.close()

See docs/timing.md.
"""

from trainer.timing.jsonl import TimingWarning
from trainer.timing.logger import TimingLogger
from trainer.timing.regions import (
    ENV_SWITCH,
    NOOP,
    env_disabled,
    get_global_timing_logger,
    log_timing,
    set_global_timing_logger,
    timed,
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
