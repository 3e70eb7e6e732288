"""Key bindings as data: the app's BINDINGS, the footer, the help screen and the command
palette are all generated from :data:`KEYS`.

A key with ``action=""`` belongs to a widget (the tree's own arrows, enter, space...): it is
not bound by the app, only listed in help, so help tells every key the screen answers to.
"""

from __future__ import annotations

from dataclasses import dataclass

WATCH = "watch"
REPLAY = "replay"
BOTH = (WATCH, REPLAY)

# Textual key names as people read them on a keyboard ("ctrl+c" -> "Ctrl+C").
KEY_NAMES = {
    "question_mark": "?",
    "slash": "/",
    "space": "Space",
    "enter": "Enter",
    "tab": "Tab",
    "escape": "Esc",
    "right": "→",
    "left": "←",
    "up": "↑",
    "down": "↓",
    "plus": "+",
    "equals_sign": "=",
    "minus": "-",
    "home": "Home",
    "end": "End",
    "pageup": "PgUp",
    "pagedown": "PgDn",
    "bracketright": "]",
    "bracketleft": "[",
}


def key_name(key: str) -> str:
    """One Textual key name as typed: ``ctrl+c`` -> ``Ctrl+C``, ``f1`` -> ``F1``, ``N`` -> ``N``."""
    *mods, base = key.split("+") if key != "plus" else ["plus"]
    if base in KEY_NAMES:
        name = KEY_NAMES[base]
    elif len(base) == 1:
        name = base.upper() if mods else base
    elif base[0] == "f" and base[1:].isdigit():
        name = base.upper()
    else:
        name = base.capitalize()
    return "+".join([*(m.capitalize() for m in mods), name])


@dataclass(frozen=True, slots=True)
class Key:
    keys: str  # Textual key names, comma separated
    action: str  # App action (without "action_"); "" for a widget's own key (help only)
    description: str
    group: str
    modes: tuple[str, ...] = BOTH
    show: bool = True  # in the footer
    priority: bool = False  # before the focused widget's own keys (space, arrows)
    footer: str = ""  # short footer label (default: the description up to " (")
    in_input: bool = False  # also while typing in the filter box (Ctrl+C)
    palette: bool = True  # in the command palette

    @property
    def display(self) -> str:
        """The keys as people type them, e.g. ``Ctrl+C``, ``F1``, ``Space``, ``↑ ↓``."""
        return " ".join(key_name(k) for k in self.keys.split(","))

    @property
    def label(self) -> str:
        return self.footer or self.description.split(" (")[0]


KEYS: tuple[Key, ...] = (
    Key("q,f10", "quit", "Quit", "General", palette=False),
    Key(
        "ctrl+c",
        "quit_now",
        "Quit (also while typing a filter)",
        "General",
        show=False,
        priority=True,
        in_input=True,
        palette=False,
    ),
    Key("question_mark,f1", "help", "Help: every key", "General", footer="Help"),
    Key(
        "p",
        "toggle_pause",
        "Pause/resume the screen (data keeps being read)",
        "General",
        (WATCH,),
        footer="Pause",
    ),
    Key("slash", "filter", "Filter regions by name (as you type)", "Tree", footer="Filter"),
    Key("escape", "clear_filter", "Clear the filter", "Tree", show=False, palette=False),
    Key("e", "expand_all", "Expand all", "Tree", show=False),
    Key("c", "collapse_all", "Collapse all", "Tree", show=False),
    Key("s", "toggle_sort", "Sort by time / by name", "Tree", footer="Sort"),
    Key("w", "toggle_window", "Recent window / whole-run statistics", "Tree", footer="Span"),
    Key(
        "g",
        "toggle_chart",
        "Chart of the region over the run: per rank / min, median, max across ranks",
        "Tree",
        footer="Chart",
    ),
    Key(
        "up,down",
        "",
        "Move the cursor (the rank panel and the chart follow it)",
        "Tree",
        show=False,
    ),
    Key("enter", "", "Expand/collapse the region under the cursor", "Tree", show=False),
    Key("space", "", "Expand/collapse the region under the cursor", "Tree", (WATCH,), show=False),
    Key("shift+space", "", "Expand/collapse it and everything below", "Tree", show=False),
    Key("shift+left", "", "Cursor to the parent region", "Tree", show=False),
    Key("shift+up,shift+down", "", "Cursor to the previous/next sibling", "Tree", show=False),
    Key(
        "tab,shift+tab",
        "",
        "Move between the tree and the runs list",
        "General",
        (WATCH,),
        show=False,
    ),
    Key(
        "n",
        "next_run",
        "Next run (or the new run a notice names)",
        "Runs",
        (WATCH,),
        footer="Next run",
    ),
    Key("N", "prev_run", "Previous run", "Runs", (WATCH,), show=False),
    Key(
        "t",
        "capture",
        "Trace the next step of every rank (torch.profiler, into the run's traces/)",
        "Runs",
        (WATCH,),
        show=False,
    ),
    Key(
        "space",
        "replay_play",
        "Play/pause the replay",
        "Replay",
        (REPLAY,),
        priority=True,
        footer="Play",
    ),
    Key(
        "right",
        "replay_forward",
        "One step forward",
        "Replay",
        (REPLAY,),
        show=False,
        priority=True,
    ),
    Key("left", "replay_back", "One step back", "Replay", (REPLAY,), show=False, priority=True),
    Key(
        "home", "replay_start", "Jump to the start", "Replay", (REPLAY,), show=False, priority=True
    ),
    Key("end", "replay_end", "Jump to the end", "Replay", (REPLAY,), show=False, priority=True),
    Key("plus,equals_sign", "replay_faster", "Faster (x2)", "Replay", (REPLAY,), footer="Faster"),
    Key("minus", "replay_slower", "Slower (/2)", "Replay", (REPLAY,), footer="Slower"),
)


# the header's last field: the keys to know first (the footer and help list them all)
HINT = {
    WATCH: "? help",
    REPLAY: "space play · ←/→ step · Home/End · +/- speed · ? help",
}


def keys_for(mode: str) -> tuple[Key, ...]:
    return tuple(k for k in KEYS if mode in k.modes)


def bound_keys() -> tuple[Key, ...]:
    """The keys the app binds (not the widgets' own)."""
    return tuple(k for k in KEYS if k.action)
