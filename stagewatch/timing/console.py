"""The terminal panel of the top regions (rank 0 only), and its line-based fallback.

On a terminal the panel is redrawn in place with ANSI cursor movement, but only when
nothing else reached the terminal since the last draw: ``sys.stdout`` and ``sys.stderr``
are wrapped by a thin proxy that counts writes while the panel is active. If anything
else was printed, the panel is drawn anew below it instead of overwriting it. Output that
bypasses ``sys.stdout``/``sys.stderr`` (a subprocess, C code writing to fd 1) is not seen;
that is the one case where a redraw can overwrite other text.

When stdout is not a terminal (CI, ``| tee``, a file) a single summary line is printed
every interval instead.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from typing import Any, TextIO

BAR_WIDTH = 30
NAME_WIDTH = 20
TOP_N = 5


_WRITES = [0]  # writes seen by every proxy (shared, so several panels agree)


class _WriteWatch:
    """Proxy of a text stream that counts non-empty writes; everything else is delegated."""

    def __init__(self, inner: Any, counter: list[int] = _WRITES) -> None:
        self._sw_inner = inner
        self._sw_counter = counter

    def write(self, s: str) -> int:
        if s:
            self._sw_counter[0] += 1
        return self._sw_inner.write(s)

    def writelines(self, lines: Any) -> None:
        self._sw_counter[0] += 1
        self._sw_inner.writelines(lines)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sw_inner, name)


def raw_stream(stream: Any) -> Any:
    """The real stream under the panel's write counter (``stream`` itself if not wrapped).

    Output written here is not counted as "something else printed", so a line that must sit
    under the panel (the trainer's progress line) does not stop its in-place redraw.
    """
    return stream._sw_inner if isinstance(stream, _WriteWatch) else stream


def stream_is_tty(stream: Any) -> bool:
    """``stream.isatty()``, False for streams without one or already closed."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _short(name: str, width: int) -> str:
    """Fit a region path in ``width`` columns, keeping its tail (the leaf is what differs)."""
    if len(name) <= width:
        return name
    return "…" + name[-(width - 1) :]


def _bar(share: float, width: int = BAR_WIDTH) -> str:
    filled = max(0, min(width, round(share * width)))
    return "█" * filled + "░" * (width - filled)


def _sanitize(text: str) -> str:
    # region names are data: no control characters may reach the terminal
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def panel_lines(
    step: int,
    wall_ms: float,
    top: Sequence[tuple[str, float]],
    unaccounted: float,
    width: int,
    rate: str = "",
) -> list[str]:
    """The panel's lines (no newlines), each at most ``width`` columns."""
    head = f"┌─ Timing Profile (Step {step}) "
    lines = [head + "─" * max(0, min(width, 50) - len(head))]
    for name, ms in top:
        share = ms / wall_ms if wall_ms > 0 else 0.0
        label = f"{_short(_sanitize(name), NAME_WIDTH):<{NAME_WIDTH}}"
        lines.append(f"│ {label} {_bar(share)} {ms:8.1f}ms {share * 100:5.1f}%")
    if wall_ms > 0:
        share = unaccounted / wall_ms
        label = f"{'(unaccounted)':<{NAME_WIDTH}}"
        lines.append(f"│ {label} {_bar(share)} {unaccounted:8.1f}ms {share * 100:5.1f}%")
    foot = f"└─ Total: {wall_ms:8.1f}ms {rate}".rstrip() + " "
    lines.append(foot + "─" * max(0, min(width, 50) - len(foot)))
    return [ln[: max(1, width - 1)] for ln in lines]


def summary_line(
    step: int, wall_ms: float, top: Sequence[tuple[str, float]], unaccounted: float, rate: str = ""
) -> str:
    """The non-terminal fallback: one line per update."""

    def pct(ms: float) -> str:
        return f"{100.0 * ms / wall_ms:.1f}%" if wall_ms > 0 else "-"

    parts = [f"[timing] step {step}", f"wall {wall_ms:.1f}ms" + (f" {rate}" if rate else "")]
    parts += [f"{_sanitize(n)} {ms:.1f}ms {pct(ms)}" for n, ms in top]
    parts.append(f"unaccounted {unaccounted:.1f}ms {pct(unaccounted)}")
    return " | ".join(parts)


class Console:
    """Draws updates on ``stream`` (default: the current ``sys.stdout`` at each draw)."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self._stream = stream
        self._tty_override = tty
        # a private stream is ours alone; sys.stdout/stderr writes are counted globally
        self._counter = [0] if stream is not None else _WRITES
        self._seen = -1  # writes counted at the end of our last draw
        self._drawn = 0  # lines of our last panel
        self._width = 0  # terminal width at our last draw
        self._installed: list[tuple[str, Any, Any]] = []

    def _target(self) -> Any:
        return self._stream if self._stream is not None else sys.stdout

    def is_tty(self) -> bool:
        if self._tty_override is not None:
            return self._tty_override
        return stream_is_tty(self._target())

    def _install_watch(self) -> None:
        """Count writes to sys.stdout / sys.stderr, so a redraw never overwrites them."""
        if self._installed or self._stream is not None:
            return
        for attr in ("stdout", "stderr"):
            cur = getattr(sys, attr)
            if cur is None or isinstance(cur, _WriteWatch):
                continue
            proxy = _WriteWatch(cur, self._counter)
            setattr(sys, attr, proxy)
            self._installed.append((attr, cur, proxy))

    def _raw(self) -> Any:
        return raw_stream(self._target())

    def update(
        self,
        step: int,
        wall_ms: float,
        top: Sequence[tuple[str, float]],
        unaccounted: float,
        rate: str = "",
    ) -> None:
        if self.is_tty():
            self._install_watch()
            self._draw_panel(step, wall_ms, top, unaccounted, rate)
        else:
            out = self._raw()
            out.write(summary_line(step, wall_ms, top, unaccounted, rate) + "\n")
            out.flush()

    def _watching(self) -> bool:
        if self._stream is not None:
            return True  # a private stream: only we write to it
        return isinstance(sys.stdout, _WriteWatch) and isinstance(sys.stderr, _WriteWatch)

    def _draw_panel(
        self,
        step: int,
        wall_ms: float,
        top: Sequence[tuple[str, float]],
        unaccounted: float,
        rate: str,
    ) -> None:
        width = shutil.get_terminal_size((80, 24)).columns
        lines = panel_lines(step, wall_ms, top, unaccounted, width, rate)
        out = self._raw()
        prefix = ""
        # redraw in place only if our panel is the last thing on the terminal (and the
        # terminal was not resized, which may have re-wrapped it)
        if (
            self._drawn
            and self._counter[0] == self._seen
            and width == self._width
            and self._watching()
        ):
            prefix = f"\x1b[{self._drawn}A\r\x1b[J"
        out.write(prefix + "\n".join(lines) + "\n")
        out.flush()
        self._drawn = len(lines)
        self._width = width
        self._seen = self._counter[0]

    def close(self) -> None:
        """Remove the stream proxies (only those still in place)."""
        for attr, orig, proxy in self._installed:
            if getattr(sys, attr) is proxy:
                setattr(sys, attr, orig)
        self._installed.clear()


def samples_rate_label(per_rank: float, world_size: int = 1) -> str:
    """Throughput with its scope: ``12.50 samples/s`` for one rank; with several,
    ``50.00 samples/s global (12.50/rank × 4)`` (every rank processes the same batch)."""
    if world_size <= 1:
        return f"{per_rank:.2f} samples/s"
    return f"{per_rank * world_size:.2f} samples/s global ({per_rank:.2f}/rank × {world_size})"
