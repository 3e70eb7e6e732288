"""The stage tree's row order (tui.model.order): first-seen with cut rows, by share of time
with hysteresis, or by name."""

from __future__ import annotations

import random

import pytest

from tui.model.order import CUT, hysteresis_order, tree_order, tree_rows, tree_sort


def sorted_within(order: list[str], share: dict[str, float], margin: float) -> bool:
    return all(
        share[order[j]] <= share[order[i]] + margin
        for i in range(len(order))
        for j in range(i + 1, len(order))
    )


def test_first_order_is_by_share() -> None:
    share = {"a": 0.1, "b": 0.5, "c": 0.3}
    assert hysteresis_order(share, share.get) == ["b", "c", "a"]


def test_near_equal_rows_do_not_swap_but_clear_changes_do() -> None:
    share = {"a": 0.300, "b": 0.302, "c": 0.1}
    assert hysteresis_order(share, share.get, ["a", "b", "c"], margin=0.005) == ["a", "b", "c"]
    share["b"] = 0.31  # now clearly ahead
    assert hysteresis_order(share, share.get, ["a", "b", "c"], margin=0.005) == ["b", "a", "c"]
    share["c"] = 0.9
    assert hysteresis_order(share, share.get, ["b", "a", "c"], margin=0.005)[0] == "c"


def test_order_follows_shares_as_they_change_without_flicker() -> None:
    rng = random.Random(3)
    names = [f"r{i}" for i in range(12)]
    base = {n: rng.random() for n in names}
    prev: list[str] | None = None
    swaps = 0
    for _ in range(200):
        share = {n: v + rng.uniform(-0.002, 0.002) for n, v in base.items()}  # jitter only
        order = hysteresis_order(names, share.get, prev, margin=0.005)
        assert sorted_within(order, share, 0.005)
        if prev is not None and order != prev:
            swaps += 1
        prev = order
    assert swaps <= 5  # jitter below the margin hardly moves anything
    # a real change: the last row's share jumps to the top
    share = dict(base)
    share[prev[-1]] = 2.0
    assert hysteresis_order(names, share.get, prev)[0] == prev[-1]


def test_new_and_vanished_names_and_nan() -> None:
    share = {"a": 0.2, "b": float("nan"), "c": 0.4}
    assert hysteresis_order(share, share.get, ["gone", "a", "b"]) == ["c", "a", "b"]


class Row:
    def __init__(self, name: str, share: float) -> None:
        self.name, self.share = name, share


def test_tree_sort_keeps_parents_before_children() -> None:
    rows = [
        Row(n, s)
        for n, s in [
            ("data", 0.01),
            ("forward", 0.3),
            ("forward/vrt", 0.28),
            ("forward/spike", 0.02),
            ("backward", 0.6),
            ("backward/x", 0.1),
            ("backward/y", 0.4),
            ("optimizer", 0.05),
        ]
    ]
    out = [r.name for r in tree_sort(rows, lambda r: r.name, lambda r: r.share)]
    assert out == [
        "backward",
        "backward/y",
        "backward/x",
        "forward",
        "forward/vrt",
        "forward/spike",
        "optimizer",
        "data",
    ]
    by_name = [r.name for r in tree_sort(rows, lambda r: r.name, lambda r: r.share, by="name")]
    assert by_name == [
        "backward",
        "backward/x",
        "backward/y",
        "data",
        "forward",
        "forward/spike",
        "forward/vrt",
        "optimizer",
    ]
    with pytest.raises(ValueError):
        tree_sort(rows, lambda r: r.name, lambda r: r.share, by="size")


def test_tree_sort_deep_tree_and_orphans() -> None:
    deep = [
        Row("/".join(["x"] * i), 0.5) for i in range(1, 3000)
    ]  # deeper than Python's recursion limit
    assert len(tree_sort(deep, lambda r: r.name, lambda r: r.share)) == 2999
    rows = [Row("a/b/c", 0.2), Row("z", 0.5)]  # a and a/b missing
    assert [r.name for r in tree_sort(rows, lambda r: r.name, lambda r: r.share)] == ["z", "a/b/c"]


def test_tree_rows_first_seen_with_missing_parents_and_cut_rows() -> None:
    names = ["b/x", "a", "b", "a/y/z", "c"]  # "a/y" never seen itself
    assert tree_rows(names) == [
        ("b", False),
        ("b/x", False),
        ("a", False),
        ("a/y", False),
        ("a/y/z", False),
        ("c", False),
    ]
    assert tree_order(names) == [n for n, _ in tree_rows(names)]
    # too deep: one cut row under the ancestor at the limit; too many: one cut row at the end
    assert tree_rows(["a/b/c/d"], max_depth=2) == [
        ("a", False),
        ("a/b", False),
        ("a/b/" + CUT, True),
    ]
    many = [f"r{i}" for i in range(50)]
    rows = tree_rows(many, max_rows=10)
    assert rows[:10] == [(n, False) for n in many[:10]] and rows[10:] == [(CUT, True)]


def test_the_sorted_orders_keep_the_first_seen_tree() -> None:
    """tree_sort of a snapshot's rows (first-seen order) only reorders siblings."""
    rng = random.Random(3)
    names = tree_order(
        "/".join(f"n{rng.randrange(4)}" for _ in range(rng.randrange(1, 5))) for _ in range(200)
    )
    rows = [Row(n, rng.random()) for n in names]
    for by in ("time", "name"):
        out = [r.name for r in tree_sort(rows, lambda r: r.name, lambda r: r.share, by=by)]
        assert sorted(out) == sorted(names)
        for i, n in enumerate(out):  # each row's parent comes before it, its subtree after it
            if "/" in n:
                parent = n.rsplit("/", 1)[0]
                assert out.index(parent) < i
                assert all(m.startswith(parent + "/") for m in out[out.index(parent) + 1 : i])


def test_the_screens_order_is_the_shared_rule_bounded() -> None:
    from tui.model.order import screen_order

    rows = [("b", None, 0.30), ("a", None, 0.302), ("a/x", "a", 0.1), ("a/y", "a", 0.2)]
    rows.append(("z/orphan", "z", 0.5))  # its parent is not a row: at the top level
    name, parent, share = (lambda r: r[0]), (lambda r: r[1]), (lambda r: r[2])
    out, order = screen_order(rows, name, parent, share, {None: ["b", "a"]}, max_rows=100)
    # "a" is ahead of "b" by less than the margin: the previous order holds
    assert [r[0] for r in out] == ["z/orphan", "b", "a", "a/y", "a/x"]
    assert order == {None: ["z/orphan", "b", "a"], "a": ["a/y", "a/x"]}
    by_name, _ = screen_order(rows, name, parent, None, {}, max_rows=3)
    assert [r[0] for r in by_name] == ["a", "a/x", "a/y"]  # by name, cut at 3 rows
