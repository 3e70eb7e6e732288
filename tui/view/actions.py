"""What the keys do: the app's ``action_*`` handlers, one per :data:`tui.view.keys.KEYS` action.

:class:`KeyActions` is mixed into :class:`tui.view.app.MonitorApp` (Textual finds an action
by its name on the app); it works on the app's state and redraws, listed at its top.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from textual.app import SystemCommand
from textual.screen import ModalScreen, Screen
from textual.widgets import Input

from tui.view.keys import KEYS
from tui.view.notices import NewRuns
from tui.view.pacing import Pacer, Source
from tui.view.widgets.chart import RegionChart
from tui.view.widgets.help import HelpScreen
from tui.view.widgets.tree import StageTree

if TYPE_CHECKING:
    from textual.app import App

    _Base = App[int]
else:
    _Base = object


# the monitor's key actions that still run while a modal screen (help) is open
_OVER_MODAL = frozenset({"quit", "quit_now", "help"})


class KeyActions(_Base):
    """The key actions of the monitor (mixed into its app)."""

    # the app's state and redraws they use
    mode: str
    source: Source
    pacer: Pacer
    new_runs: NewRuns
    paused: bool
    window: bool
    red: float
    yellow: float
    _render_world: Callable[..., None]
    _render_header: Callable[[], None]
    _render_notice: Callable[[], None]
    _select_index: Callable[[int], None]
    exit_code: Callable[[], int]

    # ------------------------------------------------------------------ which, where
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        for k in KEYS:
            if k.action == action:
                if isinstance(self.screen, ModalScreen) and action not in _OVER_MODAL:
                    return False  # the help screen's keys stay there (no stepping the replay)
                if k.priority and not k.in_input and isinstance(self.focused, Input):
                    return False  # let the filter box have its keys
                return self.mode in k.modes
        return True

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for k in KEYS:
            if self.mode in k.modes and k.action and k.palette:
                yield SystemCommand(
                    k.description, f"key: {k.display}", getattr(self, f"action_{k.action}")
                )

    # ------------------------------------------------------------------ general
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

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused and self.pacer.resume():
            self._render_world()
            self._ask_full()
        else:
            self._render_header()

    def _ask_full(self) -> None:
        """The header is ahead of the panels (light snapshots came since the last full one):
        have the source post a full snapshot now and show it whole at once (``tui watch``)."""
        want = getattr(self.source, "want_full", None)
        if want is not None and self.pacer.wants_full() and not self.paused:
            self.pacer.urgent = True
            want()

    def _redraw_for_key(self, force_tree: bool) -> None:
        """A key redraws the panels: from the newest full snapshot (unless the screen holds),
        then asks for a fresh one if the header is ahead of it."""
        if not self.paused:
            self.pacer.resume()
        self._render_world(force_tree=force_tree)
        self._ask_full()

    # ------------------------------------------------------------------ tree
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

    def action_toggle_chart(self) -> None:
        """The chart: per rank <-> min/median/max across ranks."""
        self.query_one(RegionChart).toggle()

    # ------------------------------------------------------------------ runs
    def _move_run(self, d: int) -> None:
        w = self.pacer.world
        if not w or not w.runs:
            return
        ids = [r.run_id for r in w.runs]
        cur = w.selected.run_id if w.selected else ids[0]
        i = ids.index(cur) if cur in ids else 0
        self._select_index((i + d) % len(ids))

    def action_next_run(self) -> None:
        rid = self.new_runs.take()  # the notice's run first
        if rid is not None:
            self.pacer.urgent = True
            self.source.select(rid)
            self._render_notice()
            return
        self._move_run(1)

    def action_prev_run(self) -> None:
        self._move_run(-1)

    def action_capture(self) -> None:
        """Ask every rank of the run on screen for a profiler trace of its next step."""
        from stagewatch.traces import write_request
        from tui.fmt import clean

        w = self.pacer.world
        run = w.selected if w else None
        if run is None:
            self.notify("no run to trace", severity="warning", timeout=4)
            return
        if run.state not in ("running", "stale"):
            self.notify(
                f"{clean(run.run_id)} is {run.state}: no step left to trace",
                severity="warning",
                timeout=5,
                markup=False,
            )
            return
        try:
            write_request(run.path)
        except OSError as e:
            msg = f"cannot ask for a trace: {clean(run.path)}: {e.strerror}"
            self.notify(msg, severity="error", timeout=6, markup=False)
            return
        self.notify(
            "asked every rank for a profiler trace of its next step (needs slow-step "
            "capture on in the logger; the trace shows here when written)",
            timeout=6,
            markup=False,
        )

    # ------------------------------------------------------------------ replay
    def _replay(self, name: str) -> None:
        src = self.source
        if hasattr(src, "command"):
            self.pacer.urgent = True  # the answer to a key is shown whole at once
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
