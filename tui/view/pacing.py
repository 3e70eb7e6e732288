"""Snapshot intake and redraw pacing: which snapshot the screen shows, and when.

Redraws cost what a person can follow: the header (step, ETA, state) follows every
snapshot, while the panels (tree, ranks, sparkline, advice, run list, files line) are
redrawn from one snapshot at most :data:`PANELS_PER_S` times a second (``tui watch``:
:data:`WATCH_PANELS_PER_S`, and less often when a redraw costs more than
:data:`PANEL_BUDGET` of a core at that rate, or its full snapshot more than
:data:`FULL_BUDGET`, as at 64 ranks), the last snapshot of a busy
spell always shown at the end of its gap. A snapshot after a quiet spell, one that answers a
key (another run, a replay seek), a new run or a run changing state is shown whole at once.
``tui watch``'s source builds the per-region figures only for the snapshots the panels will
draw (every panel gap, or when asked); those between are light
(:attr:`WorldSnapshot.light`) and reach the header only.

Nothing here draws: :class:`Slot` hands snapshots from the reader's thread to the screen's,
:class:`Pacer` says what to redraw; the app does it.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from typing import Protocol

from textual.message import Message

from tui.model.snapshot import WorldSnapshot

PANELS_PER_S = 2.0  # panel redraws a second at most while snapshots stream in (a replay playing)
# ``tui watch``: one panel redraw costs ~25 ms of a core here (Textual composing ~40 changed
# lines: the tree ~14 ms), so 2 a second alone would be half the 10% budget of a watch; the
# panels' figures are statistics over many steps, the header (step, ETA, last step) stays live
WATCH_PANELS_PER_S = 1.0
# ``tui watch``: the share of a core the panels' redraws may take, the screen's drawing and the
# reader's full snapshot they draw together; a costlier redraw comes less often than once a
# second. Small runs stay at once a second (~25 ms of drawing + a few ms of snapshot); at 64
# ranks a full snapshot costs the reader ~15-35 ms, and the panels come every ~1-1.5 s.
PANEL_BUDGET = 0.04
# ... and of it, the reader's full snapshot alone (the part that grows with the ranks: at 64
# ranks x 40 regions ~15-25 ms beside the screen's thread, a small run's a few ms) may take
# this share. At 64 ranks the header's stream (reading, light snapshots, header frames) takes
# ~3.5% of a core at 2 steps/s, so within issue 22's 5% the panels come every ~2.5-3 s there
# (docs/benchmarks.md, "the monitor's cost at 64 ranks"); a small run keeps once a second.
FULL_BUDGET = 0.006
MAX_GAP = 3.0  # seconds between panel redraws at most, whatever they cost
COSTS_KEPT = 5  # the gap follows the median of the last few redraws' costs (a layout or a
#                 collection in one does not stretch it)


Post = Callable[[WorldSnapshot], None]


class Source(Protocol):
    """Where the snapshots come from (:mod:`tui.source`): :meth:`run` reads and posts them,
    blocking, until :meth:`stop`; the app runs it in a worker thread."""

    mode: str

    def run(self, post: Post) -> None: ...
    def stop(self) -> None: ...
    def select(self, run_id: str) -> None: ...


def default_gap(replay: bool) -> float:
    """Seconds between panel redraws from streamed snapshots."""
    return 1.0 / (PANELS_PER_S if replay else WATCH_PANELS_PER_S)


class SnapshotReady(Message):
    """A new snapshot from the reader thread."""

    def __init__(self, snapshot: WorldSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class Slot:
    """The hand-over from the reader's thread: one message in flight at most. The screen takes
    the newest snapshot, so a slow screen skips stale snapshots instead of falling behind."""

    def __init__(self) -> None:
        self.snapshot: WorldSnapshot | None = None
        self.full: WorldSnapshot | None = None  # the newest full snapshot not yet taken
        self.pending = False  # a message is in flight (the source builds nothing meanwhile)
        self._lock = threading.Lock()

    def put(self, snap: WorldSnapshot) -> bool:
        """Reader thread: keep ``snap``; True when a message must tell the screen."""
        with self._lock:
            self.snapshot = snap
            if not snap.light:  # a light one after it must not hide it from the panels
                self.full = snap
            if self.pending:
                return False
            self.pending = True
            return True

    def take(self, sent: WorldSnapshot) -> tuple[WorldSnapshot, WorldSnapshot | None]:
        """Screen thread: (the newest snapshot, the newest full one or None), ``sent`` being
        the one the message carried."""
        with self._lock:
            snap = self.snapshot or sent
            full, self.full = self.full, None
            self.pending = False
        if full is None and not snap.light:
            full = snap
        return snap, full


def replay_mode(status: str | None) -> str | None:
    """A replay's status without its position ("▶ replay 10 steps/s"): playing, pausing or
    a new speed is a change of view, the position moving is not."""
    return status.split(" · step ")[0] if status else status


def changes_view(old: WorldSnapshot | None, new: WorldSnapshot) -> bool:
    """True when ``new`` is not just newer figures of what is on screen: another run (or
    a first one), a run added or gone, or the run's state changing (finished, stale...)."""
    if old is None or len(old.runs) != len(new.runs):
        return True
    a, b = old.selected, new.selected
    if a is None or b is None:
        return a is not b
    return (
        a.run_id != b.run_id or a.state != b.state or replay_mode(a.replay) != replay_mode(b.replay)
    )


class Redraw(enum.Enum):
    """What a snapshot taken from the slot redraws."""

    HEADER = "header"  # the header only
    ASK_FULL = "ask_full"  # the header, and the source is asked for a full snapshot
    PANELS = "panels"  # everything, from :attr:`Pacer.world`, now
    LATER = "later"  # the header now, the panels at the end of the gap


class Pacer:
    """Which snapshots the header and the panels show; the app draws what it says."""

    def __init__(self, gap: float, adaptive: bool = False) -> None:
        self.gap = gap  # seconds between panel redraws from streamed snapshots
        self.base_gap = gap  # ... at the least
        self.adaptive = adaptive  # the gap grows with the redraws' cost (note_cost)
        self.costs: list[float] = []  # the last redraws' CPU seconds
        self.full_costs: list[float] = []  # ... of it, the reader's full snapshots
        self.world: WorldSnapshot | None = None  # shown by the panels
        self.latest: WorldSnapshot | None = None  # received (the header shows it, unless paused)
        self.latest_full: WorldSnapshot | None = None  # the newest full one (what panels draw)
        self.urgent = False  # a key asked for the next snapshot (another run, a seek)
        self._drawn_at = -1e9  # time.monotonic() of the last panel redraw

    def receive(self, snap: WorldSnapshot, full: WorldSnapshot | None) -> None:
        """Note what :meth:`Slot.take` gave."""
        self.latest = snap
        if full is not None:
            self.latest_full = full

    def decide(self, snap: WorldSnapshot, full: WorldSnapshot | None) -> Redraw:
        """What to redraw for a snapshot received (not paused); :attr:`world` is set to the
        full one when it is :attr:`Redraw.PANELS`."""
        if full is None:  # light: the header's figures only
            # (the source makes those that change the view full)
            return Redraw.ASK_FULL if changes_view(self.world, snap) else Redraw.HEADER
        if self._left() <= 0 or self.urgent or changes_view(self.world, full):
            self.urgent = False
            self.world = full
            return Redraw.PANELS
        return Redraw.LATER

    def note_cost(self, seconds: float, full: float = 0.0) -> None:
        """A panel redraw's CPU seconds (the screen's drawing and the reader's full snapshot
        it drew; ``full``: the snapshot's part of them): with ``adaptive``, the gap is what
        keeps redraws within :data:`PANEL_BUDGET` of a core, and their full snapshots within
        :data:`FULL_BUDGET`, from :attr:`base_gap` to :data:`MAX_GAP`."""
        self.costs = [*self.costs[-(COSTS_KEPT - 1) :], max(0.0, seconds)]
        self.full_costs = [*self.full_costs[-(COSTS_KEPT - 1) :], max(0.0, full)]
        if self.adaptive:
            cost = sorted(self.costs)[len(self.costs) // 2]
            snap = sorted(self.full_costs)[len(self.full_costs) // 2]
            want = max(self.base_gap, cost / PANEL_BUDGET, snap / FULL_BUDGET)
            self.gap = min(max(self.base_gap, MAX_GAP), want)

    def drawn(self) -> None:
        """The panels were redrawn (from :attr:`world`): a gap starts."""
        self._drawn_at = time.monotonic()

    def due_in(self) -> float:
        """Seconds until the panels may be redrawn from a streamed snapshot, for a timer: at
        least 1 ms, as the gap may have ended since :meth:`decide` (Textual's timers spin on
        a negative delay)."""
        return max(0.001, self._left())

    def _left(self) -> float:
        return self.gap - (time.monotonic() - self._drawn_at)

    def flush(self) -> bool:
        """The end of a gap: True when the panels have a newer full snapshot to draw (then
        :attr:`world`)."""
        if self.latest_full is None or self.latest_full is self.world:
            return False
        self.world = self.latest_full
        return True

    def resume(self) -> bool:
        """A key redraws the panels: from the newest full snapshot (False: none yet)."""
        if self.latest_full is None:
            return False
        self.world = self.latest_full
        return True

    def wants_full(self) -> bool:
        """The header is ahead of the panels (light snapshots came since the last full one)."""
        return self.latest is not None and self.latest.light
