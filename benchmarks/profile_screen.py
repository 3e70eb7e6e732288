"""Where the screen's time goes in ``tui watch`` at scale: the event loop thread's CPU, split.

A writer process appends N ranks x 40 regions at R steps/s (as ``bench_tui.bench_latency``);
the monitor runs headless at 160x48. Printed: the event loop thread's CPU share; of it, the
app's own work on a snapshot (``_take``: building the header's and panels' text) and Textual
composing the frames (``Screen._compositor_refresh``), both in thread CPU; the header's and the
panels' redraws a second; the screen regions repainted a second; the time in each widget's
``render_lines`` (thread CPU). With ``--top N`` also cProfile's top N functions of
the event loop thread (the reader thread is not profiled: ``sys.setprofile`` is per thread;
profiling inflates every figure).

Usage: python benchmarks/profile_screen.py [--rate 10] [--ranks 64] [--seconds 10] [--top 0]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_tui import _CHILD_WRITER  # noqa: E402
from textual._compositor import Compositor  # noqa: E402
from textual.screen import Screen  # noqa: E402
from textual.widget import Widget  # noqa: E402

from tui.testing import start_line  # noqa: E402

ON = [False]  # measuring (after the start-up)
CPU: Counter[str] = Counter()  # thread CPU seconds per phase
CALLS: Counter[str] = Counter()  # calls per phase / widget
WALL: Counter[str] = Counter()  # render_lines thread CPU seconds per widget
DIRTY: Counter[str] = Counter()  # screen regions repainted


def _timed(cls: Any, name: str, label: str, per_widget: bool = False) -> None:
    """Wrap ``cls.name`` to add its thread CPU (to ``label``, or per widget) while measuring."""
    fn: Callable[..., Any] = getattr(cls, name)

    def wrapper(self: Any, *a: Any, **k: Any) -> Any:
        if not ON[0]:
            return fn(self, *a, **k)
        c = time.thread_time()
        try:
            return fn(self, *a, **k)
        finally:
            key = (self.id or type(self).__name__) if per_widget else label
            CALLS[key] += 1
            (WALL if per_widget else CPU)[key] += time.thread_time() - c

    setattr(cls, name, wrapper)


def _note_dirty() -> None:
    partial = Compositor.render_partial_update

    def noting(self: Compositor) -> object:
        if not ON[0]:
            return partial(self)
        for r in self._dirty_regions:
            DIRTY[f"{r.x},{r.y} {r.width}x{r.height}"] += 1
        top = all(r.bottom <= 3 for r in self._dirty_regions)  # the header's rows only
        key = "textual: " + ("header-only frames" if top else "other frames") + " (partial update)"
        c = time.thread_time()
        try:
            return partial(self)
        finally:
            CPU[key] += time.thread_time() - c
            CALLS[key] += 1

    Compositor.render_partial_update = noting  # type: ignore[method-assign]


def profile(rate: float, ranks: int, seconds: float, top: int, size: tuple[int, int]) -> str:
    from tui.source.live import LiveSource
    from tui.view.app import MonitorApp

    root = Path(tempfile.mkdtemp(prefix="sw-prof-"))
    run = root / "20261126-120000-profile-0001"
    run.mkdir()
    for r in range(ranks):
        (run / f"rank{r}.jsonl").write_text(
            start_line(run.name, rank=r, world_size=ranks, total_steps=10**6)
        )
    _timed(MonitorApp, "_take", "app: _take (a snapshot)")
    _timed(MonitorApp, "_flush_panels", "app: _flush_panels")
    _timed(MonitorApp, "_age_header", "app: _age_header")
    _timed(MonitorApp, "_render_header", "  of which _render_header")
    _timed(MonitorApp, "_render_world", "  of which _render_world")
    _timed(MonitorApp, "_fit_heights", "app: _fit_heights")
    from tui.view.widgets.advice import AdviceBox
    from tui.view.widgets.chart import RegionChart
    from tui.view.widgets.header import HeaderBar
    from tui.view.widgets.ranks import RankView
    from tui.view.widgets.runlist import RunList
    from tui.view.widgets.spark import StepSpark
    from tui.view.widgets.tree import StageTree

    for cls in (StageTree, RankView, RegionChart, AdviceBox, StepSpark, RunList, HeaderBar):
        _timed(cls, "show", f"    {cls.__name__}.show")
    _timed(Screen, "_compositor_refresh", "textual: composing frames")
    _timed(Screen, "_refresh_layout", "textual: layout")
    _timed(Widget, "render_lines", "", per_widget=True)
    _note_dirty()
    prof = cProfile.Profile()
    out: dict[str, float] = {}

    async def watch() -> None:
        app = MonitorApp(LiveSource(root))
        async with app.run_test(size=size) as pilot:
            await pilot.pause(2.0)
            n = int(rate * seconds)
            args = [str(run), str(rate), str(n), str(ranks), "1.0"]
            proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_WRITER, *args], cwd=ROOT, stdout=subprocess.DEVNULL
            )
            await pilot.pause(1.2)
            t0, w0 = time.thread_time(), time.monotonic()
            ON[0] = True
            if top:
                prof.enable()
            while proc.poll() is None:
                await asyncio.sleep(0.05)  # a bare sleep: pilot.pause() repaints the screen
            if top:
                prof.disable()
            ON[0] = False
            out["dt"] = dt = time.monotonic() - w0
            out["screen_pct"] = (time.thread_time() - t0) / dt * 100

    asyncio.run(watch())
    dt = out["dt"]
    lines = [
        f"event loop thread: {out['screen_pct']:.2f}% of a core"
        + (" (profiled: inflated)" if top else ""),
        *(
            f"  {k}: {v / dt * 100:.2f}% of a core, {CALLS[k] / dt:.1f}/s, "
            f"{v / max(1, CALLS[k]) * 1000:.2f} ms each"
            for k, v in sorted(CPU.items())
        ),
        "repainted regions a second: "
        + ", ".join(f"{k} {v / dt:.1f}" for k, v in DIRTY.most_common(10)),
        "render_lines per widget (thread CPU, ms a second): "
        + ", ".join(
            f"{k} {v / dt * 1000:.1f} ({CALLS[k] / dt:.1f}/s)" for k, v in WALL.most_common()
        ),
    ]
    if top:
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        st.sort_stats("tottime").print_stats(top)
        st.sort_stats("cumulative").print_stats(top)
        lines.append(s.getvalue())
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--ranks", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--top", type=int, default=0, help="cProfile's top N functions (0: none)")
    ap.add_argument("--size", default="160x48")
    args = ap.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    print(profile(args.rate, args.ranks, args.seconds, args.top, (w, h)))


if __name__ == "__main__":
    main()
