"""What a classic text log's nesting is and on what evidence (plain data for the screens).

The original logger wrote nested parts (the forward total, and VRT inside it) as separate
top-level names, and its ``Total`` line summed them all. The reader
(:mod:`tui.source.nesting`) infers which top-level names hold which from the numbers, or
takes it from ``--nest``; this module only says what it decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

INFERRED = "inferred"  # from the numbers
GIVEN = "given"  # --nest
OFF = "off"  # --no-nest
NONE = "none"  # looked, found nothing nested: the log reads as written


@dataclass(frozen=True, slots=True)
class NestRule:
    """One parent and the top-level names nested under it, with the evidence.

    ``fit`` of ``steps`` steps had the children's sum within the parent's time and at least
    90% of it; ``share_min``/``share_avg``: that sum as a share of the parent's time.
    """

    parent: str
    children: tuple[str, ...]
    steps: int
    fit: int
    share_min: float
    share_avg: float
    share_max: float = 1.0  # above 1 (beyond rounding): the sum exceeds the parent (--nest)

    def line(self) -> str:
        kids = ", ".join(self.children)
        if not self.steps:
            return f"{self.parent} ⊃ {kids} (none of them is in the log)"
        top = max(1.0, self.share_max)
        line = (
            f"{self.parent} ⊃ {kids} (sum within it in {self.fit}/{self.steps} steps, "
            f"{self.share_min:.0%}–{top:.0%} of it, avg {self.share_avg:.0%})"
        )
        if self.fit < 0.95 * self.steps:  # only a --nest can be this (inference needs 95%)
            line += " — the numbers do not bear it out"
        return line


@dataclass(frozen=True, slots=True)
class NestNote:
    """A text log's nesting: ``how`` (inferred, given, off, none), the rules applied, and
    ``timed_only``: the file holds timed totals only, no step wall time (the original
    logger's log; stagewatch's own text log has the step wall time)."""

    how: str
    rules: tuple[NestRule, ...] = ()
    timed_only: bool = True
    detail: str = ""  # e.g. a rule dropped because later steps broke it

    def line(self) -> str:
        """One line for the summary and the screen's notice."""
        if self.how == OFF:
            head = "nesting off (--no-nest): top-level names read as written"
        elif not self.rules:
            head = "no nesting found: top-level names read as written"
        else:
            how = "inferred from the numbers" if self.how == INFERRED else "given by --nest"
            rules = "; ".join(r.line() for r in self.rules)
            head = f"nesting {how}: {rules}; the timed total is the outermost times"
        return f"{head} ({self.detail})" if self.detail else head

    def brief(self) -> str:
        """A short form for the screen's header: the parents and their evidence."""
        if self.how == OFF:
            return "nesting off (--no-nest)"
        if not self.rules:
            return "no nesting found in the text log"
        how = "inferred" if self.how == INFERRED else "given"
        parts = []
        for r in self.rules:
            kids = r.children[0] + (f" +{len(r.children) - 1}" if len(r.children) > 1 else "")
            fit = f" ({r.fit}/{r.steps} steps)" if r.steps else ""
            parts.append(f"{r.parent} ⊃ {kids}{fit}")
        return f"nesting {how}: " + "; ".join(parts)

    def as_dict(self) -> dict[str, object]:
        return {
            "how": self.how,
            "timed_only": self.timed_only,
            "rules": [
                {
                    "parent": r.parent,
                    "children": list(r.children),
                    "steps": r.steps,
                    "fit_steps": r.fit,
                    "share_min": round(r.share_min, 4),
                    "share_avg": round(r.share_avg, 4),
                    "share_max": round(r.share_max, 4),
                }
                for r in self.rules
            ],
            "detail": self.detail or None,
        }


TIMED_ONLY = (
    "a classic text log: timed totals only, no step wall time (the original logger timed "
    "the forward pass, not the whole step)"
)


def timed_only(files: tuple[Any, ...]) -> bool:
    """Whether the run's figures are timed totals, not step wall times: every file is a
    text log that holds no step wall time."""
    notes = [getattr(f, "nesting", None) for f in files]
    return bool(notes) and all(n is not None and n.timed_only for n in notes)


def nest_lines(files: tuple[Any, ...]) -> list[str]:
    """One line per distinct text-log nesting of the run's files (rank named when they
    differ)."""
    notes = [(f.rank, n) for f in files if (n := getattr(f, "nesting", None)) is not None]
    lines = {n.line(): r for r, n in notes}
    if len(lines) <= 1:
        return list(lines)
    return [f"rank {r}: {line}" for line, r in lines.items()]


def nest_briefs(files: tuple[Any, ...]) -> list[str]:
    """:meth:`NestNote.brief` of each distinct nesting of the run's files."""
    notes = [n for f in files if (n := getattr(f, "nesting", None)) is not None]
    return list(dict.fromkeys(n.brief() for n in notes))
