"""Nesting of a classic text log's top-level names, inferred from the numbers or given.

The original logger wrote nested parts under separate top-level names (``Forward total``,
and ``VRT`` inside it), and its ``Total`` line summed them all: about twice the time. A
top-level name P is taken as the parent of a set C of other top-level names when, in at
least 95% of the steps where any of them ran, C's sum lies within P's time and is at least
90% of it (and C explains P's variation rather than adding to it, so that disjoint phases
of similar cost stay apart). The step's timed total is then the outermost times.

The decision is made on the first :data:`INFER_STEPS` steps of a file (held back until
then, or until the file ends or idles), and every later step is checked against it. A
rule that later steps break (fewer than 95% fit) is dropped: the file is read again
without it (:attr:`Nester.failed`; the policy remembers the dropped parent, so a re-read
never loops). The work per step is constant and the state bounded.

Never nested: names the log nests itself (``  - Sub`` lines, ``A/B`` names), names of
crossing times, and stagewatch's own text log (its ``Total`` is the step wall time).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence

from stagewatch.records import Step
from tui.model.nesting import GIVEN, INFERRED, NONE, OFF, NestNote, NestRule

INFER_STEPS = 32  # steps the decision is made on
MAX_NAMES = 48  # top-level names considered (the most frequent)
FIT_SHARE = 0.95  # of steps in which the relation must hold
SUM_FLOOR = 0.90  # the children's sum, as a share of the parent, at least
TOL_REL = 0.002  # the children's sum may exceed the parent by this (separate clocks) ...
TOL_ABS = 0.02  # ... plus this many ms (the log's two-decimal rounding)
VAR_RATIO = 1.2  # var(P - sum C) above this times var(P): C adds to P, not inside it
MAX_BANS = 8  # rules dropped per file before inference is given up for it
HOLD_S = 5.0  # a live text log idle this long with fewer steps: decide on those


class NestPolicy:
    """How the run's text logs nest: ``auto`` (infer), ``given`` (``--nest``) or ``off``.

    Mutable on purpose: the parents whose inferred rule failed are kept per file, so a file
    read again (a rebuild, a replay reopened) does not infer them again.
    """

    def __init__(self, mode: str = "auto", given: Sequence[tuple[str, Sequence[str]]] = ()):
        self.mode = mode
        self.given = tuple((p, tuple(c)) for p, c in given)
        self.banned: dict[str, set[str]] = {}

    @classmethod
    def from_args(cls, nest: Iterable[str] | None, no_nest: bool) -> NestPolicy:
        """From ``--nest PARENT=CHILD[,CHILD...]`` (repeatable) and ``--no-nest``.

        Raises ValueError with one line naming the bad value.
        """
        specs = list(nest or ())
        if no_nest and specs:
            raise ValueError("--nest and --no-nest exclude each other")
        if no_nest:
            return cls("off")
        if not specs:
            return cls()
        parent_of: dict[str, str] = {}
        rules: dict[str, list[str]] = {}
        for spec in specs:
            parent, kids = _parse_spec(spec)
            for k in kids:
                if k in parent_of and parent_of[k] != parent:
                    raise ValueError(f"--nest {spec!r}: {k!r} already nests under {parent_of[k]!r}")
                parent_of[k] = parent
            rules.setdefault(parent, [])
            rules[parent] += [k for k in kids if k not in rules[parent]]
        for name in parent_of:
            seen = {name}
            p = parent_of.get(name)
            while p is not None:
                if p in seen:
                    raise ValueError(f"--nest: {name!r} would nest inside itself")
                seen.add(p)
                p = parent_of.get(p)
        return cls("given", list(rules.items()))

    def __deepcopy__(self, memo: dict[int, object]) -> NestPolicy:
        return self  # shared by a replay's checkpoints: what failed stays known

    def banned_for(self, path: str) -> set[str]:
        return self.banned.setdefault(path, set())


def _parse_spec(spec: str) -> tuple[str, list[str]]:
    parent, eq, rest = spec.partition("=")
    parent = parent.strip()
    kids = [k.strip() for k in rest.split(",")]
    if not eq or not parent or not all(kids):
        raise ValueError(f"--nest {spec!r}: expected PARENT=CHILD[,CHILD...]")
    for n in (parent, *kids):
        if "/" in n:
            raise ValueError(f"--nest {spec!r}: {n!r} is not a top-level name (it has '/')")
    if parent in kids:
        raise ValueError(f"--nest {spec!r}: {parent!r} cannot nest inside itself")
    return parent, kids


def _top(step: Step) -> dict[str, float]:
    return {k: v[0] for k, v in step.regions.items() if "/" not in k}


def _log_kids(held: list[tuple[int, Step]]) -> dict[str, set[str]]:
    """The children the log itself gives each top-level name (``A/B`` keys)."""
    out: dict[str, set[str]] = {}
    for _, s in held:
        for k in s.regions:
            root, sep, rest = k.partition("/")
            if sep and "/" not in rest and len(out) < MAX_NAMES:
                out.setdefault(root, set()).add(rest)
    return out


def _within(kids: float, parent: float) -> bool:
    return kids <= parent * (1.0 + TOL_REL) + TOL_ABS


def _fits(kids: float, parent: float | None) -> bool:
    return parent is not None and SUM_FLOOR * parent <= kids and _within(kids, parent)


def _var(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)


class _Evidence:
    """A rule's running evidence: steps it concerned, steps it fit, the children's share."""

    __slots__ = (
        "children",
        "fit",
        "parent",
        "share_max",
        "share_min",
        "share_sum",
        "shares",
        "steps",
    )

    def __init__(self, parent: str, children: tuple[str, ...]) -> None:
        self.parent, self.children = parent, children
        self.steps = self.fit = self.shares = 0
        self.share_min, self.share_sum, self.share_max = math.inf, 0.0, 0.0

    def see(self, top: dict[str, float]) -> None:
        p = top.get(self.parent)
        kids = [top[c] for c in self.children if c in top]
        if p is None and not kids:
            return
        self.steps += 1
        s = sum(kids)
        if _fits(s, p):
            self.fit += 1
        if p is not None and p > 0:
            share = s / p
            self.shares += 1
            self.share_sum += share
            self.share_min = min(self.share_min, share)
            self.share_max = max(self.share_max, share)  # a --nest the numbers belie: > 100%

    def holds(self) -> bool:
        return self.fit >= FIT_SHARE * self.steps

    def rule(self) -> NestRule:
        avg = self.share_sum / self.shares if self.shares else 0.0
        return NestRule(
            self.parent,
            self.children,
            self.steps,
            self.fit,
            self.share_min if self.shares else 0,
            avg,
            self.share_max,
        )


def infer(
    samples: list[dict[str, float]],
    banned: Collection[str] = (),
    log_kids: dict[str, set[str]] | None = None,
) -> list[tuple[str, tuple[str, ...]]]:
    """Rules (parent, children) for the top-level times of ``samples`` (one dict a step).

    Parents are tried from the smallest up, so inner rules (VRT ⊃ Stage8) are decided before
    outer ones (forward ⊃ VRT) and chains become a tree; each parent takes, largest first,
    the unplaced names within it whose sum still fits in 95% of the steps. ``log_kids``:
    the children each name has in the log itself (a top-level ``Stage8`` never goes under a
    ``VRT`` that the log already gives a ``  - Stage8``).
    """
    log_kids = log_kids or {}
    count: dict[str, int] = {}
    total: dict[str, float] = {}
    peak: dict[str, float] = {}
    for s in samples:
        for k, v in s.items():
            count[k] = count.get(k, 0) + 1
            total[k] = total.get(k, 0.0) + v
            peak[k] = max(peak.get(k, 0.0), v)
    names = sorted(count, key=lambda k: -count[k])[:MAX_NAMES]
    mean = {k: total[k] / count[k] for k in names}
    placed: set[str] = set()
    rules: list[tuple[str, tuple[str, ...]]] = []
    for p in sorted(names, key=lambda k: mean[k]):
        if p in banned:
            continue
        cands = [
            c
            for c in names
            if c != p
            and c not in placed
            and c not in log_kids.get(p, ())
            and peak[c] > TOL_ABS  # a name always ~0 fits anywhere: no evidence of nesting
            and mean[c] < mean[p]
            and _inside(samples, c, p)
        ]
        kids = _choose(samples, p, sorted(cands, key=lambda c: -mean[c]))
        if kids and _accept(samples, p, kids):
            rules.append((p, tuple(kids)))
            placed.update(kids)
    return rules


def _inside(samples: list[dict[str, float]], c: str, p: str) -> bool:
    """``c`` ran within ``p`` in 95% of the steps ``c`` ran in (times crossing: no)."""
    rel = [s for s in samples if c in s]
    ok = sum(1 for s in rel if p in s and _within(s[c], s[p]))
    return bool(rel) and ok >= FIT_SHARE * len(rel)


def _choose(samples: list[dict[str, float]], p: str, cands: list[str]) -> list[str]:
    """Greedy, largest first: each candidate whose addition keeps the sum within ``p``."""
    chosen: list[str] = []
    sums = [0.0] * len(samples)
    ps = [s[p] for s in samples if p in s]
    mean_p = sum(ps) / len(ps) if ps else 0.0
    for c in cands:
        new = [x + s.get(c, 0.0) for x, s in zip(sums, samples, strict=True)]
        members = [p, *chosen, c]
        cs = [s[c] for s in samples if c in s]
        within = _within
        if cs and sum(cs) / len(cs) <= TOL_REL * mean_p + TOL_ABS:
            # small enough to fit in the clocks' tolerance alone (data loading at 0.1 ms
            # beside a forward whose parts add up to it): it must fit in the parent's own
            # untimed time, up to the rounding of each member's two decimals
            slack = TOL_ABS + 0.005 * len(members)

            def within(kids: float, parent: float, slack: float = slack) -> bool:
                return kids <= parent + slack

        rel = [i for i, s in enumerate(samples) if any(m in s for m in members)]
        ok = sum(1 for i in rel if p in samples[i] and within(new[i], samples[i][p]))
        # and in the steps ``c`` itself ran in (a rare name, validation every 50 steps, must
        # not slip in on the 5% the whole set may miss)
        own = [i for i, s in enumerate(samples) if c in s]
        own_ok = sum(1 for i in own if p in samples[i] and within(new[i], samples[i][p]))
        if ok >= FIT_SHARE * len(rel) and own_ok >= FIT_SHARE * len(own):
            chosen.append(c)
            sums = new
    return chosen


def _accept(samples: list[dict[str, float]], p: str, kids: list[str]) -> bool:
    """The issue's rule (sum within ``p`` and >= 90% of it in 95% of steps), and ``kids``
    explaining ``p``'s variation: for disjoint phases var(P - sum) is var(P) + var(sum)."""
    ev = _Evidence(p, tuple(kids))
    for s in samples:
        ev.see(s)
    if not ev.steps or not ev.holds():
        return False
    both = [s for s in samples if p in s]
    ps = [s[p] for s in both]
    d = [s[p] - sum(s.get(c, 0.0) for c in kids) for s in both]
    mp = sum(ps) / len(ps) if ps else 0.0
    slack = (len(kids) + 1) * 1e-4 + (1e-3 * mp) ** 2
    return _var(d) <= VAR_RATIO * _var(ps) + slack


class Nester:
    """One text log's steps, renamed by the nesting decided for it."""

    def __init__(self, policy: NestPolicy, path: str) -> None:
        self.policy = policy
        self.path = path
        self.restart()

    def restart(self) -> None:
        """Forget what was read (the file is read again); the policy's bans stay."""
        self.held: list[tuple[int, Step]] = []  # (line, step) until decided
        self.native = False  # stagewatch's own text log: its Total is the step wall time
        self.failed = False
        self._evidence: list[_Evidence] = []
        self._prefix: dict[str, str] = {}  # top-level name -> its new path
        self._ancestors: dict[str, tuple[str, ...]] = {}
        self._decided = False
        self._detail = ""

    def push(self, step: Step, native: bool = False, line: int = 0) -> list[tuple[int, Step]]:
        """A parsed step (ending on line ``line``) -> the (line, step) pairs ready to fold in
        (the held ones too, once decided)."""
        self.native |= native
        if not self._decided:
            self.held.append((line, step))
            if len(self.held) < INFER_STEPS:
                return []
            return self.flush()
        return [(line, self._apply(step))]

    def flush(self) -> list[tuple[int, Step]]:
        """Decide on what is held (the file ended or idles) and hand it over."""
        if not self._decided and self.held:
            self._decide()
        out, self.held = self.held, []
        return [(n, self._apply(s)) for n, s in out]

    def _decide(self) -> None:
        self._decided = True
        mode = self.policy.mode
        if mode == "given":
            rules = list(self.policy.given)
        elif mode == "auto" and not self.native:
            banned = self.policy.banned_for(self.path)
            if len(banned) > MAX_BANS:
                rules = []
                self._detail = "given up: later steps broke every rule inferred"
            else:
                rules = infer([_top(s) for _, s in self.held], banned, _log_kids(self.held))
            if banned:
                self._detail = self._detail or (
                    "dropped after later steps broke it: " + ", ".join(sorted(banned))
                )
        else:
            rules = []
        parent_of = {c: p for p, kids in rules for c in kids}
        for c in parent_of:
            chain: list[str] = []
            p = parent_of.get(c)
            while p is not None and p not in chain and len(chain) < MAX_NAMES:
                chain.append(p)
                p = parent_of.get(p)
            self._ancestors[c] = tuple(chain)
            self._prefix[c] = "/".join([*reversed(chain), c])
        self._evidence = [_Evidence(p, kids) for p, kids in rules]

    def _apply(self, step: Step) -> Step:
        if not self._evidence:
            return step
        top = _top(step)
        for ev in self._evidence:
            ev.see(top)
            if (
                self.policy.mode == "auto"
                and ev.steps >= INFER_STEPS
                and not ev.holds()
                and not self.failed
            ):
                self.failed = True
                self.policy.banned_for(self.path).add(ev.parent)
        prefix = self._prefix
        regions: dict[str, tuple[float, int]] = {}
        for k, v in step.regions.items():
            root, sep, rest = k.partition("/")
            new = prefix.get(root)
            key = f"{new}{sep}{rest}" if new is not None else k
            old = regions.get(key)
            regions[key] = (old[0] + v[0], old[1] + v[1]) if old else v
        anc = self._ancestors
        outer = [v for k, v in top.items() if not any(a in top for a in anc.get(k, ()))]
        wall = sum(outer) if outer else step.wall_ms
        return Step(step=step.step, time=step.time, wall_ms=wall, regions=regions, samples=0)

    def note(self) -> NestNote | None:
        """What was decided, with the evidence so far (None: stagewatch's own log, auto)."""
        mode = self.policy.mode
        if self.native and mode == "auto":
            return None
        timed_only = not self.native
        if mode == OFF:
            return NestNote(OFF, timed_only=timed_only)
        rules = tuple(ev.rule() for ev in self._evidence)
        how = GIVEN if mode == "given" else (INFERRED if rules else NONE)
        return NestNote(how, rules, timed_only, self._detail)
