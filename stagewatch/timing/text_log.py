"""The classic per-step text log (the BRIEF's block format), with correct totals.

Unlike the original logger, every percentage is a share of the step wall time, children
are indented under their parents (so nothing is counted twice), time outside every
top-level region is its own ``Unaccounted`` line, and ``Total`` is the step wall time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from stagewatch.records import unaccounted_ms

RULE = "=" * 80
LABEL_WIDTH = 40


def tree_order(values: Mapping[str, float]) -> list[tuple[str, int, bool]]:
    """Region names in display order: ``(name, depth, present)``.

    Siblings are sorted by time (largest first); children follow their parent. Ancestors
    that were never timed themselves (``a/b`` logged without ``a``) are included with
    ``present=False`` so that the tree stays readable.
    """
    nodes: dict[str, bool] = {}
    for name in values:
        nodes[name] = True
        i = name.find("/")
        while i > 0:
            nodes.setdefault(name[:i], False)
            i = name.find("/", i + 1)
    children: dict[str, list[str]] = {}
    for name in nodes:
        cut = name.rfind("/")
        children.setdefault(name[:cut] if cut > 0 else "", []).append(name)
    for kids in children.values():
        kids.sort(key=lambda n: (-values.get(n, 0.0), n))
    out: list[tuple[str, int, bool]] = []
    stack: list[tuple[str, int]] = [(n, 0) for n in reversed(children.get("", []))]
    while stack:
        name, depth = stack.pop()
        out.append((name, depth, nodes[name]))
        stack.extend((k, depth + 1) for k in reversed(children.get(name, [])))
    return out


def _label(name: str, depth: int) -> str:
    if depth == 0:
        return name
    leaf = name[name.rfind("/") + 1 :]
    return "  " * depth + "- " + leaf


def _pct(ms: float, wall_ms: float) -> float:
    return 100.0 * ms / wall_ms if wall_ms > 0 else 0.0


def format_step(
    step: int,
    wall_ms: float,
    regions: Mapping[str, tuple[float, int]],
    avg_of: Callable[[str], float | None] | None = None,
) -> str:
    """One step's block, ending with a newline."""
    lines = [RULE, f"Step {step}", RULE]
    ms_of = {k: v[0] for k, v in regions.items()}
    for name, depth, present in tree_order(ms_of):
        label = f"{_label(name, depth):<{LABEL_WIDTH}}"
        if not present:
            lines.append(f"{label} :          - (not timed itself)")
            continue
        ms, n = regions[name]
        line = f"{label} : {ms:9.2f}ms ({_pct(ms, wall_ms):5.1f}%)"
        avg = avg_of(name) if avg_of is not None else None
        if avg is not None:
            line += f" [avg: {avg:9.2f}ms]"
        if n > 1:
            line += f" x{n}"
        lines.append(line)
    un = unaccounted_ms(wall_ms, dict(regions))
    lines.append(f"{'Unaccounted':<{LABEL_WIDTH}} : {un:9.2f}ms ({_pct(un, wall_ms):5.1f}%)")
    covered = sum(ms for name, (ms, _) in regions.items() if "/" not in name)
    if covered > wall_ms * 1.001 + 0.01:
        over = covered - wall_ms
        lines.append(
            f"{'Overlap':<{LABEL_WIDTH}} : {over:9.2f}ms "
            "(top-level regions overlap, e.g. from other threads)"
        )
    lines.append(f"{'Total':-<{LABEL_WIDTH + 1}}: {wall_ms:9.2f}ms")
    return "\n".join(lines) + "\n"


def format_summary(
    summary: Mapping[str, Mapping[str, float]],
    steps: int,
    wall_total_ms: float,
    unaccounted_total_ms: float,
) -> str:
    """The run summary: per region avg/min/max per step, calls, and share of all wall time."""
    avg_wall = wall_total_ms / steps if steps else 0.0
    lines = [
        RULE,
        f"Timing summary: {steps} steps, avg step {avg_wall:.2f}ms",
        RULE,
        f"{'region':<{LABEL_WIDTH}} : {'avg':>9}   {'min':>9}   {'max':>9}   share    steps  calls",
    ]
    totals = {k: float(v["total"]) for k, v in summary.items()}
    for name, depth, present in tree_order(totals):
        label = f"{_label(name, depth):<{LABEL_WIDTH}}"
        if not present:
            lines.append(f"{label} :          - (not timed itself)")
            continue
        s = summary[name]
        share = _pct(float(s["total"]), wall_total_ms)
        lines.append(
            f"{label} : {s['avg']:9.2f}ms {s['min']:9.2f}ms {s['max']:9.2f}ms "
            f"{share:5.1f}% {int(s['count']):8d} {int(s.get('calls', s['count'])):6d}"
        )
    un_avg = unaccounted_total_ms / steps if steps else 0.0
    lines.append(
        f"{'Unaccounted':<{LABEL_WIDTH}} : {un_avg:9.2f}ms {'':>9}   {'':>9}   "
        f"{_pct(unaccounted_total_ms, wall_total_ms):5.1f}%"
    )
    lines.append(f"{'Total':-<{LABEL_WIDTH + 1}}: {avg_wall:9.2f}ms per step")
    return "\n".join(lines) + "\n"
