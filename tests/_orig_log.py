"""A generator of realistic text logs of the original ``TimingLogger`` (BRIEF.md format).

Nested parts logged as separate top-level names (``Forward total`` ⊃ ``VRT`` ⊃ stages,
spike modules, loss), its percentages of the sum of every top-level name, its running
``[avg: …]`` columns, its ``Total`` line; and what a real file carries besides: warnings,
tqdm bars with ``\\r``, stack traces, blank lines, CRLF endings, a truncated last block.
"""

from __future__ import annotations

import random

RULE = "=" * 80
STAGES = [(1, 90.0), (2, 269.0), (3, 95.0), (4, 100.0), (5, 90.0), (6, 80.0), (7, 137.0)]
STAGES.append((8, 965.0))

NOISE = [
    "/opt/conda/lib/python3.10/site-packages/torch/utils/checkpoint.py:61: UserWarning: "
    "None of the inputs have requires_grad=True. Gradients will be None",
    '  warnings.warn("None of the inputs have requires_grad=True")',
    "Epoch 3:  12%|█▏        | 12/100 [00:24<02:56,  2.00s/it]\r"
    "Epoch 3:  13%|█▎        | 13/100 [00:26<02:54,  2.00s/it]\r",
    "Traceback (most recent call last):",
    '  File "train.py", line 212, in <module>',
    "    loss.backward()",
    "RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 47.54 GiB total)",
    "[W reducer.cpp:1300] Warning: find_unused_parameters=True was specified",
    "INFO: epoch 3 iter 120: loss 0.0312 lr 2.0e-04",
]


class OrigLogger:
    """Writes blocks as the original did: running averages, shares of the top-level sum."""

    def __init__(self) -> None:
        self.hist: dict[str, list[float]] = {}

    def block(self, step: int, top: list[tuple[str, float, list[tuple[str, float]]]]) -> str:
        total = sum(ms for _, ms, _ in top)
        lines = [RULE, f"Step {step}", RULE]
        for name, ms, subs in top:
            avg = self._avg(name, ms)
            pct = ms / total * 100 if total else 0.0
            lines.append(f"{name:<41}: {ms:>8.2f}ms ({pct:5.1f}%) [avg: {avg:>8.2f}ms]")
            for sub, sms in subs:
                savg = self._avg(f"{name}/{sub}", sms)
                lines.append(f"  - {sub:<36}: {sms:>8.2f}ms [avg: {savg:>8.2f}ms]")
        lines.append(f"{'Total':-<40}: {total:>8.2f}ms")
        return "\n".join(lines) + "\n"

    def _avg(self, name: str, ms: float) -> float:
        h = self.hist.setdefault(name, [])
        h.append(ms)
        return sum(h) / len(h)


def forward_step(
    rng: random.Random, flat_stages: bool = False, extras: bool = False
) -> list[tuple[str, float, list[tuple[str, float]]]]:
    """One step: ``Forward total`` ⊃ ``VRT`` ⊃ Stage1..8 (as ``  - StageN`` lines, or, with
    ``flat_stages``, as top-level names too), spike encoder and self-attention, loss.
    ``extras``: the disjoint phases a user added (backward, optimizer, data) at top level."""
    stages = [(f"Stage{i}", v * rng.uniform(0.9, 1.1)) for i, v in STAGES]
    vrt = sum(v for _, v in stages) + rng.uniform(20, 60)
    enc = 3.0 * rng.uniform(0.8, 1.2)
    sa = 2.0 * rng.uniform(0.8, 1.2)
    loss = 50.0 * rng.uniform(0.9, 1.1)
    fwd = vrt + enc + sa + loss + rng.uniform(1, 5)
    top: list[tuple[str, float, list[tuple[str, float]]]] = [
        ("Forward total", fwd, []),
        ("VRT", vrt, [] if flat_stages else stages),
        ("Spike encoder", enc, [(f"scale{i}", enc / 3) for i in (1, 2, 3)]),
        ("Spike self-attention", sa, []),
        ("Loss", loss, []),
    ]
    if flat_stages:
        top += [(n, v, []) for n, v in stages]
    if extras:
        top += [
            ("Backward", 4500.0 * rng.uniform(0.9, 1.1), []),
            ("Optimizer step", 75.0 * rng.uniform(0.7, 1.3), []),
            ("Data loading", 0.1 * rng.uniform(0.5, 1.5), []),
        ]
    return top


def original_log(
    n: int = 60,
    seed: int = 1,
    *,
    flat_stages: bool = False,
    extras: bool = False,
    noise: float = 0.0,
    crlf: bool = False,
    restart_at: int | None = None,
    truncate: bool = False,
) -> str:
    """A whole file. ``noise``: chance of an unrelated line between lines; ``restart_at``:
    the process restarted after that many steps (Step 1 again, running averages anew);
    ``truncate``: the file ends inside its last block, in the middle of a line."""
    rng = random.Random(seed)
    log = OrigLogger()
    out: list[str] = []
    step = 0
    for i in range(n):
        if restart_at is not None and i == restart_at:
            log, step = OrigLogger(), 0
        step += 1
        text = log.block(step, forward_step(rng, flat_stages, extras))
        for line in text.splitlines():
            if noise and rng.random() < noise:
                out.append(rng.choice(NOISE) if rng.random() < 0.8 else "")
            out.append(line)
    if truncate:
        # cut inside the last block's third region line: a partial line, no Total line
        last = max(i for i, x in enumerate(out) if x.startswith("Step "))
        out = out[: last + 4]
        out[-1] = out[-1][:50]
    nl = "\r\n" if crlf else "\n"
    body = nl.join(out)
    return body if truncate else body + nl
