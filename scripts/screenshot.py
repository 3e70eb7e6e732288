"""Regenerate ``docs/screenshot.svg``: the monitor (``tui watch``) on a run, saved by Textual.

    python scripts/screenshot.py                      # a generated 3-rank run shaped like the
                                                      # user's step, rank 2 a straggler
    python scripts/screenshot.py --run runs/logs      # a real log root or run folder
    python scripts/screenshot.py --size 160x48 --out docs/screenshot.svg

The app runs headless (``App.run_test``), so no terminal is needed (CI can run it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tui.source.live import LiveSource  # noqa: E402
from tui.testing import write_run  # noqa: E402
from tui.view.app import MonitorApp  # noqa: E402


def generated_root(tmp: Path) -> Path:
    """A log root with a finished run and a running 3-rank run (rank 2 a straggler)."""
    root = tmp / "logs"
    write_run(
        root,
        "20261126-091500-vrt_spike_baseline-1c0e",
        steps=400,
        ranks=3,
        status="completed",
        seed=1,
    )
    write_run(
        root,
        "20261126-120000-vrt_spike_baseline-3f2a",
        steps=180,
        ranks=3,
        total_steps=26550,
        status=None,
        straggler=2,
        eval_every=50,
        seed=2,
    )
    return root


async def shoot(root: Path, out: Path, size: tuple[int, int], timeout: float = 30.0) -> None:
    app = MonitorApp(LiveSource(root, poll=True, interval=0.05, min_gap=0.0, stale_after=1e9))
    async with app.run_test(size=size) as pilot:
        t0 = time.monotonic()
        while not (app.world and app.world.selected and app.world.selected.step > 0):
            if time.monotonic() - t0 > timeout:
                raise SystemExit(
                    f"screenshot: no run with steps under {root} after {timeout:.0f} s"
                )
            await pilot.pause(0.05)
        await pilot.pause(0.5)  # let every widget render the snapshot
        out.parent.mkdir(parents=True, exist_ok=True)
        app.save_screenshot(filename=out.name, path=str(out.parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--run", default=None, help="a log root or run folder (default: a generated run)"
    )
    p.add_argument("--out", default=str(ROOT / "docs" / "screenshot.svg"))
    p.add_argument("--size", default="160x48", help="terminal COLUMNSxROWS (default 160x48)")
    args = p.parse_args(argv)
    try:
        w, h = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size must look like 160x48, got {args.size!r}")
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.run) if args.run else generated_root(Path(tmp))
        if not root.exists():
            p.error(f"no such folder: {root}")
        asyncio.run(shoot(root, out, (w, h)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
