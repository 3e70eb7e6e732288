"""Every run under a log root (or one run folder or file), discovered and read on demand."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stagewatch.runs import is_run_dir, run_folders
from tui.model.aggregate import DEFAULT_WINDOW
from tui.model.snapshot import STALE, RunItem
from tui.source.nesting import NestPolicy
from tui.source.reader import ENDED, RunSource


@dataclass
class ReadStats:
    polls: int = 0
    snapshots: int = 0


class RootReader:
    """Every run under a log root (or one run folder / file), read on demand.

    Call :meth:`tick` from one thread only; it returns True when a new snapshot is due.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        window: int = DEFAULT_WINDOW,
        stale_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        closed_recheck_s: float = 10.0,
        use_index: bool | None = None,
    ) -> None:
        self.root = Path(root)
        self.use_index = use_index
        self.window = window
        self.stale_after = stale_after
        self.clock = clock
        self.closed_recheck_s = closed_recheck_s
        self.runs: dict[str, RunSource] = {}
        self.selected: str | None = None
        self.stats = ReadStats()
        self._root_mtime: float | None = None
        self._states: dict[str, str] = {}

    nest: NestPolicy | None = None  # how text logs nest (--nest / --no-nest of tui watch)

    def _add(self, path: Path) -> None:
        key = str(path)
        if key not in self.runs:
            self.runs[key] = RunSource(
                path,
                window=self.window,
                stale_after=self.stale_after,
                clock=self.clock,
                use_index=self.use_index,
                nest=self.nest,
            )

    def scan(self) -> bool:
        """Discover run folders (cheap when the root did not change)."""
        root = self.root
        if root.is_file() or is_run_dir(root):
            n = len(self.runs)
            self._add(root)
            return len(self.runs) != n
        try:
            mtime = root.stat().st_mtime_ns
        except OSError:  # the log root is gone (or unreadable): so are its runs
            gone = bool(self.runs)
            self.runs.clear()
            self._root_mtime = None
            return gone
        if mtime == self._root_mtime:
            return False
        self._root_mtime = mtime
        n = len(self.runs)
        for folder in run_folders(root):
            self._add(folder)
        gone = [k for k in self.runs if not os.path.isdir(k) and not os.path.isfile(k)]
        for k in gone:
            del self.runs[k]
        return len(self.runs) != n or bool(gone)

    def tick(self, force_all: bool = False) -> bool:
        """Scan and read; True when the selected run or the run list changed."""
        self.stats.polls += 1
        changed = self.scan()
        now = self.clock()
        behind = False
        for key, run in self.runs.items():
            if run.closed and not force_all and now - run.last_check < self.closed_recheck_s:
                continue
            run.last_check = now
            try:
                if run.poll():
                    changed = True
            except Exception as e:  # one run failing leaves the others live
                run.error = f"{run.dir}: {type(e).__name__}: {e}"[:300]
                changed = True
            behind |= run.behind
            st = run.state()
            run.closed = st in ENDED and not any(f.tail.partial for f in run.feeds.values())
            if not run.behind and (run.closed or st == STALE):
                run.save_index()  # ended or idle: the next open starts from here
            if self._states.get(key) != st:
                self._states[key] = st
                changed = True
        self.behind = behind
        return changed

    behind = False

    def items(self) -> tuple[RunItem, ...]:
        """Runs newest first (run ids sort by start time)."""
        items = [r.item() for r in self.runs.values()]
        items.sort(key=lambda i: (i.started or 0.0, i.run_id), reverse=True)
        return tuple(items)

    def selected_run(self) -> RunSource | None:
        if self.selected is not None:
            for r in self.runs.values():
                if r.run_id == self.selected or str(r.dir) == self.selected:
                    return r
        items = self.items()
        if not items:
            return None
        self.selected = items[0].run_id
        return self.selected_run()
