"""Row order of the stage tree, defined once: first-seen (:func:`tree_rows`, the order of a
snapshot's regions), by share of time with hysteresis or by name (:func:`tree_sort`,
``tui summary``; :func:`screen_order`, the screen's rows, bounded). Torch- and Textual-free.

In every order a parent comes right before its subtree (depth-first, iterative: a deep tree
cannot overflow the stack) and siblings are ordered under their parent (the tree keeps its
shape). Sorting by time uses hysteresis: starting from the previous order,
a row moves ahead of another only when its share is larger by more than ``margin`` (a
fraction of the step, default half a percentage point), so rows whose shares are about equal
do not swap back and forth as the figures move. The result always satisfies: no row's share
exceeds that of any row before it among its siblings by more than ``margin``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from tui.model.rows import LIMITS

T = TypeVar("T")

SORTS = ("time", "name")
DEFAULT_MARGIN = 0.005
CUT = "…"  # the name of a row standing for tree rows not shown


def _parent(name: str) -> str | None:
    i = name.rfind("/")
    return name[:i] if i > 0 else None


def _depth_first(children: Callable[[str | None], Sequence[str]]) -> Iterator[str]:
    """Names from the root down, each parent right before its subtree, siblings in the order
    ``children(parent)`` gives them (``None``: the top level)."""
    stack = list(reversed(children(None)))
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(children(n)))


def tree_rows(
    names: Iterable[str],
    max_depth: int = LIMITS.MAX_NAME_DEPTH,
    max_rows: int = LIMITS.MAX_TREE_ROWS,
) -> list[tuple[str, bool]]:
    """``(name, cut)`` in first-seen order, each parent before its children, missing parents
    added; iterative and bounded: names deeper than ``max_depth`` levels become one cut row
    ``<ancestor>/…`` under their ancestor, and past ``max_rows`` rows one cut row ``…`` ends
    the list. A cut row stands for rows not shown."""
    full: dict[str, bool] = {}
    for n in names:
        parts = n.split("/", max_depth)
        deep = len(parts) > max_depth
        if deep:
            parts = parts[:max_depth]
        for i in range(1, len(parts) + 1):
            full.setdefault("/".join(parts[:i]), False)
        if deep:
            full["/".join(parts) + "/" + CUT] = True
        if len(full) > 4 * max_rows:
            break  # enough to fill the rows; the rest is cut below
    kids: dict[str | None, list[str]] = {}
    for n in full:
        kids.setdefault(_parent(n), []).append(n)
    out: list[tuple[str, bool]] = []
    for n in _depth_first(lambda p: kids.get(p, [])):
        if len(out) >= max_rows:
            out.append((CUT, True))
            break
        out.append((n, full[n]))
    else:
        if len(full) > 4 * max_rows:
            out.append((CUT, True))
    return out


def tree_order(names: Iterable[str]) -> list[str]:
    """Names in first-seen order, each parent before its children; missing parents added
    (bounded as :func:`tree_rows`, without its cut rows)."""
    return [n for n, cut in tree_rows(names) if not cut]


def hysteresis_order(
    names: Iterable[str],
    share: Callable[[str], float],
    prev: Sequence[str] | None = None,
    margin: float = DEFAULT_MARGIN,
) -> list[str]:
    """``names`` by decreasing ``share``, moving a name from its ``prev`` position only when it
    beats a name ahead of it by more than ``margin``. Names not in ``prev`` come after the
    known ones, by share. Unknown (NaN) shares count as 0."""

    def sh(n: str) -> float:
        v = share(n)
        return v if isinstance(v, (int, float)) and math.isfinite(v) else 0.0

    pool = list(dict.fromkeys(names))
    known = set(pool)
    start: list[str] = []
    if prev:
        start = [n for n in dict.fromkeys(prev) if n in known]
    seen = set(start)
    start += sorted((n for n in pool if n not in seen), key=lambda n: -sh(n))
    out: list[str] = []
    vals: list[float] = []
    for n in start:
        v = sh(n)
        # before the first row it beats by more than the margin; rows after that point are
        # within the margin of it by construction, so the invariant holds for the new list
        p = next((i for i, w in enumerate(vals) if w < v - margin), len(out))
        out.insert(p, n)
        vals.insert(p, v)
    return out


def tree_sort(
    rows: Sequence[T],
    name: Callable[[T], str],
    share: Callable[[T], float],
    *,
    by: str = "time",
    prev: Sequence[str] | None = None,
    margin: float = DEFAULT_MARGIN,
) -> list[T]:
    """``rows`` (a tree in any order where parents may be missing) with each parent's children
    sorted: ``by="time"`` by share with hysteresis against ``prev`` (the names in the order
    shown last), ``by="name"`` alphabetically. Parents stay before their subtrees."""
    if by not in SORTS:
        raise ValueError(f"sort must be one of {SORTS}")
    by_name = {name(r): r for r in rows}
    kids: dict[str | None, list[str]] = {}
    for n in by_name:
        p = _parent(n)
        while p is not None and p not in by_name:  # hang an orphan from its nearest ancestor
            p = _parent(p)
        kids.setdefault(p, []).append(n)
    pos = {n: i for i, n in enumerate(prev or ())}

    def children(p: str | None) -> list[str]:
        ks = kids.get(p, [])
        if by == "name":
            return sorted(ks)
        before = sorted((k for k in ks if k in pos), key=pos.__getitem__)
        return hysteresis_order(ks, lambda k: share(by_name[k]), before, margin)

    return [by_name[n] for n in _depth_first(children)]


def screen_order(
    rows: Sequence[T],
    name: Callable[[T], str],
    parent: Callable[[T], str | None],
    share: Callable[[T], float] | None,
    prev: dict[str | None, list[str]],
    max_rows: int,
) -> tuple[list[T], dict[str | None, list[str]]]:
    """The stage tree's rows as the screen shows them: depth first, siblings by ``share``
    with hysteresis against ``prev`` (each parent's last order), or by name when ``share`` is
    None (case-insensitive); a row whose parent is not among ``rows`` is at the top level; at
    most ``max_rows`` rows. Returns the rows and each parent's new order (for ``prev``)."""
    by_name = {name(r): r for r in rows}
    children: dict[str | None, list[T]] = {}
    for r in rows:
        p = parent(r)
        children.setdefault(p if p in by_name else None, []).append(r)
    order: dict[str | None, list[str]] = {}

    def kids(p: str | None) -> list[str]:
        rs = children.get(p)
        if not rs:
            return []
        if share is None:
            return [name(r) for r in sorted(rs, key=lambda r: (name(r).lower(), name(r)))]
        shares = {name(r): share(r) for r in rs}
        order[p] = hysteresis_order(list(shares), shares.__getitem__, prev.get(p, []))
        return order[p]

    out: list[T] = []
    for n in _depth_first(kids):
        if len(out) >= max_rows:
            break
        out.append(by_name[n])
    return out, order
