"""The stage tree: one node per region, labels updated in place as values change.

The tree is rebuilt only when its shape changes (a new region, another run, a filter or a
sort order); every other snapshot only replaces node labels, and a label is made when its
line is drawn: rows scrolled out of sight or under a collapsed node cost nothing until shown.
"""

from __future__ import annotations

from rich.cells import cell_len, set_cell_size
from rich.style import Style
from rich.text import Span, Text
from textual.geometry import Region, Size
from textual.message import Message
from textual.strip import Strip
from textual.widgets import Static, Tree
from textual.widgets.tree import TreeNode

from tui.fmt import CLASS_STYLE, bar, class_of, clean, fmt_ms, fmt_pct, literal
from tui.model.nesting import timed_only
from tui.model.order import screen_order
from tui.model.snapshot import UNACCOUNTED, RegionRow, RunSnapshot
from tui.view.widgets.base import show_text

GUIDE = 3
ICON = 2
BAR_W = 12
MAX_DEPTH = 16  # levels shown; deeper regions are counted in a "…" row
MAX_ROWS = 2000  # rows shown; the rest are counted in a "…" row


class Columns:
    """Column layout shared by the labels and the header line above the tree.

    A top-level node starts at column 0 with its 2-cell expand icon; a node at depth d is
    indented by 3·d cells, so its name field is 3·d cells narrower and the numbers line up.
    """

    def __init__(self, name_w: int = 34, compact: bool = False) -> None:
        self.name_w = name_w
        self.compact = compact

    def fields(self) -> list[tuple[str, int]]:
        cols = [("share", 6), ("last", 8), ("avg", 8)]
        if not self.compact:
            cols += [("min", 8), ("max", 8), ("p95", 8)]
        else:
            cols += [("max", 8)]
        cols += [("calls", 8)]
        return cols

    def header(self) -> Text:
        t = Text(f"{'region':<{self.name_w + ICON}} {'':<{BAR_W}}", style="bold")
        for name, w in self.fields():
            t.append(f" {name:>{w}}", style="bold")
        return t


def region_label(
    row: RegionRow,
    depth: int,
    window: bool,
    red: float,
    yellow: float,
    cols: Columns,
    unmeasured: bool = False,
) -> Text:
    """One node's label: name, share bar, share %, times and calls, in its class colour.
    ``unmeasured``: the run has no step wall time (a classic text log), so the unaccounted
    time is unknown, not zero: its figures are dashes.

    Built as one string with style spans (cheap: every label is rebuilt on each snapshot).
    """
    s = row.window if window else row.whole
    unacc = row.name == UNACCOUNTED
    cls = "none" if unacc else class_of(s, red, yellow)
    style = CLASS_STYLE[cls]
    width = max(8, cols.name_w - GUIDE * depth)
    name = literal(row.leaf).plain
    if cell_len(name) > width:
        name = set_cell_size(name, width - 1) + "…"
    else:
        name = name + " " * (width - cell_len(name))
    vals = {
        "share": fmt_pct(s.share),
        "last": "—" if s.last == 0.0 else fmt_ms(s.last),  # 0: did not run in the last step
        "avg": fmt_ms(s.avg),
        "min": fmt_ms(s.min),
        "max": fmt_ms(s.max),
        "p95": fmt_ms(s.p95),
        "calls": str(s.calls) if s.calls else "—",
    }
    if unacc and unmeasured:
        vals = dict.fromkeys(vals, "—")
    bar_text = bar(s.share if not (unacc and unmeasured) else 0.0, BAR_W)
    fields = cols.fields()
    share_w = fields[0][1]
    rest = "".join(f" {vals[key]:>{w}}" for key, w in fields[1:])
    line = f"{name} {bar_text} {vals['share']:>{share_w}}{rest}"
    n = len(name)
    spans = [
        Span(0, n, "italic dim" if unacc else style),
        Span(n + 1, n + 1 + BAR_W, style),
        Span(n + 2 + BAR_W, n + 3 + BAR_W + share_w, style),
    ]
    return Text(line, spans=spans)


class StageTree(Tree[str]):
    """Collapsible region tree of the selected run."""

    class LinesChanged(Message):
        """The tree shows another number of lines (the screen shares its height anew)."""

    def __init__(self, **kw: object) -> None:
        super().__init__("regions", **kw)  # type: ignore[arg-type]
        self.show_root = False
        self.guide_depth = GUIDE
        self.nodes_by_name: dict[str, TreeNode[str]] = {}
        self.rows: dict[str, RegionRow] = {}
        self._shape: object = None
        self.sort_by_time = True
        self.unmeasured = False  # the unaccounted time is unknown (region_label)
        self.filter = ""
        self.window = False
        self.red = 0.40
        self.yellow = 0.10
        self.cols = Columns()
        self.rebuilds = 0
        self._order_prev: dict[str | None, list[str]] = {}  # last order of each parent's children
        self._order_run: object = None
        self._label_keys: dict[str, tuple[object, ...]] = {}  # what each node's label was made from
        self._stale: dict[str, RegionRow] = {}  # nodes whose label is made when next drawn
        self._parents: dict[str, str | None] = {}  # each shown region's parent, as built

    def watch_virtual_size(self, old: Size, new: Size) -> None:
        if old.height != new.height:
            self.post_message(self.LinesChanged())

    def render_lines(self, crop: Region) -> list[Strip]:
        # the widget's style, walked up its ancestors by Textual for every line (uncached),
        # is taken once per repaint: it cannot change while the lines are drawn
        self._frame_style = self.rich_style
        try:
            return super().render_lines(crop)
        finally:
            self._frame_style = None

    def render_line(self, y: int) -> Strip:
        style = getattr(self, "_frame_style", None)
        if style is None or not hasattr(self, "_render_line"):
            return super().render_line(y)
        scroll_x, scroll_y = self.scroll_offset  # as Tree.render_line, with the style taken once
        return self._render_line(y + scroll_y, scroll_x, scroll_x + self.size.width, style)

    def render_label(self, node: TreeNode[str], base_style: Style, style: Style) -> Text:
        if (
            getattr(self, "_stale", None) and node.data is not None
        ):  # (unset while Tree's __init__ runs)
            self._make_label(node.data, node)
        text = super().render_label(node, base_style, style)
        if not node.allow_expand:
            text = Text("  ") + text
        return text

    # ------------------------------------------------------------------ data
    def _visible(self, run: RunSnapshot) -> list[RegionRow]:
        """The rows the filter keeps: matches and their ancestors (walked up by parent links,
        so the cost is one pass whatever the depth)."""
        rows = list(run.regions)
        if not self.filter:
            return rows
        f = self.filter.lower()
        parent_of = {r.name: r.parent for r in rows}
        keep: set[str] = set()
        for r in rows:
            if f in r.name.lower():
                name: str | None = r.name
                while name is not None and name not in keep:
                    keep.add(name)
                    name = parent_of.get(name)
        return [r for r in rows if r.name in keep]

    def _share(self, r: RegionRow) -> float:
        # share of step wall time, not the per-appearance average: a region seen in few
        # steps (validation) must not outrank the forward pass
        s = r.window if self.window else r.whole
        return s.share if s.share == s.share else -1.0

    def _ordered(self, rows: list[RegionRow]) -> tuple[list[RegionRow], int, int]:
        """Rows in tree order (:func:`tui.model.order.screen_order`, shared rules with `tui
        summary`: close shares do not swap), at most MAX_DEPTH levels and MAX_ROWS rows:
        (rows, regions cut for depth, regions cut for rows)."""
        deep = len(rows)
        rows = [r for r in rows if r.depth < MAX_DEPTH]  # first: the cost is then bounded too
        cut_depth = deep - len(rows)
        share = self._share if self.sort_by_time else None
        out, order = screen_order(rows, _name, _parent, share, self._order_prev, max_rows=MAX_ROWS)
        self._order_prev = order
        return out, cut_depth, len(rows) - len(out)

    def show(self, run: RunSnapshot | None, force: bool = False) -> None:
        """Show ``run``: rebuild on a new shape or order, else update labels in place."""
        if run is None:
            if self._shape is not None:
                self.clear()
                self.nodes_by_name = {}
                self._stale, self._label_keys = {}, {}
                self._shape = None
            return
        if self._order_run != (run.run_id, self.sort_by_time, self.window):
            self._order_run = (run.run_id, self.sort_by_time, self.window)
            self._order_prev = {}
        self.unmeasured = timed_only(run.files)  # a text log: no step wall time
        rows = self._visible(run)
        ordered, cut_depth, cut_rows = self._ordered(rows)
        self.rows = {r.name: r for r in (*ordered, run.unaccounted)}
        shape = (run.run_id, tuple(r.name for r in ordered), self.filter, cut_depth, cut_rows)
        if force or shape != self._shape:
            if force or not self._reorder(shape, ordered):
                self._rebuild(ordered, run, cut_depth, cut_rows)
            self._shape = shape
        if not force:
            self.refresh_labels()

    def _reorder(self, shape: tuple, ordered: list[RegionRow]) -> bool:
        """The same regions in another order (shares crossed): move the nodes instead of
        rebuilding the tree (a rebuild adds every node anew and lays the whole screen out
        again, ~20 ms here). False when the regions differ (then a rebuild)."""
        old = self._shape
        if not isinstance(old, tuple) or old[0] != shape[0] or old[2:] != shape[2:]:
            return False
        parents = {r.name: r.parent for r in ordered}
        if parents != self._parents or any(getattr(r, "cut", False) for r in ordered):
            return False
        if not hasattr(self, "_clear_line_cache") or not hasattr(self.root, "_children"):
            return False  # a Textual without these internals: rebuild
        pos = {r.name: i for i, r in enumerate(ordered)}
        last = len(pos)  # the notes and the unaccounted row stay after the regions, in order
        for node in (self.root, *self.nodes_by_name.values()):
            if len(node._children) > 1:
                node._children.sort(key=lambda n: pos.get(n.data, last))  # type: ignore[arg-type]
        # the lines are built again when next drawn; the cursor stays on its node (Tree._build
        # moves the cursor line to it); as many lines as before: no layout
        self._clear_line_cache()
        self._updates += 1
        self.refresh()
        return True

    def _key(self, row: RegionRow) -> tuple[object, ...]:
        """Everything a node's label is made from."""
        return (
            row.leaf,
            row.depth,
            row.window if self.window else row.whole,
            self.window,
            self.unmeasured,
            self.red,
            self.yellow,
            self.cols.name_w,
            self.cols.compact,
        )

    def label_of(self, name: str) -> Text | None:
        """The label of a node as it reads now (made if its line was not drawn since)."""
        node = self.nodes_by_name.get(name)
        if node is None:
            return None
        self._make_label(name, node)
        return node.label

    def _make_label(self, name: str, node: TreeNode[str]) -> None:
        """The label of a node marked by :meth:`refresh_labels`, made now (once)."""
        row = self._stale.pop(name, None)
        if row is not None:
            node._label = self.process_label(self._label(row))

    def refresh_labels(self) -> None:
        """Mark the nodes whose figures changed, then one repaint of the tree.

        A marked node's label is made when its line is drawn (:meth:`render_label`): a
        snapshot costs the labels on screen, not the whole tree. ``TreeNode.set_label`` would
        queue a callback per node, each looking for the node's lines; so the node's update
        count (which keys Tree's line cache) is bumped directly and the widget is repainted
        once.
        """
        changed = False
        keys = self._label_keys
        for name, node in self.nodes_by_name.items():
            row = self.rows.get(name)
            if row is None:
                continue
            key = self._key(row)
            if keys.get(name) == key:  # the same figures (nan never equal: made again)
                continue
            keys[name] = key
            if not hasattr(node, "_updates") or not hasattr(node, "_label"):
                node.set_label(self._label(row))  # a Textual without these internals: public path
                continue
            self._stale[name] = row
            node._updates += 1
            changed = True
        if changed:
            self.refresh()

    def _label(self, row: RegionRow) -> Text:
        return region_label(
            row, row.depth, self.window, self.red, self.yellow, self.cols, self.unmeasured
        )

    def _rebuild(
        self, ordered: list[RegionRow], run: RunSnapshot, cut_depth: int = 0, cut_rows: int = 0
    ) -> None:
        self.rebuilds += 1
        expanded = {n: node.is_expanded for n, node in self.nodes_by_name.items()}
        cursor = self.cursor_node.data if self.cursor_node is not None else None
        self.clear()
        self.nodes_by_name = {}
        self._stale = {}
        self._label_keys = {}
        self._parents = {r.name: r.parent for r in ordered}
        has_children = {r.parent for r in ordered if r.parent}
        for r in ordered:
            parent = self.nodes_by_name.get(r.parent) if r.parent else None
            parent = parent or self.root
            if getattr(r, "cut", False):  # the reader's row standing for regions it cut
                parent.add_leaf(Text("… more regions not shown", style="italic dim"), data=None)
                continue
            label = self._label(r)
            self._label_keys[r.name] = self._key(r)
            if r.name in has_children:
                exp = expanded.get(r.name, r.depth < 1) or bool(self.filter)
                node = parent.add(label, data=r.name, expand=exp)
            else:
                node = parent.add_leaf(label, data=r.name)
            self.nodes_by_name[r.name] = node
        if self.filter and not ordered:
            self.root.add_leaf(
                Text(f"no region matches “{clean(self.filter)}”", style="italic yellow"), data=None
            )
        if cut_depth:
            self.root.add_leaf(
                Text(
                    f"… {cut_depth} regions nested deeper than {MAX_DEPTH} levels not shown",
                    style="italic dim",
                ),
                data=None,
            )
        if cut_rows:
            self.root.add_leaf(
                Text(
                    f"… {cut_rows} more regions not shown (first {MAX_ROWS}; / filters by name)",
                    style="italic dim",
                ),
                data=None,
            )
        u = run.unaccounted
        self.nodes_by_name[UNACCOUNTED] = self.root.add_leaf(self._label(u), data=UNACCOUNTED)
        self._label_keys[UNACCOUNTED] = self._key(u)
        self.root.expand()
        if cursor in self.nodes_by_name:
            self.call_after_refresh(self._restore_cursor, cursor)

    def _restore_cursor(self, name: str) -> None:
        node = self.nodes_by_name.get(name)
        if node is not None and node.line >= 0:
            self.move_cursor(node)

    def resort(self) -> None:
        self._shape = None
        self._order_prev = {}


class TreeHeader(Static):
    """Column titles above the tree."""

    def show(self, cols: Columns, window: bool, window_size: int) -> None:
        show_text(self, cols.header())


def _name(r: RegionRow) -> str:
    return r.name


def _parent(r: RegionRow) -> str | None:
    return r.parent
