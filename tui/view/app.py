"""The monitor's Textual app: one screen for ``watch`` and ``replay``; the layout and the wiring.

A source (:class:`tui.source.live.LiveSource` or :class:`tui.source.replay.ReplaySource`)
reads in a Textual worker thread and posts one :class:`WorldSnapshot` per tick; the app hands
it to the widgets, which only render. Which snapshot is drawn when: :mod:`tui.view.pacing`;
following new runs and showing reader errors: :mod:`tui.view.notices`; what the keys do:
:mod:`tui.view.actions` (the bindings: :mod:`tui.view.keys`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widgets import Footer, Input, OptionList, Tree
from textual.worker import Worker, WorkerState

from tui.diagnosis.advice import span_label
from tui.fmt import clean
from tui.model.snapshot import RunSnapshot, WorldSnapshot
from tui.view import layout
from tui.view.actions import KeyActions
from tui.view.keys import REPLAY, bound_keys
from tui.view.notices import Captures, NewRuns, reader_error
from tui.view.pacing import Pacer, Redraw, Slot, SnapshotReady, Source, default_gap
from tui.view.widgets.advice import AdviceBox
from tui.view.widgets.base import NeedChanged, set_title
from tui.view.widgets.chart import RegionChart
from tui.view.widgets.files import FilesLine
from tui.view.widgets.header import HeaderBar, NoticeBar
from tui.view.widgets.ranks import RankView
from tui.view.widgets.runlist import RunList
from tui.view.widgets.spark import StepSpark
from tui.view.widgets.tree import Columns, StageTree, TreeHeader

__all__ = ["MonitorApp", "SnapshotReady", "Source"]

WIDE = 140  # columns from which the tree shows min/max/p95 and the run list is wide
NARROW = 110  # below this the run list is hidden (n / N still switch runs)
SHORT = 30  # below this many rows the sparkline and the chart give their room to the rest


class Body(Vertical):
    """The panels' area. When its height changes (a notice bar comes or goes, the terminal
    resizes), the panels share its rows again, once that layout is known."""

    def on_resize(self, _event: Any) -> None:
        fit = getattr(self.app, "_fit_heights", None)
        if fit is not None:
            self.call_after_refresh(fit)


class MonitorApp(KeyActions, App[int]):
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
        self.slot = Slot()  # from the reader's thread
        self.pacer = Pacer(
            default_gap(self.mode == REPLAY) if panel_gap is None else panel_gap,
            adaptive=panel_gap is None and self.mode != REPLAY,  # costly redraws come less often
        )
        self._panels_cpu: float | None = None  # thread CPU when the last panel redraw began
        self.new_runs = NewRuns()
        self.captures = Captures()  # new profiler traces of the run on screen: a notice each
        self.panel_renders = 0  # panel redraws (a test counts them)
        self.header_world: WorldSnapshot | None = None  # the snapshot the header last showed
        self._panels_timer: Any = None  # the redraw due at the end of the gap
        self.paused = False
        self.window = False
        self.selected_region: str | None = None
        self.applied = 0
        self.compact = False
        self.reader_error: str | None = None  # the reader's failure, shown until it clears
        self.failed = False  # a reader error was seen: `tui watch` exits 1
        self._worker_error: str | None = None  # the read loop itself died
        self._gc_frozen = False  # the start-up's objects moved out of the collector's sight

    @property
    def world(self) -> WorldSnapshot | None:
        """The snapshot the panels show."""
        return self.pacer.world

    @property
    def latest(self) -> WorldSnapshot | None:
        """The newest snapshot received (the header shows it, unless paused)."""
        return self.pacer.latest

    @property
    def latest_full(self) -> WorldSnapshot | None:
        """The newest full snapshot received (what the panels draw)."""
        return self.pacer.latest_full

    @property
    def new_run(self) -> str | None:
        """A new run not switched to (the notice names it)."""
        return self.new_runs.waiting

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        yield NoticeBar(id="notice")
        with Horizontal(id="body"):
            runs = RunList(id="runs")
            runs.border_title = "runs"
            yield runs
            with Body(id="main"):
                with Vertical(id="tree-box"):
                    yield TreeHeader(id="tree-header")
                    yield StageTree(id="tree")
                with Horizontal(id="lower"):
                    with Vertical(id="left"):
                        yield RankView(id="ranks")
                        yield RegionChart(id="chart")
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
        self._short(self.size.height)
        self._render_world()
        tree.focus()
        self.source.busy = lambda: self.slot.pending  # type: ignore[attr-defined]
        if hasattr(self.source, "full_gap"):  # full snapshots as often as the panels draw them
            self.source.full_gap = self.pacer.gap  # type: ignore[attr-defined]
        self.run_worker(
            partial(self.source.run, self._post),
            name="reader",
            group="source",
            thread=True,
            exit_on_error=False,  # a failing reader is shown (the notice), not a crash
        )
        self.set_interval(1.0, self._age_header)

    def on_unmount(self) -> None:
        if self._gc_frozen:
            self._gc_frozen = False
            gc.unfreeze()
        if self._panels_timer is not None:
            self._panels_timer.stop()
            self._panels_timer = None
        self.source.stop()  # the worker's thread returns from source.run()

    def on_resize(self, event: Any) -> None:
        self._layout_for(event.size.width)
        self._short(event.size.height)
        self.call_after_refresh(self._render_header)  # the header fits its fields to the width
        self.call_after_refresh(self._fit_heights)

    def _short(self, height: int) -> None:
        """Short terminals: the tree, the ranks and the advice matter more than the sparkline
        and the chart."""
        self.query_one(StepSpark).set_class(height < SHORT, "hidden")
        self.query_one(RegionChart).set_class(height < SHORT, "hidden")

    def _fit_heights(self) -> None:
        """The panels under the tree take the rows their content needs, the tree the rest
        (:func:`tui.view.layout.share_heights`)."""
        try:
            body = self.query_one("#main").size.height
            tree = self.query_one(StageTree)
            ranks = self.query_one(RankView)
            advice = self.query_one(AdviceBox)
            chart_box = self.query_one(RegionChart)
            spark = not self.query_one(StepSpark).has_class("hidden")
        except NoMatches:  # torn down
            return
        if body <= 0:
            return
        h = layout.share_heights(
            body,
            tree.last_line + 1 + 3,  # rows, column header, borders
            ranks.need(),
            advice.need(),
            chart=self.size.height >= SHORT,
            spark=spark,
        )
        chart = h.chart
        if chart_box.has_class("hidden") == chart:
            chart_box.set_class(not chart, "hidden")
        lower = self.query_one("#lower")
        if lower.styles.height is None or lower.styles.height.value != h.lower:
            lower.styles.height = h.lower
        want = h.ranks if chart else "1fr"
        if str(ranks.styles.height) != str(want):
            ranks.styles.height = want

    def _layout_for(self, width: int) -> None:
        compact = width < WIDE
        runs = self.query_one(RunList)
        runs.set_class(compact, "compact")
        if self.mode != REPLAY:
            runs.set_class(width < NARROW, "hidden")
        tree = self.query_one(StageTree)
        side = 0 if runs.has_class("hidden") else (28 if compact else 34)  # #runs in app.tcss
        name_w = max(10, min(60, width - side - (62 if compact else 80)))
        if compact != self.compact or name_w != tree.cols.name_w:
            self.compact = compact
            tree.cols = Columns(name_w, compact)
            if self.world is not None:
                self._render_world(force_tree=True)

    # ------------------------------------------------------------------ snapshots
    def _post(self, snap: WorldSnapshot) -> None:  # reader thread
        if self.slot.put(snap):
            self.post_message(SnapshotReady(snap))

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        try:
            self._take(message)
        except NoMatches:  # the snapshot arrived while the screen was being torn down
            pass

    def _take(self, message: SnapshotReady) -> None:
        snap, full = self.slot.take(message.snapshot)
        self.pacer.receive(snap, full)
        self._check_reader(snap)
        self._follow_new_runs(snap)
        self._note_captures(snap)
        if self.paused:
            self._render_header()  # shows how far reading went while paused
            return
        redraw = self.pacer.decide(snap, full)
        if redraw is Redraw.PANELS:
            self._render_world()
            return
        if redraw is Redraw.ASK_FULL:
            self._ask_full()
        self._render_header()  # the step follows every snapshot; the panels at the gap's end
        if redraw is Redraw.LATER and self._panels_timer is None:
            self._panels_timer = self.set_timer(
                self.pacer.due_in(), self._flush_panels, name="panels"
            )

    def _flush_panels(self) -> None:
        """The end of a gap: the panels show the newest snapshot (the header already does)."""
        self._panels_timer = None
        if self.paused or not self.pacer.flush():
            return
        try:
            self._render_world()
        except NoMatches:  # the timer fired while the screen was being torn down
            pass

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group == "source" and event.state == WorkerState.ERROR:
            err = worker.error
            self._worker_error = f"reader failed: {type(err).__name__}: {err}"[:300]
            self._check_reader(self.latest)

    # ------------------------------------------------------------------ new runs, errors
    def _follow_new_runs(self, snap: WorldSnapshot) -> None:
        if self.mode == REPLAY:
            return
        rid = self.new_runs.see(snap)
        if rid is not None:
            self.source.select(rid)
            self.notify(f"now showing the new run {clean(rid)}", timeout=5, markup=False)
        self._render_notice()

    def _note_captures(self, snap: WorldSnapshot) -> None:
        msg = self.captures.see(snap.selected)
        if msg is not None:
            self.notify(msg, timeout=8, markup=False)

    def _check_reader(self, snap: WorldSnapshot | None) -> None:
        err = self._worker_error or reader_error(snap, getattr(self.source, "last_error", None))
        if err or getattr(self.source, "failed", False) is True:
            self.failed = True
        if err != self.reader_error:
            self.reader_error = err
            self._render_notice()

    def _render_notice(self) -> None:
        self.query_one(NoticeBar).show(self.reader_error, self.new_runs.waiting)

    def exit_code(self) -> int:
        """1 when the reader failed during the session (`tui watch` exits with it), else 0."""
        return 1 if self.failed else 0

    # ------------------------------------------------------------------ drawing
    def _age_header(self) -> None:
        """Once a second: only the header of a live run changes as time passes (and a
        reader that fails between snapshots is noticed)."""
        try:
            self._check_reader(self.latest)
            run = self.world.selected if self.world else None
            if run is not None and run.state in ("running", "stale") and not run.replay:
                self._render_header()
        except NoMatches:  # the timer fired while the screen was being torn down
            pass

    def _render_header(self) -> None:
        # live: the newest snapshot (the panels may be up to one gap behind); paused: the
        # held one, with how far reading went
        new = self.latest
        w = self.world if self.paused or new is None else new
        run = w.selected if w else None
        self.header_world = w
        age = max(0.0, self.clock() - w.made_at) if w is not None and w.made_at else 0.0
        idle = None
        sel = new.selected if new is not None else None
        if self.paused and run is not None and sel is not None and sel.run_id == run.run_id:
            # the files kept growing while the screen holds: age from the newest snapshot
            idle = sel.idle_s + (max(0.0, self.clock() - new.made_at) if new.made_at else 0.0)
        self.query_one(HeaderBar).show(
            run,
            window=self.window,
            paused=self.paused,
            behind_step=sel.step if sel is not None else None,
            root=str(w.root if w else getattr(self.source, "root", "")),
            age=age,
            idle_s=idle,
            span=self._span(self._panel_run(run)) if run is not None else None,
        )

    def _panel_run(self, run: RunSnapshot) -> RunSnapshot:
        """The run as the panels show it, when they show the same run: the header names the
        span the panels' figures are of (a light or newer snapshot would count other steps)."""
        shown = self.world.selected if self.world else None
        return shown if shown is not None and shown.run_id == run.run_id else run

    def _render_world(self, force_tree: bool = False) -> None:
        w = self.world
        run = w.selected if w else None
        self.pacer.drawn()
        if self._panels_cpu is None:
            self._panels_cpu = time.thread_time()
            self.call_after_refresh(self._panels_cost)
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
        self._render_advice(run)
        self._fit_heights()  # new heights laid out with this redraw, not in a layout after it
        self.call_after_refresh(self._fit_heights)
        if w is not None:
            self.query_one(FilesLine).show(run, w)
        self.applied += 1
        if run is not None and not self._gc_frozen:
            self.call_after_refresh(self._freeze_gc)  # after the first screen is drawn

    def _panels_cost(self) -> None:
        """After a panel redraw is on screen: its CPU (this thread's, and the reader's for
        the full snapshot it drew) sets the gap to the next one (:meth:`Pacer.note_cost`)."""
        if self._panels_cpu is None:
            return
        cost = time.thread_time() - self._panels_cpu
        self._panels_cpu = None
        full = getattr(self.source, "full_cost_s", 0.0)
        full = full if isinstance(full, float) else 0.0
        self.pacer.note_cost(cost + full, full)
        if hasattr(self.source, "full_gap"):  # full snapshots as often as the panels draw them
            self.source.full_gap = self.pacer.gap  # type: ignore[attr-defined]

    def _render_advice(self, run: RunSnapshot | None) -> None:
        advice = self.query_one(AdviceBox)
        if run is None:
            advice.show([])
            set_title(advice, "advice")
        else:  # judged by the source (tui.diagnosis.advice.with_advice), of both spans
            advice.show(list(run.advice_window if self.window else run.advice))
            set_title(advice, f"advice · {self._span(run)}")

    def _span(self, run: Any) -> str:
        """The statistics' time span, as every panel names it (as the summary and the advice
        do: the diagnosis names it)."""
        if run is not None:
            try:
                return clean(span_label(run, self.window))
            except Exception:
                pass
        return f"last {run.window_size} steps" if self.window and run is not None else "whole run"

    def _render_ranks(self) -> None:
        run = self.world.selected if self.world else None
        self.query_one(RankView).show(run, self.selected_region, self.window, self.red, self.yellow)
        self.query_one(RegionChart).show(run, self.selected_region)

    def _freeze_gc(self) -> None:
        """Once the first run is on screen: the objects made so far (Textual's widgets and
        styles, the modules, the run read so far) live as long as the app, so the cyclic
        collector stops walking them (gc.freeze). Its full collections, every ~10 s while a
        run streams in, cost ~60-130 ms each here otherwise. Undone when the app ends."""
        if not self._gc_frozen:
            self._gc_frozen = True
            gc.freeze()

    # ------------------------------------------------------------------ picking
    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted) -> None:
        self.selected_region = event.node.data
        self._render_ranks()

    def on_stage_tree_lines_changed(self, event: StageTree.LinesChanged) -> None:
        self.call_after_refresh(self._fit_heights)

    def on_need_changed(self, event: NeedChanged) -> None:
        self.call_after_refresh(self._fit_heights)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self._select_index(event.option_index)

    def _select_index(self, i: int) -> None:
        runs = self.world.runs if self.world else ()
        if 0 <= i < len(runs):
            self.pacer.urgent = True
            self.source.select(runs[i].run_id)
