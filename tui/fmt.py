"""Formatting shared by the screen and ``tui summary``. Log strings become rich ``Text``
(never markup), so a region named ``[bold]x`` shows exactly that."""

from __future__ import annotations

import math

from rich.text import Text

from trainer.timing.records import classify
from tui.snapshot import Stats

CLASS_STYLE = {"red": "bold red", "yellow": "yellow", "green": "green", "none": "dim"}
STATE_STYLE = {
    "running": "bold green",
    "finished": "bold blue",
    "failed": "bold red",
    "interrupted": "bold yellow",
    "stale": "bold magenta",
    "waiting": "dim",
}
STATE_ICON = {
    "running": "●",
    "finished": "✔",
    "failed": "✖",
    "interrupted": "◼",
    "stale": "◌",
    "waiting": "…",
}
BAR_FULL = "█"
BAR_EMPTY = "░"
_EIGHTHS = " ▏▎▍▌▋▊▉"


def ok(x: float | None) -> bool:
    return x is not None and not math.isnan(x)


def fmt_ms(x: float | None) -> str:
    """Milliseconds in a short fixed width: ``0.12ms``, ``965.0ms``, ``4.21s``."""
    if not ok(x):
        return "—"
    assert x is not None
    if x >= 100_000:
        return f"{x / 1000:.0f}s"
    if x >= 10_000:
        return f"{x / 1000:.1f}s"
    if x >= 1000:
        return f"{x / 1000:.2f}s"
    if x >= 100:
        return f"{x:.0f}ms"
    if x >= 10:
        return f"{x:.1f}ms"
    return f"{x:.2f}ms"


def fmt_pct(share: float | None) -> str:
    return f"{share * 100:5.1f}%" if ok(share) else "    —"


def fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return "—"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "—"  # pragma: no cover


def fmt_duration(s: float | None) -> str:
    if s is None or not ok(s) or s < 0:
        return "—"
    s = round(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def fmt_rate(x: float | None) -> str:
    if not ok(x):
        return "—"
    assert x is not None
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def class_of(stats: Stats, red: float, yellow: float) -> str:
    return classify(stats.share, red, yellow) if ok(stats.share) else "none"


def bar(share: float | None, width: int = 10) -> str:
    """A bar of ``width`` cells filled to ``share`` (0..1), with eighth-cell precision."""
    if not ok(share):
        return BAR_EMPTY * width
    assert share is not None
    cells = max(0.0, min(1.0, share)) * width
    full = int(cells)
    rest = int((cells - full) * 8)
    s = BAR_FULL * full
    if full < width:
        s += (_EIGHTHS[rest] if rest else "") + BAR_EMPTY * (width - full - (1 if rest else 0))
    return s


def clean(s: object) -> str:
    """A string from a file or a path, safe for a terminal: every non-printable character
    (ESC, BEL, CR, ...) written as an escape, so nothing in a log can drive the terminal."""
    s = str(s)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


def literal(s: str) -> Text:
    """A log string as text, control characters made visible (never markup)."""
    return Text(clean(s))
