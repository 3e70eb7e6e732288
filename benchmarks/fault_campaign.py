"""Fault campaign (issue 12): hostile inputs, tailing and writer faults, kill -9s, bad configs, \
DDP rank kills, counted.

Not part of the test suite (tests/test_fault_campaign.py runs it with tiny counts). Every part
is bounded in count and in time; the defaults take a few minutes on 2 cores::

    python benchmarks/fault_campaign.py --json /tmp/campaign.json
    python benchmarks/fault_campaign.py --fuzz 300 --kills 3 --quick   # seconds, no torch

Figures go to docs/reliability.md. A part that finds a defect lists it under ``failures``
and the script exits 1.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from _report import machine  # noqa: E402

from stagewatch import records as R  # noqa: E402
from stagewatch.timing import TimingLogger, TimingWarning, set_global_timing_logger, timed  # noqa: E402
from stagewatch.timing.jsonl import LineFile  # noqa: E402
from tui.model.snapshot import FINISHED  # noqa: E402
from tui.report.summary import open_run, summary_dict, summary_text  # noqa: E402
from tui.source.reader import RunSource  # noqa: E402
from tui.source.root import RootReader  # noqa: E402
from tui.testing import start_line  # noqa: E402


@dataclass
class Part:
    """One part's counts; ``failures`` names every case that broke a promise."""

    name: str
    tried: int = 0
    survived: int = 0
    crashes: int = 0  # exceptions out of the reader / raised into the caller
    records_expected: int = 0
    records_read: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return max(0, self.records_expected - self.records_read)

    def fail(self, what: str) -> None:
        if len(self.failures) < 20:
            self.failures.append(what[:300])


# --------------------------------------------------------------------------- screen check

_CTRL = (
    {chr(c) for c in range(32) if c not in (10,)} | {"\x7f"} | {chr(c) for c in range(0x80, 0xA0)}
)


def _render_clean(snap: Any) -> bool:
    """``tui summary``'s text (and JSON) of a snapshot: no control character reaches the output."""
    buf = io.StringIO()
    Console(
        file=buf, width=120, color_system=None, force_terminal=False, legacy_windows=False
    ).print(summary_text(snap))
    json.dumps(summary_dict(snap), allow_nan=False)
    return not (set(buf.getvalue()) & _CTRL)


# --------------------------------------------------------------------------- reader fuzz

_HUGE = [
    "1" + "0" * 400,
    "1e400",
    "-1e400",
    "18446744073709551616",
    "NaN",
    "Infinity",
    "-Infinity",
    "true",
    "null",
    '"1"',
    "[]",
    "{}",
    "[[[[[[[[[[1]]]]]]]]]]",
    "-0",
    "1e-400",
    '"\\u00b2.0"',
    '"²"',
    "1e308",
    "-1",
    "0.5",
    '"\\u0000"',
    "9" * 30,
]
_NAMES = [
    "\x1b]0;pwned\x07",
    "\x1b[2J",
    "[bold red]x[/]",
    "[link=http://x]y[/link]",
    "tab\there",
    "nl\\nx",
    "\u202eevil",
    "é/ü/中",
    "a/" * 50 + "z",
    "\x00nul",
    "\x9bcsi",
    "[/]",
    "\\",
    '"q"',
]


def _sentinel(n: int) -> str:
    return json.dumps(
        {
            "v": "1.0",
            "kind": "step",
            "step": n,
            "epoch": 0,
            "time": 1.0 + n,
            "wall_ms": 10.0,
            "samples": 1,
            "regions": {"sentinel": [4.0, 1]},
        },
        separators=(",", ":"),
    )


def _templates(n: int) -> list[dict[str, Any]]:
    # mutants carry odd step numbers, sentinels even ones: a mutant that stays valid adds a step
    # and never repeats a sentinel's number (a repeat would be a resumed segment, by design)
    return [
        {
            "v": "1.0",
            "kind": "step",
            "step": n,
            "epoch": 0,
            "time": 1.0 + n,
            "wall_ms": 10.0,
            "samples": 1,
            "regions": {"a": [4.0, 1], "a/b": [2.0, 1]},
            "scalars": {"loss": 0.5},
            "memory": {"peak": 1000},
        },
        {"v": "1.0", "kind": "eval", "step": n, "time": 1.0, "metrics": {"psnr": 28.0}},
        {"v": "1.0", "kind": "run_end", "time": 2.0, "status": "completed", "steps": n},
    ]


def _mutant(rng: random.Random, n: int) -> tuple[str, str]:
    """One hostile line (and how it was made) from a valid line numbered ``n``."""
    d = rng.choice(_templates(n))
    text = json.dumps(d, separators=(",", ":"))
    how = rng.choice(
        [
            "truncate",
            "truncate",
            "retype",
            "duplicate",
            "huge",
            "deep",
            "name",
            "bytes",
            "ctrl",
            "nested_bad",
            "keep",
        ]
    )
    keys = [k for k in d if k != "step"]
    if how == "truncate":
        return text[: rng.randrange(0, len(text))], how
    if how == "retype":
        k = rng.choice(keys)
        return text.replace(
            f'"{k}":{json.dumps(d[k], separators=(",", ":"))}', f'"{k}":{rng.choice(_HUGE)}', 1
        ), how
    if how == "duplicate":
        k = rng.choice(keys)
        val = rng.choice([*_HUGE, json.dumps(d[k], separators=(",", ":"))])
        return text[:-1] + f',"{k}"{rng.choice(["", " "])}:{val}' + "}", how
    if how == "huge":
        return text.replace(
            rng.choice(["10.0", "4.0", "2.0", "0.5", "28.0", "1000"]), rng.choice(_HUGE), 1
        ), how
    if how == "deep":
        depth = rng.choice([100, 1000, 100_000])
        return text.replace('"samples":1', '"samples":' + "[" * depth + "]" * depth, 1), how
    if how == "name":
        d = _templates(n)[0]
        d["regions"] = {rng.choice(_NAMES): [1.0, 1], "a": [1.0, 1]}
        if rng.random() < 0.5:
            d["scalars"] = {rng.choice(_NAMES): 1.0}
        return json.dumps(d, ensure_ascii=rng.random() < 0.5), how
    if how == "bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))).decode(
            "latin-1"
        ), how
    if how == "ctrl":
        i = rng.randrange(len(text))
        return text[:i] + rng.choice(["\x00", "\x1b", "\r", "\x07", "\ufeff", "\x0c"]) + text[
            i:
        ], how
    if how == "nested_bad":
        d = _templates(n)[0]
        d["regions"] = rng.choice(
            [
                {"a": [-1.0, 1]},
                {"a": [1.0, -1]},
                {"a": [1.0]},
                {"a": "x"},
                {"": [1.0, 1]},
                {"a": [1e13, 1]},
                {"a/": [1.0, 1]},
                [1, 2],
                {"a": [1.0, 1, 3]},
            ]
        )
        return json.dumps(d), how
    return text, how


def _truncations(part: Part, tmp: Path, budget_s: float) -> None:
    """Every byte prefix of each kind of valid line, each alone after a run_start: none crash."""
    deadline = time.monotonic() + budget_s
    lines = [json.dumps(t, separators=(",", ":")) for t in _templates(3)] + [
        start_line("t").rstrip("\n")
    ]
    run = tmp / "trunc"
    run.mkdir()
    for line in lines:
        for cut in range(len(line)):
            if time.monotonic() > deadline:
                return
            part.tried += 1
            (run / "rank0.jsonl").write_text(
                start_line("t") + _sentinel(2) + "\n" + line[:cut] + "\n"
            )
            try:
                src = RunSource(run, use_index=False).load(parallel=False)
                snap = src.snapshot()
                ok = _render_clean(snap)
                part.records_expected += 1
                part.records_read += (
                    snap.region("sentinel").whole.steps if snap.region("sentinel") else 0
                )
                if ok:
                    part.survived += 1
                else:
                    part.fail(f"truncation {cut} of {line[:40]!r}: control character in the output")
            except Exception as e:  # a crash is what the campaign counts
                part.crashes += 1
                part.fail(f"truncation {cut} of {line[:40]!r}: {type(e).__name__}: {e}")


def reader_fuzz(tmp: Path, n_inputs: int, seed: int, budget_s: float) -> Part:
    """Hostile lines interleaved with valid sentinels, read the way ``tui summary`` does."""
    part = Part("reader fuzz")
    t0 = time.monotonic()
    tmp.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    per_file = 20
    hows: dict[str, int] = {}
    k = 0
    deadline = t0 + budget_s
    while part.tried < n_inputs and time.monotonic() < deadline:
        run = tmp / f"fz{k:05d}"
        run.mkdir()
        body = [start_line(run.name).rstrip("\n")]
        sentinels = 0
        nonblank = 1
        mutants = 0
        for i in range(1, per_file + 1):
            body.append(_sentinel(4 * i))
            sentinels += 1
            nonblank += 1
            line, how = _mutant(rng, 4 * i + 1)
            hows[how] = hows.get(how, 0) + 1
            mutants += 1
            # a line is what lies between newlines: count the pieces a mutant makes
            pieces = line.replace("\r", "\n").split("\n") if "\n" in line else [line]
            nonblank += sum(1 for p in pieces if p.strip(" \t\r\n\x0b\x0c"))
            body.append(line)
        raw = ("\n".join(body) + "\n").encode("utf-8", "surrogateescape")
        (run / "rank0.jsonl").write_bytes(raw)
        part.tried += mutants
        k += 1
        try:
            snap = open_run(run)
            src = RunSource(run, use_index=False).load(parallel=False)
            sent = snap.region("sentinel")
            got = sent.whole.steps if sent is not None else 0
            part.records_expected += sentinels
            part.records_read += got
            clean = _render_clean(snap)
            info = src.files()[0]
            if got != sentinels:
                part.fail(f"{run.name}: {got} of {sentinels} valid lines kept")
            elif not clean:
                part.fail(f"{run.name}: control character in tui summary's output")
            elif info.malformed + info.skipped > nonblank:
                part.fail(f"{run.name}: {info.malformed} malformed of {nonblank} lines")
            else:
                part.survived += mutants
        except Exception as e:
            part.crashes += 1
            part.fail(f"{run.name}: {type(e).__name__}: {e}")
        if k % 50 == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True, exist_ok=True)
    trunc = Part("truncations")
    (tmp / "t").mkdir(parents=True, exist_ok=True)
    _truncations(trunc, tmp / "t", budget_s / 4)
    part.tried += trunc.tried
    part.survived += trunc.survived
    part.crashes += trunc.crashes
    part.records_expected += trunc.records_expected
    part.records_read += trunc.records_read
    part.failures += trunc.failures
    part.extra = {"mutations": dict(sorted(hows.items())), "files": k, "truncations": trunc.tried}
    part.seconds = time.monotonic() - t0
    return part


# --------------------------------------------------------------------------- tailing faults


def _steps(n0: int, n1: int, ms: float = 4.0) -> str:
    return "".join(
        json.dumps(
            {
                "v": "1.0",
                "kind": "step",
                "step": i,
                "epoch": 0,
                "time": 1.0 + i,
                "wall_ms": 10.0,
                "samples": 1,
                "regions": {"a": [ms, 1]},
            },
            separators=(",", ":"),
        )
        + "\n"
        for i in range(n0, n1 + 1)
    )


def _mkrun(root: Path, name: str, steps: int, ms: float = 4.0) -> Path:
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "rank0.jsonl").write_text(start_line(name) + _steps(1, steps, ms))
    return run


def _poll_steps(src: RunSource) -> int:
    src.poll(budget_s=None)
    return src.snapshot().wall.steps


def _t_truncate(d: Path) -> bool:
    run = _mkrun(d, "r", 20, 100.0)
    src = RunSource(run, use_index=False)
    a = _poll_steps(src)
    (run / "rank0.jsonl").write_text(start_line("r") + _steps(1, 3, 3.0))
    snap = (src.poll(budget_s=None), src.snapshot())[1]
    return a == 20 and snap.wall.steps == 3 and snap.region("a").whole.max == 3.0


def _t_rotate(d: Path) -> bool:
    run = _mkrun(d, "r", 10)
    src = RunSource(run, use_index=False)
    _poll_steps(src)
    os.rename(run / "rank0.jsonl", run / "rank0.jsonl.1")
    (run / "rank0.jsonl").write_text(start_line("r") + _steps(1, 4, 9.0))
    snap = (src.poll(budget_s=None), src.snapshot())[1]
    return snap.wall.steps == 4 and snap.region("a").whole.min == 9.0


def _t_replace(d: Path) -> bool:
    run = _mkrun(d, "r", 3)
    src = RunSource(run, use_index=False)
    _poll_steps(src)
    (run / "new").write_text(start_line("r") + _steps(1, 12, 7.0))
    os.replace(run / "new", run / "rank0.jsonl")
    snap = (src.poll(budget_s=None), src.snapshot())[1]
    return snap.wall.steps == 12 and snap.region("a").whole.min == 7.0


def _t_rewrite_longer(d: Path) -> bool:
    run = _mkrun(d, "r", 1, 100.0)
    src = RunSource(run, use_index=False)
    _poll_steps(src)
    with open(run / "rank0.jsonl", "r+") as f:
        f.write(start_line("r", t0=5.0) + _steps(1, 6, 5.0))
    snap = (src.poll(budget_s=None), src.snapshot())[1]
    return snap.wall.steps == 6 and snap.region("a").whole.max == 5.0


def _t_partial(d: Path) -> bool:
    run = d / "r"
    run.mkdir()
    data = start_line("r") + _steps(1, 30)
    src = RunSource(run, use_index=False)
    f = run / "rank0.jsonl"
    for i in range(0, len(data), 37):  # every write ends mid-line
        with open(f, "a") as fh:
            fh.write(data[i : i + 37])
        src.poll(budget_s=None)
    return src.snapshot().wall.steps == 30 and src.files()[0].malformed == 0


def _t_partial_completed_later(d: Path) -> bool:
    run = _mkrun(d, "r", 5)
    src = RunSource(run, use_index=False)
    line = _steps(6, 6)
    with open(run / "rank0.jsonl", "a") as fh:
        fh.write(line[:25])
    a = _poll_steps(src)
    with open(run / "rank0.jsonl", "a") as fh:
        fh.write(line[25:])
    return a == 5 and _poll_steps(src) == 6 and src.files()[0].malformed == 0


def _t_fifo(d: Path) -> bool:
    run = d / "20261126-110000-fifo-0001"
    run.mkdir()
    os.mkfifo(run / "rank0.jsonl")
    live = _mkrun(d, "20261126-120000-live-0002", 5)
    r = RootReader(d, use_index=False)
    r.tick()
    runs = {x.run_id: x for x in r.runs.values()}
    return (
        runs[live.name].snapshot().wall.steps == 5
        and runs[run.name].files()[0].state == "not-regular"
    )


def _t_dir(d: Path) -> bool:
    run = d / "r"
    (run / "rank0.jsonl").mkdir(parents=True)
    (run / "rank1.jsonl").write_text(start_line("r") + _steps(1, 3))
    src = RunSource(run, use_index=False).load(parallel=False)
    states = sorted(f.state for f in src.files())
    return states == ["not-regular", "ok"] and src.snapshot().wall.steps >= 3


def _t_removed(d: Path) -> bool:
    run = _mkrun(d, "r", 8)
    src = RunSource(run, use_index=False)
    _poll_steps(src)
    os.unlink(run / "rank0.jsonl")
    src.poll(budget_s=None)
    src.discover()
    snap = src.snapshot()
    return snap.wall.steps == 8 and any(f.state == "missing" for f in snap.files)


def _t_symlink_loop(d: Path) -> bool:
    run = d / "r"
    run.mkdir()
    os.symlink(run / "rank0.jsonl", run / "rank0.jsonl")
    f = RunSource(run, use_index=False).load(parallel=False).files()[0]
    return f.state == "symlink-loop" and "permission" not in f.problem


def _t_deleted_root(d: Path) -> bool:
    root = d / "logs"
    _mkrun(root, "20261126-120000-a-0001", 4)
    r = RootReader(root, use_index=False)
    r.tick()
    a = len(r.items())
    shutil.rmtree(root)
    r.tick(force_all=True)
    return a == 1 and len(r.items()) == 0


def _t_new_run_appears(d: Path) -> bool:
    root = d / "logs"
    root.mkdir()
    r = RootReader(root, use_index=False)
    r.tick()
    _mkrun(root, "20261126-120000-a-0001", 4)
    r.tick(force_all=True)
    return len(r.items()) == 1


def _t_nul_block(d: Path) -> bool:
    run = d / "r"
    run.mkdir()
    # a crash on some filesystems leaves a block of NUL bytes where the last lines were
    (run / "rank0.jsonl").write_bytes(
        (start_line("r") + _steps(1, 5)).encode() + b"\0" * 4096 + b"\n" + _steps(6, 9).encode()
    )
    src = RunSource(run, use_index=False).load(parallel=False)
    return src.snapshot().wall.steps == 9 and src.files()[0].malformed == 1


def _t_huge_line(d: Path) -> bool:
    run = d / "r"
    run.mkdir()
    (run / "rank0.jsonl").write_text(
        start_line("r") + _steps(1, 2) + '{"x":"' + "y" * 10_000_000 + '"}\n' + _steps(3, 4)
    )
    src = RunSource(run, use_index=False).load(parallel=False)
    return src.snapshot().wall.steps == 4 and src.files()[0].malformed == 1


def _t_resumed(d: Path) -> bool:
    run = d / "r"
    run.mkdir()
    body = start_line("r", total_steps=100) + _steps(1, 56)
    # (one start_step key: with two, the last one, 0, would be the one read)
    body += start_line("r", total_steps=100).replace('"start_step":0', '"start_step":50', 1)
    body += _steps(51, 100, 6.0)
    (run / "rank0.jsonl").write_text(body)
    src = RunSource(run, use_index=False)
    for f in src.feeds.values() if hasattr(src, "feeds") else ():
        f.tail.chunk = 700
    snap = (src.poll(budget_s=None), src.snapshot())[1]
    return snap.wall.steps == 100 and snap.step == 100


def _t_unreadable(d: Path) -> bool:
    run = _mkrun(d, "r", 3)
    if os.geteuid() == 0:  # root reads any file: make it unreadable another way
        os.unlink(run / "rank0.jsonl")
        os.symlink("/proc/self/mem-not-there/x", run / "rank0.jsonl")
    else:
        (run / "rank0.jsonl").chmod(0)
    src = RunSource(run, use_index=False).load(parallel=False)
    return src.files()[0].state in ("missing", "unreadable") and src.snapshot().wall.steps == 0


def _t_grows_while_read_by_root(d: Path) -> bool:
    root = d / "logs"
    run = _mkrun(root, "20261126-120000-a-0001", 2)
    r = RootReader(root, use_index=False)
    for i in range(3, 40):
        with open(run / "rank0.jsonl", "a") as fh:
            fh.write(_steps(i, i))
        r.tick(force_all=True)
    src = next(iter(r.runs.values()))
    return src.snapshot().wall.steps == 39


TAILING: list[tuple[str, Callable[[Path], bool]]] = [
    ("truncated and rewritten", _t_truncate),
    ("rotated (renamed, new file)", _t_rotate),
    ("replaced (os.replace)", _t_replace),
    ("rewritten in place, longer", _t_rewrite_longer),
    ("written in 37-byte pieces", _t_partial),
    ("partial last line completed later", _t_partial_completed_later),
    ("FIFO named rank0.jsonl", _t_fifo),
    ("folder named rank0.jsonl", _t_dir),
    ("rank file removed", _t_removed),
    ("symlink loop", _t_symlink_loop),
    ("log root deleted", _t_deleted_root),
    ("run folder appears", _t_new_run_appears),
    ("NUL block after a crash", _t_nul_block),
    ("10 MB line", _t_huge_line),
    ("resumed segment repeats steps", _t_resumed),
    ("dangling symlink as rank file", _t_unreadable),
    ("growing under RootReader", _t_grows_while_read_by_root),
]


def _bounded(fn: Callable[[], bool], timeout_s: float) -> tuple[bool | None, str]:
    """Run ``fn`` in a thread: (result, error); None when it did not end in ``timeout_s``
    (a hang)."""
    out: dict[str, Any] = {}

    def go() -> None:
        try:
            out["ok"] = fn()
        except BaseException as e:  # counted as a crash
            out["err"] = f"{type(e).__name__}: {e}"

    th = threading.Thread(target=go, daemon=True)
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        return None, f"hung for {timeout_s:.0f} s"
    return out.get("ok"), out.get("err", "")


def tailing_faults(tmp: Path, timeout_s: float = 20.0) -> Part:
    part = Part("tailing faults")
    t0 = time.monotonic()
    for i, (name, fn) in enumerate(TAILING):
        d = tmp / f"tail{i:02d}"
        d.mkdir(parents=True)
        part.tried += 1
        ok, err = _bounded(lambda fn=fn, d=d: fn(d), timeout_s)
        if ok:
            part.survived += 1
        elif err:
            part.crashes += 1
            part.fail(f"{name}: {err}")
        else:
            part.fail(f"{name}: wrong figures")
    part.seconds = time.monotonic() - t0
    return part


# --------------------------------------------------------------------------- writer faults


def _logger(root: Path, **kw: Any) -> TimingLogger:
    kw.setdefault("enable_console", False)
    kw.setdefault("enable_file", False)
    kw.setdefault("collect_memory", False)
    kw.setdefault("handle_sigterm", False)
    return TimingLogger(root, **kw)


def _read_back(lg: TimingLogger) -> tuple[int, int, int]:
    """(steps, distinct step numbers, eval records) the reader and the decoder see in ``lg``'s
    file."""
    assert lg.run_dir is not None
    path = Path(lg.run_dir) / R.rank_file_name(lg.rank)
    snap = RunSource(Path(lg.run_dir), use_index=False).load(parallel=False).snapshot()
    numbers, evals = set(), 0
    for line in path.read_bytes().splitlines():
        rec = R.decode(line)
        if isinstance(rec, R.Step):
            numbers.add(rec.step)
        elif isinstance(rec, R.Eval):
            evals += 1
    return snap.wall.steps, len(numbers), evals


def _w_hostile_values(root: Path) -> tuple[int, int, str]:
    lg = _logger(
        root,
        run_id="hv",
        config={"lr": math.nan, 3: "k", ("a", 1): "t", "deep": {"x": 10**400}},
        total_steps=10**400,
        file_flush_interval=7,
    )
    set_global_timing_logger(lg)
    n = 200
    try:
        for i in range(n):
            with timed(None):  # type: ignore[arg-type]
                pass
            with timed(["unhashable"]):  # type: ignore[arg-type]
                pass
            with lg.region(42):  # type: ignore[arg-type]
                pass
            lg.end(lg.begin(None))  # type: ignore[arg-type]
            lg.log(b"bytes", 1.0)  # type: ignore[arg-type]
            lg.log("huge", 1e12)
            lg.log("inf", math.inf)
            with lg.region("ok"):
                pass
            lg.step(
                scalars={"x": 10**400, "y": 1e400, 7: 1.0, "loss": 0.5, "nan": math.nan},
                memory={"rss": 10**30, "ok": 5},
                samples="many",
                epoch=math.inf,
            )
            if i % 10 == 0:
                lg.log_eval("last", {"psnr": 10**400, "ssim": 0.9})
    finally:
        set_global_timing_logger(None)
    lg.close()
    steps, distinct, evals = _read_back(lg)
    return (
        n + n // 10,
        steps + evals,
        "" if distinct == n else f"{distinct} distinct step numbers of {n}",
    )


def _w_open_across_step(root: Path) -> tuple[int, int, str]:
    lg = _logger(root, run_id="open")
    set_global_timing_logger(lg)
    n = 100
    try:
        outer = timed("epoch")
        outer.__enter__()
        for _ in range(n):
            with timed("forward"):
                pass
            lg.step()
        outer.__exit__(None, None, None)
        never = lg.begin("leaked")  # never ended
        del never
        lg.step()
    finally:
        set_global_timing_logger(None)
    lg.close()
    steps, _, _ = _read_back(lg)
    recs = [R.decode(x) for x in (Path(lg.run_dir or "") / "rank0.jsonl").read_bytes().splitlines()]
    names = {k for r in recs if isinstance(r, R.Step) for k in r.regions}
    over = [
        r.step
        for r in recs
        if isinstance(r, R.Step) and any(ms > r.wall_ms for ms, _ in r.regions.values())
    ]
    bad = (
        ""
        if names <= {"epoch", "epoch/forward", "forward", "leaked"} and not over
        else f"names {sorted(names)[:5]}, over 100%: {over[:5]}"
    )
    return n + 1, steps, bad


def _w_threads_step(root: Path) -> tuple[int, int, str]:
    lg = _logger(root, run_id="thr", file_flush_interval=1)
    k, m = 4, 500
    go = threading.Event()

    def worker() -> None:
        go.wait()
        for _ in range(m):
            with lg.region("w"):
                pass
            lg.step()

    ths = [threading.Thread(target=worker) for _ in range(k)]
    for t in ths:
        t.start()
    go.set()
    for t in ths:
        t.join()
    lg.close()
    steps, distinct, _ = _read_back(lg)
    return k * m, steps, "" if distinct == k * m else f"{distinct} distinct step numbers of {k * m}"


def _w_eval_thread(root: Path) -> tuple[int, int, str]:
    lg = _logger(root, run_id="ev", file_flush_interval=1)
    n = 2000
    go = threading.Event()

    def evals() -> None:
        go.wait()
        for i in range(n):
            lg.log_eval(i, {"psnr": float(i)})

    th = threading.Thread(target=evals)
    th.start()
    go.set()
    for _ in range(n):
        with lg.region("f"):
            pass
        lg.step()
    th.join()
    lg.close()
    steps, _, ev = _read_back(lg)
    return 2 * n, steps + ev, ""


def _w_disk_full(root: Path) -> tuple[int, int, str]:
    if not os.path.exists("/dev/full"):
        return 0, 0, ""
    f = LineFile("/dev/full")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for i in range(200):
            f.write(f"line {i}\n")
            f.flush()
        f.close()
    n = sum(1 for w in rec if issubclass(w.category, TimingWarning))
    # nothing can be kept on a full disk: the promise is one warning and no exception
    return 0, 0, "" if n == 1 and f.disabled else f"{n} warnings"


def _w_log_root_is_a_file(root: Path) -> tuple[int, int, str]:
    blocker = root / "a-file"
    blocker.write_text("x")
    lg = _logger(blocker / "logs", file_flush_interval=1)
    for _ in range(50):
        with lg.region("forward"):
            pass
        lg.step()
    lg.close()
    n = lg.get_summary()["forward"]["count"]
    return 50, int(n), ""  # the records are the in-memory statistics: the file cannot exist


def _w_folder_removed(root: Path) -> tuple[int, int, str]:
    lg = _logger(root, run_id="rm", file_flush_interval=1)
    for _ in range(5):
        lg.step()
    shutil.rmtree(lg.run_dir or "")
    for _ in range(50):
        lg.step()
    lg.close()
    return 0, 0, "" if lg.step_count == 55 else f"step_count {lg.step_count}"


def _w_append_after_partial(root: Path) -> tuple[int, int, str]:
    lg = _logger(root, run_id="part", file_flush_interval=1)
    for _ in range(10):
        lg.step()
    lg.close()
    with open(Path(lg.run_dir or "") / "rank0.jsonl", "a") as f:
        f.write('{"v":"1.0","kind":"step","step":11,"ep')  # a kill -9 mid-line
    lg2 = _logger(root, run_id="part", file_flush_interval=1, start_step=10)
    for _ in range(10):
        lg2.step()
    lg2.close()
    steps, distinct, _ = _read_back_tolerant(lg2)
    return 20, steps, "" if distinct == 20 else f"{distinct} distinct"


def _read_back_tolerant(lg: TimingLogger) -> tuple[int, int, int]:
    path = Path(lg.run_dir or "") / "rank0.jsonl"
    snap = RunSource(Path(lg.run_dir or ""), use_index=False).load(parallel=False).snapshot()
    numbers = set()
    for line in path.read_bytes().splitlines():
        try:
            rec = R.decode(line)
        except R.RecordError:
            continue
        if isinstance(rec, R.Step):
            numbers.add(rec.step)
    return snap.wall.steps, len(numbers), 0


def _w_near_limits(root: Path) -> tuple[int, int, str]:
    lg = _logger(root, run_id="lim")
    lg.log("near", R.MAX_MS * 0.99)
    lg.log("a" * (R.MAX_NAME_CHARS + 1), 1.0)
    lg.step(scalars={"s": R.MAX_ABS_NUMBER * 0.5})
    lg.log("x", R.MAX_MS * 0.99)
    lg.log("y", R.MAX_MS * 0.99)
    lg.step(memory={"peak": R.MAX_BYTES_VALUE - 1})
    lg.close()
    steps, _, _ = _read_back(lg)
    return 2, steps, ""


def _w_huge_config(root: Path) -> tuple[int, int, str]:
    lg = _logger(root, run_id="cfg", config={"blob": "x" * (R.MAX_LINE_BYTES + 10)})
    lg.step()
    lg.close()
    steps, _, _ = _read_back(lg)
    return 1, steps, ""


def _w_bad_constructor_args(root: Path) -> tuple[int, int, str]:
    lg = _logger(
        root,
        run_id="args",
        start_step=-5,
        total_steps=-1,
        samples_per_step=math.nan,  # type: ignore[arg-type]
        max_region_names=3,
    )
    for _ in range(20):
        for k in range(10):  # more names than max_region_names
            lg.log(f"r{k}", 1.0)
        lg.step()
    lg.close()
    steps, _, _ = _read_back(lg)
    return 20, steps, ""


def _w_close_twice_and_after(root: Path) -> tuple[int, int, str]:
    lg = _logger(root, run_id="twice")
    lg.step()
    lg.close()
    lg.close()
    lg.step()  # after close: ignored, never raises
    lg.log_eval(1, {"m": 1.0})
    lg.flush()
    steps, _, _ = _read_back(lg)
    return 1, steps, ""


WRITER_FAULTS: list[tuple[str, Callable[[Path], tuple[int, int, str]]]] = [
    ("hostile values (10**400, NaN, non-str keys, timed(None))", _w_hostile_values),
    ("region open across step / never closed", _w_open_across_step),
    ("4 threads calling step()", _w_threads_step),
    ("log_eval from a second thread", _w_eval_thread),
    ("disk full (/dev/full)", _w_disk_full),
    ("log root is a file (read-only)", _w_log_root_is_a_file),
    ("run folder removed mid-run", _w_folder_removed),
    ("append after a partial line", _w_append_after_partial),
    ("values at the shared limits", _w_near_limits),
    ("config over the line limit", _w_huge_config),
    ("bad constructor arguments", _w_bad_constructor_args),
    ("close twice, use after close", _w_close_twice_and_after),
]


def writer_faults(tmp: Path) -> Part:
    part = Part("writer faults")
    t0 = time.monotonic()
    warned = 0
    for i, (name, fn) in enumerate(WRITER_FAULTS):
        d = tmp / f"w{i:02d}"
        d.mkdir(parents=True)
        part.tried += 1
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            try:
                expected, read, bad = fn(d)
            except BaseException as e:  # raised into the caller: the count
                part.crashes += 1
                part.fail(f"{name}: raised {type(e).__name__}: {e}")
                continue
        warned += sum(1 for w in rec if issubclass(w.category, TimingWarning))
        part.records_expected += expected
        part.records_read += read
        if bad or read < expected:
            part.fail(f"{name}: {bad or f'{read} of {expected} records read back'}")
        else:
            part.survived += 1
    part.extra = {"warnings": warned}
    part.seconds = time.monotonic() - t0
    return part


# --------------------------------------------------------------------------- kill -9

VICTIM = textwrap.dedent(
    """
    import sys, time
    from stagewatch.timing import TimingLogger
    root, start, end, flush = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    lg = TimingLogger(root, run_id="victim", enable_console=False, enable_file=False,
                      collect_memory=False, file_flush_interval=flush, start_step=start,
                      total_steps=end)
    names = [f"forward/block{k:02d}/with_a_long_name_to_make_lines_long" for k in range(40)]
    for i in range(start, end):
        with lg.region("forward"):
            for nm in names:
                lg.log(nm, 0.5)
        lg.step(scalars={"loss": 1.0 / (i + 1)})
        if i % 20 == 0:
            time.sleep(0.001)
    lg.close()
    """
)


def _last_step(path: Path) -> int:
    """The last complete step record's number (what a checkpoint written then would say)."""
    last = 0
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    for line in data.split(b"\n")[:-1]:
        try:
            rec = R.decode(line)
        except R.RecordError:
            continue
        if isinstance(rec, R.Step):
            last = rec.step
    return last


def _start_and_kill(
    rng: random.Random, args: list[str], path: Path, env: dict[str, str], flush: int
) -> subprocess.Popen[bytes]:
    """Start the victim writer (``args``: script, root, start step) and SIGKILL it once it
    has written a random amount (or at once); the process, ended."""
    proc = subprocess.Popen(
        [sys.executable, *args, str(10**9), str(flush)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    size0 = path.stat().st_size if path.exists() else 0
    # wait until it has written something (or not: some kills land before the first record)
    grow = rng.choice([0, 1, 5_000, 50_000, 200_000])
    wait_until = time.monotonic() + 15
    while grow and time.monotonic() < wait_until:
        if path.exists() and path.stat().st_size >= size0 + grow:
            break
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.05))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return proc


def _cut_last_write(rng: random.Random, path: Path) -> int:
    """Sometimes (1 if done) cut the file inside its last few lines.

    A SIGKILL always lands between two write() calls (Linux finishes a write to the page
    cache); a cut write (power loss, disk full, another filesystem) leaves part of a line:
    cut the file as such a write would."""
    if not path.exists() or rng.random() >= 0.4:
        return 0
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(max(0, size - rng.randrange(1, 4000)))
    return 1


def kill9(tmp: Path, kills: int, seed: int, budget_s: float, final_steps: int = 200) -> Part:
    """Kill a writer with SIGKILL at random moments, resume from a checkpoint a few steps back,
    read."""
    part = Part("kill -9 and resume")
    t0 = time.monotonic()
    rng = random.Random(seed)
    root = tmp / "logs"
    root.mkdir(parents=True)
    script = tmp / "victim.py"
    script.write_text(VICTIM)
    path = root / "victim" / "rank0.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    partial_tails = 0
    cuts = 0
    repeated = 0
    flushes: dict[int, int] = {}
    start = 0
    deadline = t0 + budget_s
    for _ in range(kills):
        if time.monotonic() > deadline:
            break
        # flushes of 1 step (one short write) to 512 steps (1.5 MB writes, which a SIGKILL can cut)
        flush = rng.choice([1, 1, 64, 512])
        flushes[flush] = flushes.get(flush, 0) + 1
        proc = _start_and_kill(rng, [str(script), str(root), str(start)], path, env, flush)
        part.tried += 1
        if proc.returncode != -signal.SIGKILL:
            part.fail(
                f"victim ended {proc.returncode} before the kill: {proc.stderr.read()[-300:]!r}"
            )  # type: ignore[union-attr]
        cuts += _cut_last_write(rng, path)
        if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            partial_tails += 1
        last = _last_step(path)
        # resume from a checkpoint a few steps behind the last step in the file (steps not
        # flushed at the kill, or cut off, are run again too)
        back = min(last, rng.choice([0, 0, 1, 3, 7]))
        repeated += back
        start = last - back
    end = start + final_steps
    done = subprocess.run(
        [sys.executable, str(script), str(root), str(start), str(end), "50"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        part.fail(f"final writer failed: {done.stderr[-300:]}")
    try:
        src = RunSource(path.parent, use_index=False).load(parallel=False)
        snap = src.snapshot()
        info = src.files()[0]
        live = RunSource(path.parent, use_index=False)
        for f in live.feeds.values():
            f.tail.chunk = 4096
        live.poll(budget_s=None)
        live_steps = live.snapshot().wall.steps
    except Exception as e:
        part.crashes += 1
        part.fail(f"reader: {type(e).__name__}: {e}")
        part.seconds = time.monotonic() - t0
        return part
    part.records_expected = end
    part.records_read = snap.wall.steps
    # the decoder's count of repeated step records: what the reader must drop, no more
    numbers: list[int] = []
    bad_lines = 0
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = R.decode(line)
        except R.RecordError:
            bad_lines += 1
            continue
        if isinstance(rec, R.Step):
            numbers.append(rec.step)
    repeats = len(numbers) - len(set(numbers))
    ok = (
        snap.wall.steps == end == snap.step
        and live_steps == end
        and info.malformed == bad_lines <= partial_tails
        and info.duplicates == repeats
    )
    if snap.state != FINISHED:
        part.fail(f"state {snap.state}, not {FINISHED}")
    elif not ok:
        part.fail(
            f"steps {snap.wall.steps} (live {live_steps}), last {snap.step}, expected {end}; "
            f"malformed {info.malformed} of {bad_lines} partial lines; "
            f"duplicates {info.duplicates} of {repeats}"
        )
    else:
        part.survived = part.tried
    part.extra = {
        "steps": end,
        "partial_last_lines": bad_lines,
        "kills_leaving_a_partial_line": partial_tails,
        "malformed_read": info.malformed,
        "duplicates_dropped": info.duplicates,
        "repeated_step_records": repeats,
        "writes_cut": cuts,
        "checkpoint_lag_steps": repeated,
        "kills_by_flush_interval": {str(k): v for k, v in sorted(flushes.items())},
        "file_bytes": path.stat().st_size,
    }
    part.seconds = time.monotonic() - t0
    return part


# --------------------------------------------------------------------------- trainer configs

BAD_SETS = [
    "TRAIN.OPTIM.LR=nan",
    "TRAIN.OPTIM.LR=.inf",
    "TRAIN.OPTIM.LR=1e999",
    "TRAIN.BATCH_SIZE=100000",
    "TRAIN.BATCH_SIZE=-1",
    "TRAIN.NOPE=1",
    "TRAIN.OPTIM.LR=[1,2]",
    "TRAIN.OPTIM.LR",
]


def trainer_configs(tmp: Path, n: int) -> Part:
    """Bad ``--set`` values and a log root that is a file: exit 2 with one line, no traceback."""
    part = Part("trainer bad configs")
    t0 = time.monotonic()
    tmp.mkdir(parents=True, exist_ok=True)
    blocker = tmp / "a-file"
    blocker.write_text("x")
    cases = [["--set", s] for s in BAD_SETS]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cases.append([])  # the log root is a file
    for args in cases[:n]:
        part.tried += 1
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "trainer",
                "train",
                "--cfg",
                "configs/deblur/vrt_spike_tiny.yaml",
                "--log-dir",
                str(tmp / "logs"),
                *args,
            ]
            if args
            else [
                sys.executable,
                "-m",
                "trainer",
                "train",
                "--cfg",
                "configs/deblur/vrt_spike_tiny.yaml",
                "--log-dir",
                str(blocker),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        err = r.stderr.strip()
        if r.returncode == 2 and "Traceback" not in err and err and len(err.splitlines()) <= 2:
            part.survived += 1
        else:
            part.fail(f"{' '.join(args)}: exit {r.returncode}: {err[-200:]!r}")
    part.seconds = time.monotonic() - t0
    return part


# --------------------------------------------------------------------------- DDP rank kill


def ddp_rank_kill(tmp: Path, victims: list[int], timeout_s: float = 180.0) -> Part:
    """Two gloo ranks through torchrun; SIGKILL one mid-run: the survivor must end, recorded,
    no hang."""
    import socket

    sys.path.insert(0, str(ROOT / "tests"))
    from _trainer_helpers import MICRO, TINY  # the micro model the trainer tests use

    part = Part("DDP rank kill")
    t0 = time.monotonic()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("STAGEWATCH_RUN_ID", None)
    for victim in victims:
        part.tried += 1
        logs = tmp / f"ddp{victim}"
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            port = sk.getsockname()[1]
        sets = [
            a
            for item in [*MICRO, "TRAIN.MAX_STEPS=100000", "TRAIN.VAL.EVERY=100000"]
            for a in ("--set", item)
        ]
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            "-m",
            "trainer",
            "train",
            "--cfg",
            TINY,
            "--log-dir",
            str(logs),
            *sets,
        ]
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            pid, deadline = 0, time.monotonic() + timeout_s
            while time.monotonic() < deadline and proc.poll() is None and not pid:
                for f in logs.glob(f"*/rank{victim}.jsonl"):
                    lines = f.read_bytes().split(b"\n")[:-1]
                    if sum(1 for x in lines if b'"kind":"step"' in x) >= 3:
                        pid = R.decode(lines[0]).pid  # type: ignore[union-attr]
                time.sleep(0.2)
            if not pid:
                part.fail(
                    f"rank {victim}: no 3 steps within {timeout_s:.0f} s (exit {proc.poll()})"
                )
                continue
            os.kill(pid, signal.SIGKILL)
            t_kill = time.monotonic()
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                part.fail(
                    f"rank {victim} killed: torchrun still running after {timeout_s:.0f} s (a hang)"
                )
                continue
            (run,) = list(logs.iterdir())
            survivor = 1 - victim
            recs = [
                R.decode(x)
                for x in (run / f"rank{survivor}.jsonl").read_bytes().splitlines()
                if x.strip()
            ]
            end = recs[-1]
            snap = RunSource(run, use_index=False).load(parallel=False).snapshot()
            status = getattr(end, "status", None)
            bad = {Path(f.path).name: f.malformed for f in snap.files}
            part.extra.setdefault("malformed_lines", {}).update({f"rank{victim}_killed": bad})
            part.extra[f"rank{victim}_killed"] = {
                "torchrun_exit": rc,
                "seconds_to_exit": round(time.monotonic() - t_kill, 1),
                "survivor_status": status,
                "monitor_state": snap.state,
            }
            if (
                rc != 0
                and isinstance(end, R.RunEnd)
                and status in (R.STATUS_FAILED, R.STATUS_INTERRUPTED)
                and sum(bad.values()) <= 1
            ):  # at most the killed rank's partial last line
                part.survived += 1
            else:
                part.fail(
                    f"rank {victim} killed: torchrun exit {rc}, survivor's last record {end!r:.120}"
                )
        except Exception as e:
            part.crashes += 1
            part.fail(f"rank {victim}: {type(e).__name__}: {e}")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    part.seconds = time.monotonic() - t0
    return part


# --------------------------------------------------------------------------- main


def table(parts: list[Part]) -> str:
    head = (
        f"{'part':<22} {'tried':>7} {'survived':>9} {'crashes':>8} {'expected':>9} "
        f"{'read':>8} {'lost':>5} {'s':>6}"
    )
    rows = [head, "-" * len(head)]
    for p in parts:
        rows.append(
            f"{p.name:<22} {p.tried:>7} {p.survived:>9} {p.crashes:>8} {p.records_expected:>9} "
            f"{p.records_read:>8} {p.lost:>5} {p.seconds:>6.1f}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fuzz", type=int, default=50_000, help="hostile reader lines (default 50000)")
    ap.add_argument("--kills", type=int, default=50, help="kill -9s of a writer (default 50)")
    ap.add_argument(
        "--configs", type=int, default=len(BAD_SETS) + 1, help="bad trainer configs (0: skip)"
    )
    ap.add_argument(
        "--ddp",
        type=int,
        default=2,
        choices=(0, 1, 2),
        help="DDP runs with a rank killed (0: skip)",
    )
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument(
        "--budget",
        type=float,
        default=120.0,
        help="seconds at most for the fuzz and the kills each",
    )
    ap.add_argument("--quick", action="store_true", help="skip the trainer configs (torch import)")
    ap.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="fault-campaign-"))
    parts: list[Part] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TimingWarning)
            todo: list[tuple[str, Callable[[], Part]]] = [
                (
                    "reader fuzz",
                    lambda: reader_fuzz(tmp / "fuzz", args.fuzz, args.seed, args.budget),
                ),
                ("tailing faults", lambda: tailing_faults(tmp / "tail")),
                ("writer faults", lambda: writer_faults(tmp / "writer")),
                (
                    "kill -9 and resume",
                    lambda: kill9(tmp / "kill", args.kills, args.seed, args.budget),
                ),
            ]
            if args.configs and not args.quick:
                todo.append(
                    ("trainer bad configs", lambda: trainer_configs(tmp / "cfg", args.configs))
                )
            if args.ddp and not args.quick:
                todo.append(
                    ("DDP rank kill", lambda: ddp_rank_kill(tmp / "ddp", [1, 0][: args.ddp]))
                )
            for name, run_part in todo:
                try:
                    parts.append(run_part())
                except (
                    Exception
                ) as e:  # a bug of the campaign itself: reported, the rest still runs
                    p = Part(name, crashes=1)
                    p.fail(f"campaign error: {type(e).__name__}: {e}")
                    parts.append(p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(table(parts))
    failures = [f"{p.name}: {f}" for p in parts for f in p.failures]
    for f in failures:
        print("FAIL", f)
    lost = sum(p.lost for p in parts)
    crashes = sum(p.crashes for p in parts)
    print(
        f"records lost: {lost}; crashes/raised: {crashes}; failures: {len(failures)}; "
        f"{time.monotonic() - t0:.0f} s"
    )
    if args.json:
        out = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "args": vars(args),
            "parts": [{**asdict(p), "lost": p.lost} for p in parts],
            "records_lost": lost,
            "crashes": crashes,
            "failures": failures,
            "seconds": round(time.monotonic() - t0, 1),
        }
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 1 if failures or lost or crashes else 0


if __name__ == "__main__":
    sys.exit(main())
