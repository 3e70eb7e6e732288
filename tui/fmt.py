"""Formatting shared by the screen, ``tui summary`` and the model's reasons. Log strings
become rich ``Text`` (never markup), so a region named ``[bold]x`` shows exactly that.
A leaf: it imports nothing of the monitor."""

from __future__ import annotations

import math
from typing import Any

from rich.text import Text

from stagewatch.cli import printable
from stagewatch.records import classify

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
    """A number that can be shown (not None, not NaN)."""
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def finite(x: float | int | None) -> float | None:
    """``x`` as a finite float, or None (None, NaN, ±inf, an int too large for a float)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (OverflowError, TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_ms(x: float | None) -> str:
    """Milliseconds in a short fixed width: ``0.12ms``, ``965ms``, ``4.21s``, ``2h00m``.

    The value is rounded to the digits shown *before* the unit is chosen, so 999.96 ms is
    ``1.00s``, never ``1000ms``; from 100 s on it is a duration (``1m40s``, ``2h00m``).
    Total: any input gives a string (``—`` for unknown, ``∞`` for infinite, ``-`` signs kept).
    """
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    v = finite(x)
    if v is None:
        return "∞" if _positive_inf(x) else "—"
    if v < 0:
        return "-" + fmt_ms(-v)
    if round(v, 2) < 10:
        return f"{v:.2f}ms"
    if round(v, 1) < 100:
        return f"{v:.1f}ms"
    if round(v) < 1000:
        return f"{v:.0f}ms"
    s = v / 1000.0
    if round(s, 2) < 10:
        return f"{s:.2f}s"
    if round(s, 1) < 100:
        return f"{s:.1f}s"
    return fmt_duration(s)


def _positive_inf(x: object) -> bool:
    try:
        return float(x) > 0  # type: ignore[arg-type]
    except OverflowError:
        return int(x) > 0  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return False


def fmt_pct(share: float | None) -> str:
    v = finite(share)
    if v is None:
        return "    —"
    if abs(v) >= 100:  # an absurd share (a region longer than its step): no wide column
        return " >999%" if v > 0 else "<-999%"
    return f"{v * 100:5.1f}%"


def fmt_bytes(n: int | float | None) -> str:
    v = finite(n)
    if v is None:
        return "∞" if n is not None and not isinstance(n, bool) and _positive_inf(n) else "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        r = round(v) if unit == "B" else round(v, 1)
        if abs(r) < 1024 or unit == "PiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return "—"  # pragma: no cover


def fmt_duration(s: float | None) -> str:
    """Seconds as ``45s``, ``3m05s``, ``2h00m``, ``3d04h`` (rounded to the second first);
    ``∞`` for an infinite or absurd duration, ``—`` for unknown or negative."""
    v = finite(s)
    if v is None:
        return (
            "∞" if s is not None and not isinstance(s, bool) and ok(s) and _positive_inf(s) else "—"
        )
    if v < 0:
        return "—"
    if v >= 1e9:  # ~31 years: an ETA from a rate near zero
        return "∞"
    r = round(v)
    d, r = divmod(r, 86400)
    h, r = divmod(r, 3600)
    m, r = divmod(r, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{r:02d}s"
    return f"{r}s"


def fmt_rate(x: float | None) -> str:
    v = finite(x)
    if v is None:
        return "—"
    return f"{v:.3g}" if round(v, 1) < 100 else f"{v:.0f}"


def fmt_num(x: float | int | None, digits: int = 4) -> str:
    """A scalar (loss, lr, a metric) to ``digits`` significant figures: ``1.05e-05``, ``0.1234``."""
    v = finite(x)
    if v is None:
        return "—" if not ok(x) else ("∞" if _positive_inf(x) else "-∞")
    return f"{v:.{digits}g}"


def sig(x: float | int | None, digits: int = 6) -> float | None:
    """A number for JSON: ``digits`` significant figures (an lr of 1.05e-05 stays 1.05e-05),
    None when not finite."""
    v = finite(x)
    if v is None:
        return None
    return float(f"{v:.{digits}g}")


def class_of(stats: Any, red: float, yellow: float) -> str:
    """The class of a region's statistics (anything with a ``share``: ``Stats``), ``none``
    when its share is unknown."""
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
    return printable(s)


def literal(s: str) -> Text:
    """A log string as text, control characters made visible (never markup)."""
    return Text(clean(s))
