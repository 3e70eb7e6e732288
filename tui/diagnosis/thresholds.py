"""Every number the rules compare against, and the severities of what they find.

``docs/advice.md`` documents each threshold; the straggler limits are the model's
(:class:`~tui.model.rankstats.StragglerLimits`, which the snapshot's verdict used), so the
advice and the verdict it explains agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from tui.model.rankstats import StragglerLimits
from tui.model.units import MiB

WARN = "warn"  # something is wrong or about to go wrong
SUGGEST = "suggest"  # a change that should make training faster
INFO = "info"  # what dominates; no action needed by itself
SEVERITIES = (WARN, SUGGEST, INFO)


@dataclass(frozen=True, slots=True)
class Thresholds(StragglerLimits):
    """Every number the rules compare against, in one place (documented in docs/advice.md).

    Shares are fractions of the step wall time (0..1); memory fractions are of the device's
    total memory. The ``straggler_*`` fields are :class:`StragglerLimits`'.
    """

    #: steps a run needs before timing rules speak (the first step is a warm-up)
    min_steps: int = 5
    #: a top-level region at or above this share "dominates" the step (the monitor's red)
    dominant_share: float = 0.40
    #: backward / forward above this with checkpointing on: recompute is expensive. Without
    #: checkpointing backward costs ~2× forward; checkpointing adds about one more forward
    checkpoint_ratio: float = 2.3
    #: device memory free at the peak needed before suggesting checkpointing off
    checkpoint_headroom: float = 0.25
    #: estimated fp32 Adam state / peak memory at or above which 8-bit AdamW is suggested
    optimizer_state_share: float = 0.20
    #: device memory free at the peak needed before suggesting a larger batch
    batch_headroom: float = 0.30
    #: fraction of the free memory a suggested larger batch may use
    batch_fill: float = 0.90
    #: waiting for data (region ``data``) at or above this share
    data_share: float = 0.10
    #: host-to-device copy of the batch (``data/h2d`` of timed_loader, or ``h2d``) at or
    #: above this share: name pinned memory and non_blocking
    h2d_share: float = 0.05
    #: exposed gradient all-reduce (region ``allreduce``) at or above this share
    allreduce_share: float = 0.10
    #: peak memory at or above this fraction of the device total: warn
    memory_near_limit: float = 0.90
    #: memory growth (recent window mean over early window mean) at or above this: warn
    memory_creep: float = 0.05
    #: ... and at least this many bytes
    memory_creep_min_bytes: int = 64 * MiB
    #: time outside every timed region at or above this share: say so
    unaccounted_share: float = 0.15


DEFAULT_THRESHOLDS = Thresholds()
