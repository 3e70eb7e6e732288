"""stagewatch: where every training step's time goes.

The library both the bundled trainer and the monitor stand on: the timing core any
PyTorch loop can call, the JSONL record format (:mod:`stagewatch.records`), the run-folder
conventions (:mod:`stagewatch.runs`), the command-line kit and the GPU table. It never
imports Textual, and imports torch only lazily, for CUDA timing::

    from stagewatch import TimingLogger, set_global_timing_logger, timed

    log = TimingLogger("runs/logs", device="cuda", run_name="mine")
    set_global_timing_logger(log)
    for batch in loader:
        with timed("forward"):
            loss = model(batch)
        log.step(samples=len(batch), scalars={"loss": loss.item()})
    log.close()

Any model, per module, and the input pipeline: ``stagewatch.instrument(model, depth=2)``
and ``stagewatch.timed_loader(loader, device)`` (docs/own-model.md). See docs/timing.md.
"""

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
from stagewatch.timing.instrument import InstrumentHandle, instrument
from stagewatch.timing.loader import timed_loader

__version__ = "0.1.0"

__all__ = [
    "ENV_SWITCH",
    "NOOP",
    "InstrumentHandle",
    "TimingLogger",
    "TimingWarning",
    "__version__",
    "env_disabled",
    "get_global_timing_logger",
    "instrument",
    "log_timing",
    "set_global_timing_logger",
    "timed",
    "timed_loader",
]
