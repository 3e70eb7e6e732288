"""Key bindings as data: the app's BINDINGS, the help screen and the command palette
are all generated from :data:`KEYS`."""

from __future__ import annotations

from dataclasses import dataclass

WATCH = "watch"
REPLAY = "replay"
BOTH = (WATCH, REPLAY)


@dataclass(frozen=True, slots=True)
class Key:
    keys: str  # Textual key names, comma separated
    action: str  # App action (without "action_")
    description: str
    group: str
    modes: tuple[str, ...] = BOTH
    show: bool = True  # in the footer
    priority: bool = False  # before the focused widget's own keys (space, arrows)

    @property
    def display(self) -> str:
        names = {
            "question_mark": "?",
            "slash": "/",
            "space": "space",
            "right": "→",
            "left": "←",
            "plus": "+",
            "minus": "-",
            "home": "home",
            "end": "end",
            "escape": "esc",
            "bracketright": "]",
            "bracketleft": "[",
        }
        return " ".join(names.get(k, k) for k in self.keys.split(","))


KEYS: tuple[Key, ...] = (
    Key("q", "quit", "Quit", "General"),
    Key("question_mark", "help", "Help: every key", "General"),
    Key("p", "toggle_pause", "Pause/resume the screen (data keeps being read)", "General", (WATCH,)),
    Key("slash", "filter", "Filter regions by name", "Tree"),
    Key("escape", "clear_filter", "Clear the filter", "Tree", show=False),
    Key("e", "expand_all", "Expand all", "Tree"),
    Key("c", "collapse_all", "Collapse all", "Tree"),
    Key("s", "toggle_sort", "Sort by time / by name", "Tree"),
    Key("w", "toggle_window", "Recent window / whole-run statistics", "Tree"),
    Key("n", "next_run", "Next run", "Runs", (WATCH,)),
    Key("N", "prev_run", "Previous run", "Runs", (WATCH,), show=False),
    Key("space", "replay_play", "Play/pause the replay", "Replay", (REPLAY,), priority=True),
    Key("right", "replay_forward", "One step forward", "Replay", (REPLAY,), show=False, priority=True),
    Key("left", "replay_back", "One step back", "Replay", (REPLAY,), show=False, priority=True),
    Key("home", "replay_start", "Jump to the start", "Replay", (REPLAY,), show=False, priority=True),
    Key("end", "replay_end", "Jump to the end", "Replay", (REPLAY,), show=False, priority=True),
    Key("plus,equals_sign", "replay_faster", "Faster (x2)", "Replay", (REPLAY,)),
    Key("minus", "replay_slower", "Slower (/2)", "Replay", (REPLAY,)),
)


def keys_for(mode: str) -> tuple[Key, ...]:
    return tuple(k for k in KEYS if mode in k.modes)
