"""How the screen's height is shared: the panels under the tree take what their content
needs (each with a cap), the stage tree takes the rest, and the tree's own rows come first
when the screen is short of rows.

Pure arithmetic on row counts, so it is tested without a terminal; :mod:`tui.view.app`
measures the contents and applies the heights.
"""

from __future__ import annotations

from dataclasses import dataclass

TREE_MIN = 6  # rows of the tree box (borders and column header included) at the least
LOWER_MIN = 6  # rows of the panels under the tree at the least (short terminals)
LOWER_SHARE = 0.35  # ... or this share of the screen's body, when the tree wants more
RANKS_CAP = 24  # rows of the ranks panel when the tree wants the rest (more ranks: the
#                 slowest, then "… N more")
ADVICE_CAP = 12  # rows of the advice box when the tree wants the rest (more: "… N more")
CHART_ROWS = 9  # rows of the chart box (borders included)
SPARK_ROWS = 5  # rows of the sparkline box (borders included)


@dataclass(frozen=True, slots=True)
class Heights:
    lower: int  # the panels under the tree (ranks, chart | sparkline, advice)
    ranks: int  # the ranks panel, in the left column (the chart takes the rest)
    chart: bool = False  # the chart is shown (it gives its rows to the tree first)


def share_heights(
    body: int,
    tree_need: int,
    ranks_need: int,
    advice_need: int,
    *,
    chart: bool,
    spark: bool,
) -> Heights:
    """Rows of the panels under the tree in a body ``body`` rows tall, given what each
    needs (borders included).

    When everything fits, the panels get their needs and the tree the rest. Otherwise the
    chart gives its rows to the tree first (it is drawn only when the ranks panel keeps its
    rows beside it), then the tree gets its need while the panels keep a floor (their capped
    needs, at most ``LOWER_SHARE`` of the body), and the panels anything the tree leaves
    above that.
    """
    ranks_need = max(ranks_need, 3)
    advice_need = max(advice_need, 3)
    chart_rows = CHART_ROWS if chart else 0
    spark_rows = SPARK_ROWS if spark else 0
    full = max(ranks_need + chart_rows, spark_rows + advice_need)
    room = body - tree_need  # what the tree leaves when all its rows show
    if full <= room:
        lower = full
    else:
        chart = chart and room - chart_rows >= min(ranks_need, RANKS_CAP)
        chart_rows = CHART_ROWS if chart else 0
        capped = max(
            min(ranks_need, RANKS_CAP) + chart_rows, spark_rows + min(advice_need, ADVICE_CAP)
        )
        least = max(LOWER_MIN, int(body * LOWER_SHARE))
        lower = max(room, min(capped, least))
    lower = max(min(lower, body - TREE_MIN), min(LOWER_MIN, body))
    ranks = max(3, min(ranks_need, lower - chart_rows)) if chart else lower
    return Heights(lower=max(0, lower), ranks=ranks, chart=chart)
