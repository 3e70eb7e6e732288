"""The monitor's Textual app: one screen for ``watch`` and ``replay``.

A source (:class:`tui.source.live.LiveSource` or :class:`tui.source.replay.ReplaySource`) reads in its own
thread and posts one :class:`WorldSnapshot` per tick; the app hands it to the widgets,
which only render. Key bindings come from :mod:`tui.view.keys`.

Redraws cost what a person can follow: the header (step, ETA, state) follows every
snapshot, while the panels (tree, ranks, sparkline, advice, run list, files line) are
redrawn from one snapshot at most :data:`PANELS_PER_S` times a second (``tui watch``:
:data:`WATCH_PANELS_PER_S`), the last snapshot of a busy spell always shown at the end of
its gap. A snapshot after a quiet spell, one that
answers a key (another run, a replay seek), a new run or a run changing state is shown
whole at once. ``tui watch``'s source builds the per-region figures only for the snapshots
the panels will draw (every panel gap, or when asked); those between are light
(:attr:`WorldSnapshot.light`) and reach the header only.
"""

from __future__ import annotations

import gc
import inspect
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, OptionList, Tree

from tui.diagnosis.advice import advice_for
from tui.fmt import clean
from tui.model.snapshot import WorldSnapshot
from tui.view.keys import KEYS, REPLAY, bound_keys
from tui.view.widgets.advice import AdviceBox
from tui.view.widgets.base import set_title
from tui.view.widgets.files import FilesLine
from tui.view.widgets.header import HeaderBar, NoticeBar
from tui.view.widgets.help import HelpScreen
from tui.view.widgets.ranks import RankView
from tui.view.widgets.runlist import RunList
from tui.view.widgets.spark import StepSpark
from tui.view.widgets.tree import Columns, StageTree, TreeHeader

WIDE = 140  # columns from which the tree shows min/max/p95 and the run list is wide
NARROW = 110  # below this the run list is hidden (n / N still switch runs)
SHORT = 30  # below this many rows the step-time sparkline gives its room to the advice
ENDED = ("finished", "failed", "interrupted", "stale")  # a new run is followed from these
PANELS_PER_S = 2.0  # panel redraws a second at most while snapshots stream in (a replay playing)
# ``tui watch``: one panel redraw costs ~25 ms of a core here (Textual composing ~40 changed
# lines: the tree ~14 ms), so 2 a second alone would be half the 10% budget of a watch; the
# panels' figures are statistics over many steps, the header (step, ETA, last step) stays live
WATCH_PANELS_PER_S = 1.0
_ADVICE_TAKES_WINDOW = "window" in inspect.signature(advice_for).parameters
try:  # the diagnosis names spans the same way for the screen, the summary and the advice
    from tui.diagnosis.rules import span_label as _span_label  # type: ignore[attr-defined]
except ImportError:
    _span_label = None


def _replay_mode(status: str | None) -> str | None:
    """A replay's status without its position ("▶ replay 10 steps/s"): playing, pausing or
    a new speed is a change of view, the position moving is not."""
    return status.split(" · step ")[0] if status else status


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
        Binding(k.keys, k.action, k.label, show=k.show, priority=k.priority) for k in bound_keys()
    ]

    def __init__(
        self,
        source: Source,
        *,
        red: float = 0.40,
        yellow: float = 0.10,
        clock: Callable[[], float] = time.monotonic,
        panel_gap: float | None = None,
    ) -> None:
        super().__init__()
        self.clock = clock  # ages "last write" between snapshots (tests freeze it)
        self.source = source
        self.mode = source.mode
        self.red = red
        self.yellow = yellow
        self.world: WorldSnapshot | None = None  # shown by the panels
        self.latest: WorldSnapshot | None = None  # received (the header shows it, unless paused)
        self.latest_full: WorldSnapshot | None = None  # the newest full one (what the panels draw)
        if panel_gap is None:
            panel_gap = 1.0 / (WATCH_PANELS_PER_S if self.mode != REPLAY else PANELS_PER_S)
        self.panel_gap = panel_gap  # seconds between panel redraws from streamed snapshots
        self.panel_renders = 0  # panel redraws (a test counts them)
        self.header_world: WorldSnapshot | None = None  # the snapshot the header last showed
        self._panels_at = -1e9  # time.monotonic() of the last panel redraw
        self._panels_timer: Any = None  # the redraw due at the end of the gap
        self._urgent = False  # a key asked for the next snapshot (another run, a seek)
        self.paused = False
        self.window = False
        self.selected_region: str | None = None
        self.applied = 0
        self.compact = False
        self._slot: WorldSnapshot | None = None
        self._slot_full: WorldSnapshot | None = None  # the newest full snapshot not yet taken
        self._slot_pending = False
        self._slot_lock = threading.Lock()
        self.known_runs: set[str] | None = None  # run ids seen so far (None: no snapshot yet)
        self.new_run: str | None = None  # a new run not switched to (the notice names it)
        self.reader_error: str | None = None  # the reader's failure, shown until it clears
        self.failed = False  # a reader error was seen: `tui watch` exits 1
        self._gc_frozen = False  # the start-up's objects moved out of the collector's sight

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        yield NoticeBar(id="notice")
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
        yield Input(
            placeholder="filter regions by name as you type (Enter keeps it, Esc clears)",
            id="filter",
        )
        yield Footer(compact=True)

    def on_mount(self) -> None:
        tree = self.query_one(StageTree)
        tree.red, tree.yellow = self.red, self.yellow
        if self.mode == REPLAY:
            self.query_one(RunList).add_class("hidden")
        self._layout_for(self.size.width)
        self.query_one(StepSpark).set_class(self.size.height < SHORT, "hidden")
        self._render_world()
        tree.focus()
        self.source.busy = lambda: self._slot_pending  # type: ignore[method-assign]
        if hasattr(self.source, "full_gap"):  # full snapshots as often as the panels draw them
            self.source.full_gap = self.panel_gap  # type: ignore[attr-defined]
        self.source.start(self._post)
        self.set_interval(1.0, self._age_header)

    def _age_header(self) -> None:
        """Once a second: only the header of a live run changes as time passes (and a
        reader that fails between snapshots is noticed)."""
        self._check_reader(self.latest)
        run = self.world.selected if self.world else None
        if run is not None and run.state in ("running", "stale") and not run.replay:
            self._render_header()

    def _freeze_gc(self) -> None:
        """Once the first run is on screen: the objects made so far (Textual's widgets and
        styles, the modules, the run read so far) live as long as the app, so the cyclic
        collector stops walking them (gc.freeze). Its full collections, every ~10 s while a
        run streams in, cost ~60-130 ms each here otherwise. Undone when the app ends."""
        if not self._gc_frozen:
            self._gc_frozen = True
            gc.freeze()

    def on_unmount(self) -> None:
        if self._gc_frozen:
            self._gc_frozen = False
            gc.unfreeze()
        if self._panels_timer is not None:
            self._panels_timer.stop()
            self._panels_timer = None
        self.source.stop()

    def _post(self, snap: WorldSnapshot) -> None:  # reader thread
        # One message in flight at most; the handler takes the newest snapshot, so a slow
        # screen skips stale snapshots instead of falling behind.
        with self._slot_lock:
            self._slot = snap
            if not snap.light:  # a light one after it must not hide it from the panels
                self._slot_full = snap
            if self._slot_pending:
                return
            self._slot_pending = True
        self.post_message(SnapshotReady(snap))

    def on_resize(self, event: Any) -> None:
        self._layout_for(event.size.width)
        # short terminals: the advice matters more than the sparkline
        self.query_one(StepSpark).set_class(event.size.height < SHORT, "hidden")
        self.call_after_refresh(self._render_header)  # the header fits its fields to the width

    def _layout_for(self, width: int) -> None:
        compact = width < WIDE
        runs = self.query_one(RunList)
        runs.set_class(compact, "compact")
        if self.mode != REPLAY:
            runs.set_class(width < NARROW, "hidden")
        tree = self.query_one(StageTree)
        side = 0 if runs.has_class("hidden") else (28 if compact else 34)
        name_w = max(10, min(60, width - side - (62 if compact else 80)))
        if compact != self.compact or name_w != tree.cols.name_w:
            self.compact = compact
            tree.cols = Columns(name_w, compact)
            if self.world is not None:
                self._render_world(force_tree=True)

    # ------------------------------------------------------------------ snapshots
    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        try:
            self._take(message)
        except NoMatches:  # the snapshot arrived while the screen was being torn down
            pass

    def _take(self, message: SnapshotReady) -> None:
        with self._slot_lock:
            snap = self._slot or message.snapshot
            full, self._slot_full = self._slot_full, None
            self._slot_pending = False
        if full is None and not snap.light:
            full = snap
        self.latest = snap
        if full is not None:
            self.latest_full = full
        self._check_reader(snap)
        self._follow_new_runs(snap)
        if self.paused:
            self._render_header()  # shows how far reading went while paused
            return
        if full is None:  # light: the header's figures only
            if self._changes_view(self.world, snap):  # (the source makes those full)
                self._ask_full()
            self._render_header()
            return
        wait = self.panel_gap - (time.monotonic() - self._panels_at)
        if wait <= 0 or self._urgent or self._changes_view(self.world, full):
            self._urgent = False
            self.world = full
            self._render_world()
            return
        self._render_header()  # the step follows every snapshot; the panels at the gap's end
        if self._panels_timer is None:
            self._panels_timer = self.set_timer(wait, self._flush_panels, name="panels")

    @staticmethod
    def _changes_view(old: WorldSnapshot | None, new: WorldSnapshot) -> bool:
        """True when ``new`` is not just newer figures of what is on screen: another run (or
        a first one), a run added or gone, or the run's state changing (finished, stale...)."""
        if old is None or len(old.runs) != len(new.runs):
            return True
        a, b = old.selected, new.selected
        if a is None or b is None:
            return a is not b
        return (
            a.run_id != b.run_id
            or a.state != b.state
            or _replay_mode(a.replay) != _replay_mode(b.replay)
        )

    def _flush_panels(self) -> None:
        """The end of a gap: the panels show the newest snapshot (the header already does)."""
        self._panels_timer = None
        if self.paused or self.latest_full is None or self.latest_full is self.world:
            return
        self.world = self.latest_full
        try:
            self._render_world()
        except NoMatches:  # the timer fired while the screen was being torn down
            pass

    # ------------------------------------------------------------------ new runs, errors
    def _follow_new_runs(self, snap: WorldSnapshot) -> None:
        """Switch to a run that started under the root when the one on screen has ended (or
        is stale); otherwise name it in the notice bar ("n to switch")."""
        if self.mode == REPLAY:
            return
        ids = {r.run_id for r in snap.runs}
        if self.known_runs is None:
            self.known_runs = ids
            return
        fresh = [r for r in snap.runs if r.run_id not in self.known_runs]  # newest first
        self.known_runs |= ids
        if self.new_run is not None and self.new_run not in ids:
            self.new_run = None
        cur = snap.selected
        if cur is not None and self.new_run == cur.run_id:
            self.new_run = None
        if not fresh:
            if self.new_run is not None and cur is not None and cur.state in ENDED:
                # the run on screen ended after a new one was announced: follow it now
                rid, self.new_run = self.new_run, None
                self.source.select(rid)
                self.notify(f"now showing the new run {clean(rid)}", timeout=5, markup=False)
            self._render_notice()
            return
        newest = fresh[0]
        if cur is None or cur.state in ENDED:
            self.new_run = None
            self.source.select(newest.run_id)
            self.notify(f"now showing the new run {clean(newest.run_id)}", timeout=5, markup=False)
        elif newest.run_id != cur.run_id:
            self.new_run = newest.run_id
        self._render_notice()

    def _check_reader(self, snap: WorldSnapshot | None) -> None:
        # the reader thread's failure (the snapshot's ``error``, else the live source's own
        # record of it), then the run on screen failing to be read (its ``reader_error``);
        # both read defensively
        if snap is not None and hasattr(snap, "error"):
            err = snap.error
        else:
            err = getattr(self.source, "last_error", None)
        run = snap.selected if snap is not None else None
        err = err or (getattr(run, "reader_error", None) if run is not None else None)
        if err or getattr(self.source, "failed", False) is True:
            self.failed = True
        if err != self.reader_error:
            self.reader_error = err
            self._render_notice()

    def _render_notice(self) -> None:
        self.query_one(NoticeBar).show(self.reader_error, self.new_run)

    def _render_header(self) -> None:
        # live: the newest snapshot (the panels may be up to one gap behind); paused: the
        # held one, with how far reading went
        w = self.world if self.paused or self.latest is None else self.latest
        run = w.selected if w else None
        self.header_world = w
        behind = self.latest.selected.step if self.latest and self.latest.selected else None
        root = w.root if w else getattr(self.source, "root", "")
        age = max(0.0, self.clock() - w.made_at) if w is not None and w.made_at else 0.0
        idle = None
        new = self.latest
        if (
            self.paused
            and run is not None
            and new is not None
            and new.selected is not None
            and new.selected.run_id == run.run_id
        ):
            # the files kept growing while the screen holds: age from the newest snapshot
            idle = new.selected.idle_s + (
                max(0.0, self.clock() - new.made_at) if new.made_at else 0.0
            )
        self.query_one(HeaderBar).show(
            run,
            window=self.window,
            paused=self.paused,
            behind_step=behind,
            root=str(root),
            age=age,
            idle_s=idle,
            span=self._span(run) if run is not None else None,
        )

    def _render_world(self, force_tree: bool = False) -> None:
        w = self.world
        run = w.selected if w else None
        self._panels_at = time.monotonic()
        self.panel_renders += 1
        self._render_header()
        if w is not None:
            self.query_one(RunList).show(w.runs, run.run_id if run else None)
        tree = self.query_one(StageTree)
        tree.window = self.window
        tree.show(run, force=force_tree)
        self.query_one(TreeHeader).show(tree.cols, self.window, run.window_size if run else 0)
        set_title(
            self.query_one("#tree-box"),
            f"stage tree · {self._span(run)}"
            f" · sorted by {'time' if tree.sort_by_time else 'name'}"
            + (f" · filter: {tree.filter}" if tree.filter else ""),
        )
        self._render_ranks()
        self.query_one(StepSpark).show(run)
        advice = self.query_one(AdviceBox)
        if run is None:
            advice.show([])
            set_title(advice, "advice")
        elif _ADVICE_TAKES_WINDOW:
            advice.show(advice_for(run, window=self.window))  # type: ignore[call-arg]
            set_title(advice, f"advice · {self._span(run)}")
        else:  # the diagnosis judges the recent window
            advice.show(advice_for(run))
            set_title(advice, f"advice · last {run.window_size} steps")
        if w is not None:
            self.query_one(FilesLine).show(run, w)
        self.applied += 1
        if run is not None and not self._gc_frozen:
            self.call_after_refresh(self._freeze_gc)  # after the first screen is drawn

    def _span(self, run: Any) -> str:
        """The statistics' time span, as every panel names it."""
        if run is not None and _span_label is not None:
            try:
                return clean(_span_label(run, self.window))
            except Exception:
                pass
        return f"last {run.window_size} steps" if self.window and run is not None else "whole run"

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
            self._urgent = True
            self.source.select(runs[i].run_id)

    # ------------------------------------------------------------------ actions
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        for k in KEYS:
            if k.action == action:
                if k.priority and not k.in_input and isinstance(self.focused, Input):
                    return False  # let the filter box have its keys
                return self.mode in k.modes
        return True

    def exit_code(self) -> int:
        """1 when the reader failed during the session (`tui watch` exits with it), else 0."""
        return 1 if self.failed else 0

    async def action_quit(self) -> None:
        code = self.exit_code()
        self.exit(code, return_code=code)

    def action_quit_now(self) -> None:
        """Ctrl+C: quit from anywhere (Textual would copy text or only hint at Ctrl+Q)."""
        code = self.exit_code()
        self.exit(code, return_code=code)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.mode, self.red, self.yellow))

    def _ask_full(self) -> None:
        """The header is ahead of the panels (light snapshots came since the last full one):
        have the source post a full snapshot now and show it whole at once (``tui watch``)."""
        want = getattr(self.source, "want_full", None)
        if want is not None and self.latest is not None and self.latest.light and not self.paused:
            self._urgent = True
            want()

    def _redraw_for_key(self, force_tree: bool) -> None:
        """A key redraws the panels: from the newest full snapshot (unless the screen holds),
        then asks for a fresh one if the header is ahead of it."""
        if not self.paused and self.latest_full is not None:
            self.world = self.latest_full
        self._render_world(force_tree=force_tree)
        self._ask_full()

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused and self.latest_full is not None:
            self.world = self.latest_full
            self._render_world()
            self._ask_full()
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
        self._redraw_for_key(force_tree=True)

    def action_toggle_window(self) -> None:
        self.window = not self.window
        self._redraw_for_key(force_tree=self.query_one(StageTree).sort_by_time)

    def _move_run(self, d: int) -> None:
        w = self.world
        if not w or not w.runs:
            return
        ids = [r.run_id for r in w.runs]
        cur = w.selected.run_id if w.selected else ids[0]
        i = ids.index(cur) if cur in ids else 0
        self._select_index((i + d) % len(ids))

    def action_next_run(self) -> None:
        if self.new_run is not None:  # the notice's run first
            rid, self.new_run = self.new_run, None
            self._urgent = True
            self.source.select(rid)
            self._render_notice()
            return
        self._move_run(1)

    def action_prev_run(self) -> None:
        self._move_run(-1)

    def _replay(self, name: str) -> None:
        src = self.source
        if hasattr(src, "command"):
            self._urgent = True  # the answer to a key is shown whole at once
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
            if self.mode in k.modes and k.action and k.palette:
                yield SystemCommand(
                    k.description, f"key: {k.display}", getattr(self, f"action_{k.action}")
                )
