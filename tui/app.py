"""The monitor's Textual app: one screen for ``watch`` and ``replay``.

A source (:class:`tui.live.LiveSource` or :class:`tui.replay.ReplaySource`) reads in its own
thread and posts one :class:`WorldSnapshot` per tick; the app hands it to the widgets,
which only render. Key bindings come from :mod:`tui.keys`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, OptionList, Tree

from tui.advice import advice_for
from tui.keys import KEYS, REPLAY
from tui.snapshot import WorldSnapshot
from tui.widgets.help import HelpScreen
from tui.widgets.panels import (
    AdviceBox,
    FilesLine,
    HeaderBar,
    RankView,
    RunList,
    StepSpark,
    header_text,
    set_title,
    show_text,
)
from tui.widgets.tree import Columns, StageTree, TreeHeader

WIDE = 140  # columns from which the tree shows min/max/p95 and the run list is wide
NARROW = 110  # below this the run list is hidden (n / N still switch runs)


class Source(Protocol):
    mode: str

    def start(self, post: Any) -> None: ...
    def stop(self) -> None: ...
    def select(self, run_id: str) -> None: ...


class SnapshotReady(Message):
    """A new snapshot from the reader thread."""

    def __init__(self, snapshot: WorldSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class MonitorApp(App[int]):
    """``tui watch`` / ``tui replay``."""

    CSS_PATH = str(Path(__file__).with_name("app.tcss"))  # absolute: subclasses live elsewhere
    TITLE = "stagewatch"
    BINDINGS = [  # noqa: RUF012
        Binding(k.keys, k.action, k.description.split(" (")[0], show=k.show, priority=k.priority)
        for k in KEYS
    ]

    def __init__(
        self,
        source: Source,
        *,
        red: float = 0.40,
        yellow: float = 0.10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.clock = clock  # ages "last write" between snapshots (tests freeze it)
        self.source = source
        self.mode = source.mode
        self.red = red
        self.yellow = yellow
        self.world: WorldSnapshot | None = None  # shown
        self.latest: WorldSnapshot | None = None  # received
        self.paused = False
        self.window = False
        self.selected_region: str | None = None
        self.applied = 0
        self.compact = False
        self._slot: WorldSnapshot | None = None
        self._slot_pending = False
        self._slot_lock = threading.Lock()

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        with Horizontal(id="body"):
            runs = RunList(id="runs")
            runs.border_title = "runs"
            yield runs
            with Vertical(id="main"):
                with Vertical(id="tree-box"):
                    yield TreeHeader(id="tree-header")
                    yield StageTree(id="tree")
                with Horizontal(id="lower"):
                    yield RankView(id="ranks")
                    with Vertical(id="side"):
                        yield StepSpark(id="spark-box")
                        advice = AdviceBox(id="advice")
                        advice.border_title = "advice"
                        yield advice
        yield FilesLine(id="files")
        yield Input(placeholder="filter regions by name (enter to apply, esc to clear)", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        tree = self.query_one(StageTree)
        tree.red, tree.yellow = self.red, self.yellow
        if self.mode == REPLAY:
            self.query_one(RunList).add_class("hidden")
        self._layout_for(self.size.width)
        self._render_world()
        tree.focus()
        self.source.busy = lambda: self._slot_pending  # type: ignore[method-assign]
        self.source.start(self._post)
        self.set_interval(1.0, self._age_header)

    def _age_header(self) -> None:
        """Once a second: only the header of a live run changes as time passes."""
        run = self.world.selected if self.world else None
        if run is not None and run.state in ("running", "stale") and not run.replay:
            self._render_header()

    def on_unmount(self) -> None:
        self.source.stop()

    def _post(self, snap: WorldSnapshot) -> None:  # reader thread
        # One message in flight at most; the handler takes the newest snapshot, so a slow
        # screen skips stale snapshots instead of falling behind.
        with self._slot_lock:
            self._slot = snap
            if self._slot_pending:
                return
            self._slot_pending = True
        self.post_message(SnapshotReady(snap))

    def on_resize(self, event: Any) -> None:
        self._layout_for(event.size.width)

    def _layout_for(self, width: int) -> None:
        compact = width < WIDE
        runs = self.query_one(RunList)
        runs.set_class(compact, "compact")
        if self.mode != REPLAY:
            runs.set_class(width < NARROW, "hidden")
        tree = self.query_one(StageTree)
        side = 0 if runs.has_class("hidden") else (24 if compact else 34)
        name_w = max(10, min(60, width - side - (62 if compact else 80)))
        if compact != self.compact or name_w != tree.cols.name_w:
            self.compact = compact
            tree.cols = Columns(name_w, compact)
            if self.world is not None:
                self._render_world(force_tree=True)

    # ------------------------------------------------------------------ snapshots
    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        with self._slot_lock:
            snap = self._slot or message.snapshot
            self._slot_pending = False
        self.latest = snap
        if self.paused:
            self._render_header()  # shows how far reading went while paused
            return
        self.world = snap
        self._render_world()

    def _render_header(self) -> None:
        w = self.world
        run = w.selected if w else None
        behind = self.latest.selected.step if self.latest and self.latest.selected else None
        root = w.root if w else getattr(self.source, "root", "")
        age = max(0.0, self.clock() - w.made_at) if w is not None and w.made_at else 0.0
        show_text(
            self.query_one(HeaderBar),
            header_text(run, window=self.window, paused=self.paused, behind_step=behind, root=str(root), age=age),
        )

    def _render_world(self, force_tree: bool = False) -> None:
        w = self.world
        run = w.selected if w else None
        self._render_header()
        if w is not None:
            self.query_one(RunList).show(w.runs, run.run_id if run else None)
        tree = self.query_one(StageTree)
        tree.window = self.window
        tree.show(run, force=force_tree)
        self.query_one(TreeHeader).show(tree.cols, self.window, run.window_size if run else 0)
        set_title(
            self.query_one("#tree-box"),
            f"stage tree · {'window of ' + str(run.window_size) + ' steps' if self.window and run else 'whole run'}"
            f" · sorted by {'time' if tree.sort_by_time else 'name'}"
            + (f" · filter: {tree.filter}" if tree.filter else ""),
        )
        self._render_ranks()
        self.query_one(StepSpark).show(run)
        self.query_one(AdviceBox).show(advice_for(run) if run else [])
        if w is not None:
            self.query_one(FilesLine).show(run, w)
        self.applied += 1

    def _render_ranks(self) -> None:
        run = self.world.selected if self.world else None
        self.query_one(RankView).show(run, self.selected_region, self.window, self.red, self.yellow)

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted) -> None:
        self.selected_region = event.node.data
        self._render_ranks()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self._select_index(event.option_index)

    def _select_index(self, i: int) -> None:
        runs = self.world.runs if self.world else ()
        if 0 <= i < len(runs):
            self.source.select(runs[i].run_id)

    # ------------------------------------------------------------------ actions
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        for k in KEYS:
            if k.action == action:
                if k.priority and isinstance(self.focused, Input):
                    return False  # let the filter box have its keys
                return self.mode in k.modes
        return True

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.mode, self.red, self.yellow))

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused and self.latest is not None:
            self.world = self.latest
            self._render_world()
        else:
            self._render_header()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.value = self.query_one(StageTree).filter
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        tree = self.query_one(StageTree)
        tree.filter = event.value.strip()
        self._render_world()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.input.remove_class("shown")
        self.query_one(StageTree).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("shown")
        self.query_one(StageTree).filter = ""
        self.query_one(StageTree).focus()
        self._render_world()

    def action_expand_all(self) -> None:
        self.query_one(StageTree).root.expand_all()

    def action_collapse_all(self) -> None:
        tree = self.query_one(StageTree)
        for node in tree.root.children:
            node.collapse_all()

    def action_toggle_sort(self) -> None:
        tree = self.query_one(StageTree)
        tree.sort_by_time = not tree.sort_by_time
        self._render_world(force_tree=True)

    def action_toggle_window(self) -> None:
        self.window = not self.window
        self._render_world(force_tree=self.query_one(StageTree).sort_by_time)

    def _move_run(self, d: int) -> None:
        w = self.world
        if not w or not w.runs:
            return
        ids = [r.run_id for r in w.runs]
        cur = w.selected.run_id if w.selected else ids[0]
        i = ids.index(cur) if cur in ids else 0
        self._select_index((i + d) % len(ids))

    def action_next_run(self) -> None:
        self._move_run(1)

    def action_prev_run(self) -> None:
        self._move_run(-1)

    def _replay(self, name: str) -> None:
        src = self.source
        if hasattr(src, "command"):
            src.command(getattr(src, name))

    def action_replay_play(self) -> None:
        self._replay("toggle_play")

    def action_replay_forward(self) -> None:
        self._replay("forward")

    def action_replay_back(self) -> None:
        self._replay("back")

    def action_replay_start(self) -> None:
        self._replay("jump_start")

    def action_replay_end(self) -> None:
        self._replay("jump_end")

    def action_replay_faster(self) -> None:
        self._replay("faster")

    def action_replay_slower(self) -> None:
        self._replay("slower")

    # ------------------------------------------------------------------ palette
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for k in KEYS:
            if self.mode in k.modes and k.action not in ("quit", "clear_filter"):
                yield SystemCommand(k.description, f"key: {k.display}", getattr(self, f"action_{k.action}"))
