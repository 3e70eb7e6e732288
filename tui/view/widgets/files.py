"""The files line (lines read, malformed lines, files gone) and the files' problems."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.fmt import clean, literal
from tui.model.snapshot import FileInfo, RunSnapshot, WorldSnapshot
from tui.view.widgets.base import show_text

FILE_SIGN = {
    "missing": "✖ removed",
    "unreadable": "✖ unreadable",
    "not-regular": "✖ not a regular file",
    "symlink-loop": "✖ symlink loop",
}


def file_problems(run: RunSnapshot) -> list[tuple[FileInfo, str]]:
    """Rank files that are gone or cannot be read, with a short why (figures from them are
    the last ones read). The reader's ``state``/``problem`` fields are read defensively."""
    out = []
    for f in run.files:
        state = getattr(f, "state", "ok") or "ok"
        if state == "ok":
            continue
        sign = FILE_SIGN.get(state, f"✖ {clean(state)}")
        problem = clean(getattr(f, "problem", "") or "")
        out.append((f, f"{sign}: {problem[:80]}" if problem and state != "missing" else sign))
    return out


class FilesLine(Static):
    """Files read and malformed lines (never fatal, always shown)."""

    def show(self, run: RunSnapshot | None, world: WorldSnapshot) -> None:
        if run is None:
            show_text(self, Text(f"{len(world.runs)} runs", style="dim"))
            return
        t = Text(style="dim")
        t.append(f"{len(run.files)} file(s), {sum(f.lines for f in run.files)} lines")
        for f, why in file_problems(run):
            t.append(" · ")
            t.append_text(literal(f.path.rsplit("/", 1)[-1]))
            t.append(f" {why}", style="bold red")
        bad = [f for f in run.files if f.malformed]
        for f in run.files:
            if getattr(f, "interleaved", 0):  # one file, several processes: not split
                t.append(" · ")
                t.append_text(literal(f.path.rsplit("/", 1)[-1]))
                t.append(
                    " mixes several processes' blocks as one rank (not split: the blocks "
                    "carry no rank, process id or time)",
                    style="yellow",
                )
        blank = sum(getattr(f, "blank", 0) for f in run.files)
        if blank:
            t.append(f" · {blank} empty Step blocks not counted")
        skipped = sum(f.skipped for f in run.files)
        if skipped:
            t.append(f" · {skipped} records of unknown kinds skipped")
        if bad:
            t.append(" · malformed: ", style="bold yellow")
            for i, f in enumerate(bad):
                if i:
                    t.append(", ")
                t.append_text(literal(f.path.rsplit("/", 1)[-1]))
                t.append(f" {f.malformed}", style="bold yellow")
            last = next((f.last_error for f in reversed(bad) if f.last_error), "")
            if last:
                t.append(" (last: ")
                t.append_text(literal(last[:120]))
                t.append(")")
        show_text(self, t)
