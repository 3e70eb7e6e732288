"""What the notice bar is about: runs that start while watching, and the reader failing.

Plain decisions on snapshots; the app switches runs, notifies and draws the notice.
"""

from __future__ import annotations

from stagewatch.traces import trace_name
from tui.model.snapshot import RunSnapshot, WorldSnapshot

ENDED = ("finished", "failed", "interrupted", "stale")  # a new run is followed from these


class NewRuns:
    """Switch to a run that started under the root when the one on screen has ended (or is
    stale); otherwise name it in the notice bar ("n to switch") until it is switched to."""

    def __init__(self) -> None:
        self.known: set[str] | None = None  # run ids seen so far (None: no snapshot yet)
        self.waiting: str | None = None  # a new run not switched to (the notice names it)

    def see(self, snap: WorldSnapshot) -> str | None:
        """Note ``snap``'s runs; the id of a run to switch to now, if any."""
        ids = {r.run_id for r in snap.runs}
        if self.known is None:
            self.known = ids
            return None
        fresh = [r for r in snap.runs if r.run_id not in self.known]  # newest first
        self.known |= ids
        if self.waiting is not None and self.waiting not in ids:
            self.waiting = None
        cur = snap.selected
        if cur is not None and self.waiting == cur.run_id:
            self.waiting = None
        if not fresh:
            if self.waiting is not None and cur is not None and cur.state in ENDED:
                # the run on screen ended after a new one was announced: follow it now
                return self.take()
            return None
        newest = fresh[0]
        if cur is None or cur.state in ENDED:
            self.waiting = None
            return newest.run_id
        if newest.run_id != cur.run_id:
            self.waiting = newest.run_id
        return None

    def take(self) -> str | None:
        """The run the notice names, switched to (the notice then says nothing)."""
        rid, self.waiting = self.waiting, None
        return rid


class Captures:
    """New profiler traces of the run on screen: one notice per trace, none for those there
    when the run was first shown (bounded: the snapshot holds at most 64)."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.seen: frozenset[tuple[int, int]] = frozenset()

    def see(self, run: RunSnapshot | None) -> str | None:
        """The notice for traces new since the last snapshot of the same run, if any."""
        if run is None:
            return None
        now = frozenset(getattr(run, "captures", ()) or ())
        first = run.run_id != self.run_id
        new = sorted(now - self.seen)
        self.run_id, self.seen = run.run_id, now
        if first or not new:
            return None
        step, rank = new[-1]
        more = f" (+{len(new) - 1} more)" if len(new) > 1 else ""
        return (
            f"⏺ profiler trace of step {step}, rank {rank}{more}: "
            f"traces/{trace_name(step, rank)}; tui export --format chrome merges it"
        )


def reader_error(snap: WorldSnapshot | None, source_error: str | None) -> str | None:
    """The reader's failure to show: the snapshot's ``error`` (else ``source_error``, the
    source's own record of it), then the run on screen failing to be read (its
    ``reader_error``); both read defensively."""
    err = snap.error if snap is not None and hasattr(snap, "error") else source_error
    run = snap.selected if snap is not None else None
    return err or (getattr(run, "reader_error", None) if run is not None else None)
