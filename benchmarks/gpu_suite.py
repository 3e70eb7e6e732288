"""The GPU suite: every figure owed on one H100/H200, in two commands of at most 5 minutes.

    python benchmarks/gpu_suite.py smoke   --out DIR   # ~30-60 s; exit 1 on a critical failure
    python benchmarks/gpu_suite.py figures --out DIR   # <= ~290 s; the owed figures
    python benchmarks/gpu_suite.py smoke|figures --dry-run --out DIR   # CPU, tiny: checks it

``smoke`` checks, on the full model at the user's clip (5x256x256, bf16): CUDA present; the
SDPA kernel chosen for every distinct attention call (``torch._fused_sdp_choice``, and for
padded heads also what the unpadded call would get); the host-sync sites of one forward +
backward (``torch.cuda.set_sync_debug_mode("warn")``); one 8-bit AdamW step; the timing
core's CUDA records of a step with hooks and checkpointing; free memory. Critical (exit 1):
no CUDA, the forward/backward fails or is not finite, the timing records are incomplete.

``figures`` runs the existing scripts with trimmed step counts, each as its own process
under its own timeout, in this order (out-of-memory-prone settings last):

1. ``timing``: ``gpu_timing_check.py``: timing overhead on vs off, regions vs torch.profiler
   (issue 2);
2. ``instrument``: ``gpu_instrument_check.py``: CUDA events from ``stagewatch.instrument``'s
   hooks (complete, sane, no host sync) and its overhead on a GPU step (issue 21);
3. ``model_b1``: ``gpu_model_check.py``: batch 1, checkpointing on/off: per-stage forward /
   backward shares, peak memory, FLOPs, MFU (issues 3, 4);
4. ``trainer``: ``gpu_trainer_check.py``: the user's baseline vs the fast config, 20 steps
   (issue 6);
5. ``whatif_a``: ``gpu_whatif_check.py --rows 1 2 3`` (issue 6);
6. ``model_b3``: batch 3, checkpointing on/off (off: out of memory expected);
7. ``whatif_b``: rows 4 and 5 (5: out of memory expected).

A step that is not started within ``--budget-s`` is recorded as skipped; ``--only`` runs a
subset (e.g. what a first run had to skip). Results go into ONE archive,
``DIR/gpu_suite_<phase>.tar.gz``, rewritten after every step (a killed run still returns
what it measured), plus its summary ``DIR/gpu_suite_<phase>.json``; nothing is written
into ``docs/``. bitsandbytes, absent from the GPU image, is looked for in ``.gpu_deps/``
(``scripts/pack_bnb.sh`` builds it) and put on the path of every step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
DEPS = ROOT / ".gpu_deps"
PY = sys.executable


@dataclass(frozen=True)
class Step:
    """One figure-producing command: ``argv`` with ``{work}`` replaced by its folder."""

    name: str
    argv: tuple[str, ...]
    timeout_s: float
    what: str


def figure_steps(dry: bool) -> list[Step]:
    """The figures phase, OOM-prone settings last; trimmed step counts (tiny on a dry run)."""
    if dry:
        return [
            Step(
                "timing",
                (
                    "gpu_timing_check.py",
                    "--out",
                    "{work}",
                    "--cpu-dry-run",
                    "--size",
                    "32",
                    "--regions",
                    "3",
                    "--steps",
                    "2",
                    "--rounds",
                    "1",
                    "--profile-steps",
                    "1",
                    "--warmup",
                    "0",
                ),
                60,
                "timing overhead and accuracy (dry)",
            ),
            Step(
                "instrument",
                ("gpu_instrument_check.py", "--out", "{work}", "--dry-run"),
                60,
                "instrument: CUDA events from hooks, overhead (dry)",
            ),
            Step(
                "model_b1",
                (
                    "gpu_model_check.py",
                    "{work}",
                    "--dry-run",
                    "--batches",
                    "1",
                    "--ckpt",
                    "on",
                    "--warmup",
                    "0",
                ),
                120,
                "model check b1 (dry)",
            ),
            Step(
                "trainer",
                ("gpu_trainer_check.py", "{work}", "--dry-run", "--steps", "2", "--warmup", "1"),
                240,
                "baseline vs fast (dry)",
            ),
            Step(
                "whatif_a",
                (
                    "gpu_whatif_check.py",
                    "--dry-run",
                    "--rows",
                    "1",
                    "--out",
                    "{work}",
                    "--log-dir",
                    "{work}/logs",
                    "--no-write",
                ),
                240,
                "what-if row 1 (dry)",
            ),
            Step(
                "model_b3",
                (
                    "gpu_model_check.py",
                    "{work}",
                    "--dry-run",
                    "--batches",
                    "2",
                    "--ckpt",
                    "off",
                    "--warmup",
                    "0",
                ),
                120,
                "model check b2 (dry)",
            ),
        ]
    return [
        Step(
            "timing",
            (
                "gpu_timing_check.py",
                "--out",
                "{work}",
                "--steps",
                "10",
                "--rounds",
                "3",
                "--profile-steps",
                "5",
                "--warmup",
                "3",
            ),
            50,
            "issue 2: timing overhead on vs off (<= 0.5 %), regions vs torch.profiler (5 %)",
        ),
        Step(
            "instrument",
            ("gpu_instrument_check.py", "--out", "{work}", "--rounds", "6", "--block", "10"),
            60,
            "issue 21: CUDA events from instrument's hooks, its overhead on a GPU step",
        ),
        Step(
            "model_b1",
            (
                "gpu_model_check.py",
                "{work}",
                "--batches",
                "1",
                "--ckpt",
                "both",
                "--steps",
                "3",
                "--warmup",
                "1",
                "--budget-s",
                "80",
            ),
            110,
            "issues 3/4: b1 ckpt on/off: stage shares, peak memory, FLOPs, MFU",
        ),
        Step(
            "trainer",
            ("gpu_trainer_check.py", "{work}", "--steps", "20", "--warmup", "5"),
            130,
            "issue 6: the user's baseline vs the fast config, 20 steps",
        ),
        Step(
            "whatif_a",
            (
                "gpu_whatif_check.py",
                "--rows",
                "1",
                "2",
                "3",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--timeout",
                "45",
                "--out",
                "{work}",
                "--log-dir",
                "{work}/logs",
                "--no-write",
            ),
            150,
            "issue 6: what-if rows 1-3",
        ),
        Step(
            "model_b3",
            (
                "gpu_model_check.py",
                "{work}",
                "--batches",
                "3",
                "--ckpt",
                "both",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--budget-s",
                "60",
                "--flops-from",
                "{results}/model_b1/gpu_model_check.json",
            ),
            90,
            "issues 3/4: b3 ckpt on/off (off: out of memory expected)",
        ),
        Step(
            "whatif_b",
            (
                "gpu_whatif_check.py",
                "--rows",
                "4",
                "5",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--timeout",
                "45",
                "--out",
                "{work}",
                "--log-dir",
                "{work}/logs",
                "--no-write",
            ),
            100,
            "issue 6: what-if rows 4-5 (5: out of memory expected)",
        ),
    ]


# --------------------------------------------------------------------------- archive


class Archive:
    """One tar.gz holding the work folder, rewritten (atomically) after every step."""

    def __init__(self, out: Path, phase: str, work: Path) -> None:
        self.path = out / f"gpu_suite_{phase}.tar.gz"
        self.summary_path = out / f"gpu_suite_{phase}.json"
        self.work = work
        self.summary: dict[str, Any] = {"phase": phase, "started": _now(), "steps": []}

    def write(self) -> None:
        self.summary["updated"] = _now()
        text = json.dumps(self.summary, indent=1, default=str)
        (self.work / "summary.json").write_text(text)
        (self.work / "report.md").write_text(report_md(self.work, self.summary))
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.work, arcname=f"gpu_suite_{self.summary['phase']}")
        os.replace(tmp, self.path)
        self.summary_path.write_text(text)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def _use_deps() -> bool:
    """Put .gpu_deps on the path only if one of its packages is missing here: its builds
    are for the GPU host's Python and would shadow working local installs."""
    import importlib.util

    if not DEPS.is_dir():
        return False
    names = [p.name for p in DEPS.iterdir() if p.is_dir() and not p.name.endswith(".dist-info")]
    return any(importlib.util.find_spec(n) is None for n in names)


USE_DEPS = _use_deps()


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    paths = [str(ROOT)] + ([str(DEPS)] if USE_DEPS else [])
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_step(step: Step, results: Path, timeout_s: float) -> dict[str, Any]:
    """Run one step in its own process group under ``timeout_s``; its output goes to
    ``results/<name>/output.log``."""
    work = results / step.name
    work.mkdir(parents=True, exist_ok=True)
    script, *rest = step.argv
    argv = [PY, str(BENCH / script)] + [a.format(work=work, results=results) for a in rest]
    res: dict[str, Any] = {
        "name": step.name,
        "what": step.what,
        "argv": argv[1:],
        "timeout_s": round(timeout_s, 1),
        "started": _now(),
    }
    t0 = time.perf_counter()
    with open(work / "output.log", "wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=_env(), start_new_session=True
        )
        try:
            rc = proc.wait(timeout_s)
            res["status"] = "ok" if rc == 0 else f"exit {rc}"
            res["rc"] = rc
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            res["status"], res["rc"] = "timeout", None
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["output_tail"] = _tail(work / "output.log")
    return res


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, n: int = 2000) -> str:
    try:
        data = path.read_bytes()[-n:]
    except OSError:
        return ""
    return data.decode("utf-8", "replace")


def run_figures(
    steps: Sequence[Step],
    out: Path,
    budget_s: float,
    only: Sequence[str] | None,
    phase: str = "figures",
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"gpu_suite_{phase}_"))
    arch = Archive(out, phase, work)
    arch.summary["env"] = _env_info()
    arch.write()
    t0 = time.perf_counter()
    for step in steps:
        if only and step.name not in only:
            arch.summary["steps"].append({"name": step.name, "status": "not selected"})
            continue
        left = budget_s - (time.perf_counter() - t0)
        if left < min(20.0, step.timeout_s):
            arch.summary["steps"].append(
                {"name": step.name, "what": step.what, "status": "skipped (budget)"}
            )
            print(f"[gpu_suite] {step.name}: skipped (budget)", flush=True)
            arch.write()
            continue
        print(
            f"[gpu_suite] {step.name}: {step.what} (<= {min(step.timeout_s, left):.0f} s)",
            flush=True,
        )
        res = run_step(step, work, min(step.timeout_s, left))
        arch.summary["steps"].append(res)
        print(f"[gpu_suite] {step.name}: {res['status']} in {res['seconds']} s", flush=True)
        arch.write()
    arch.summary["elapsed_s"] = round(time.perf_counter() - t0, 1)
    arch.summary["finished"] = True
    arch.write()
    shutil.rmtree(work, ignore_errors=True)
    return arch.summary


def report_md(work: Path, summary: dict[str, Any]) -> str:
    """One markdown of everything measured so far: each step's status and its own tables."""
    env = summary.get("env", {})
    lines = [
        f"# GPU suite, {summary['phase']}: {env.get('gpu', 'no GPU')} ({summary.get('updated')})",
        "",
        f"torch {env.get('torch')}, CUDA {env.get('cuda')}, Python {env.get('python')}",
        "",
        "| step | status | seconds | what |",
        "|---|---|---:|---|",
    ]
    for st in summary["steps"]:
        lines.append(
            f"| {st['name']} | {st['status']} | {st.get('seconds', '')} | {st.get('what', '')} |"
        )
    for st in summary["steps"]:
        folder = work / st["name"]
        for md in sorted(folder.glob("*.md")):
            lines += ["", f"## {st['name']}: {md.name}", "", md.read_text().strip()]
        for js in sorted(folder.glob("gpu_timing_check.json")):
            try:
                r = json.loads(js.read_text())
                errs = [abs(x["rel_error"]) for x in r["regions"] if x["rel_error"] is not None]
                lines += [
                    "",
                    f"## {st['name']}",
                    "",
                    f"overhead {100 * r['step']['overhead']:+.3f}% "
                    f"(off {r['step']['off_ms']:.3f} ms, "
                    f"on {r['step']['on_ms']:.3f} ms); regions vs profiler: max |error| "
                    f"{100 * max(errs) if errs else float('nan'):.2f}%; verdict {r['verdict']}",
                ]
            except (OSError, ValueError, KeyError):
                pass
    return "\n".join(lines) + "\n"


def _env_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "host": platform.node(),
        "deps_folder": str(DEPS) if USE_DEPS else None,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["capability"] = list(torch.cuda.get_device_capability(0))
    except Exception as e:  # the summary must still be written
        info["error"] = repr(e)
    return info


# --------------------------------------------------------------------------- smoke


_BACKENDS = {
    -1: "none (error)",
    0: "math",
    1: "flash",
    2: "memory-efficient",
    3: "cuDNN",
    4: "overrideable",
}


def _backend(q: Any, k: Any, v: Any, mask: Any, scale: float | None) -> str:
    import torch

    try:
        kw = {} if scale is None else {"scale": scale}
        return _BACKENDS.get(int(torch._fused_sdp_choice(q, k, v, mask, 0.0, False, **kw)), "?")
    except Exception as e:
        return f"unknown ({type(e).__name__}: {str(e)[:80]})"


class KernelSpy:
    """Wraps F.scaled_dot_product_attention: one row per distinct call signature."""

    def __init__(self) -> None:
        self.rows: dict[tuple[Any, ...], dict[str, Any]] = {}

    def __enter__(self) -> KernelSpy:
        import torch.nn.functional as F

        self._real = F.scaled_dot_product_attention
        real = self._real

        def spy(
            q: Any,
            k: Any,
            v: Any,
            attn_mask: Any = None,
            dropout_p: float = 0.0,
            is_causal: bool = False,
            scale: float | None = None,
            **kw: Any,
        ) -> Any:
            m = attn_mask
            key = (
                tuple(q.shape[-3:]),
                tuple(k.shape[-2:]),
                str(q.dtype),
                None if m is None else tuple(m.shape),
                bool(m is not None and m.requires_grad),
                scale is not None,
            )
            if key not in self.rows:
                row = {
                    "q": list(q.shape),
                    "k": list(k.shape),
                    "dtype": str(q.dtype),
                    "mask": None if m is None else list(m.shape),
                    "mask_needs_grad": key[4],
                    "kernel": _backend(q, k, v, m, scale),
                    "calls": 0,
                }
                d = q.shape[-1]
                if scale is not None and abs(scale - d**-0.5) > 1e-9:  # padded heads
                    true_d = round(scale**-2)
                    row["padded_from"] = true_d
                    row["kernel_unpadded"] = _backend(
                        q[..., :true_d], k[..., :true_d], v[..., :true_d], m, None
                    )
                self.rows[key] = row
            self.rows[key]["calls"] += 1
            return real(
                q,
                k,
                v,
                attn_mask=attn_mask,
                dropout_p=dropout_p,
                is_causal=is_causal,
                scale=scale,
                **kw,
            )

        F.scaled_dot_product_attention = spy
        return self

    def __exit__(self, *exc: object) -> None:
        import torch.nn.functional as F

        F.scaled_dot_product_attention = self._real


def _sync_sites(caught: list[warnings.WarningMessage]) -> dict[str, int]:
    """``file:line`` -> count of the host synchronizations CUDA's sync debug mode warned of."""
    syncs: dict[str, int] = {}
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            site = f"{os.path.relpath(w.filename, ROOT)}:{w.lineno}"
            syncs[site] = syncs.get(site, 0) + 1
    return syncs


def smoke_checks(work: Path, dry: bool) -> dict[str, Any]:
    """Every smoke check; each one's failure is a result. ``critical`` lists the fatal."""
    import torch

    from stagewatch.timing import TimingLogger, set_global_timing_logger, timed
    from trainer.models import build_model
    from trainer.models.presets import FULL, TINY, example_inputs, load_model_config
    from trainer.optim import adamw8bit_or_none
    from trainer.train_setup import apply_tf32

    res: dict[str, Any] = {"dry_run": dry, "critical": [], "warnings": [], "env": _env_info()}
    cuda = torch.cuda.is_available() and not dry
    res["cuda"] = cuda
    if not cuda and not dry:
        res["critical"].append("no CUDA device")
        return res
    dev = torch.device("cuda" if cuda else "cpu")
    apply_tf32(True, dev)
    if cuda:
        free, total = torch.cuda.mem_get_info()
        res["memory_start"] = {"free": free, "total": total}
    cfg = load_model_config(TINY if dry else FULL)
    cfg.VRT.USE_CHECKPOINT_ATTN = cfg.VRT.USE_CHECKPOINT_FFN = True
    cfg.VRT.USE_CHECKPOINT_ALIGN = True
    clip = (2, 16, 16) if dry else (5, 256, 256)
    res["clip"] = list(clip)
    amp = torch.bfloat16

    def step(model: Any, rgb: Any, spikes: Any) -> float:
        with timed("forward"), torch.autocast(dev.type, dtype=amp):
            out = model(rgb, spikes)
            loss = torch.sqrt((out.float() - rgb) ** 2 + 1e-6).mean()
        with timed("backward"):
            loss.backward()
        return float(loss.detach())

    try:
        torch.manual_seed(0)
        model = build_model(cfg).to(dev)
        rgb, spikes = example_inputs(cfg, 1, *clip, device=dev)
        # 1. kernels + host syncs over one forward and backward
        with KernelSpy() as spy, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("warn")
            try:
                loss = step(model, rgb, spikes)
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode("default")
        res["kernels"] = sorted(spy.rows.values(), key=lambda r: (r["q"][-1], r["q"][-2]))
        res["sync_sites"] = _sync_sites(caught)
        res["loss"] = loss
        if not math.isfinite(loss):
            res["critical"].append(f"non-finite loss {loss}")
        maths = [r for r in res["kernels"] if r["kernel"] == "math"]
        if cuda and maths:
            res["warnings"].append(f"{len(maths)} attention call signature(s) on the math path")
        model.zero_grad(set_to_none=True)
        # 2. the timing core's CUDA records with hooks and checkpointing
        log = TimingLogger(
            log_dir=str(work / "logs"),
            enable_console=False,
            enable_file=False,
            device=dev.type,
            run_name="smoke",
            samples_per_step=1,
            total_steps=2,
        )
        set_global_timing_logger(log)
        try:
            log.mark_step_start()
            for _ in range(2):
                step(model, rgb, spikes)
                model.zero_grad(set_to_none=True)
                log.step(samples=1)
            log.close()
        finally:
            set_global_timing_logger(None)
        summary = log.get_summary()
        want = {f"backward/vrt/stage{i}/recompute" for i in range(1, 9)}
        want |= {f"forward/vrt/stage{i}" for i in range(1, 9)} | {"forward", "backward"}
        missing = sorted(want - set(summary))
        res["timing"] = {
            "regions": len(summary),
            "missing": missing,
            "step_ms": log.get_step_summary()["wall"]["avg"],
            "recompute_ms": {k: v["avg"] for k, v in summary.items() if k.endswith("/recompute")},
            "peak_memory": dict(log.peak_memory),
            "run_dir": log.run_dir,
        }
        bad = [k for k, v in summary.items() if not (v["avg"] >= 0 and math.isfinite(v["avg"]))]
        if missing or bad:
            res["critical"].append(
                f"timing records incomplete: missing {missing[:4]}, bad {bad[:4]}"
            )
        del model
    except Exception as e:
        res["critical"].append(f"forward/backward failed: {type(e).__name__}: {str(e)[:300]}")
        res["traceback"] = traceback.format_exc()[-3000:]
    # 3. one 8-bit AdamW step (not critical: the trainer falls back to AdamW)
    p = torch.zeros(1 << 16, device=dev, requires_grad=True)
    opt, why = adamw8bit_or_none([{"params": [p]}], dev, lr=1e-3)
    if opt is not None:
        try:
            p.grad = torch.ones_like(p)
            opt.step()
            res["adamw8bit"] = {
                "ok": bool(torch.isfinite(p).all()),
                "state_bytes": sum(
                    t.numel() * t.element_size()
                    for st in opt.state.values()
                    for t in st.values()
                    if torch.is_tensor(t)
                ),
            }
        except Exception as e:
            opt, why = None, f"{type(e).__name__}: {e}"
    if opt is None:
        res["adamw8bit"] = {"ok": False, "why": why}
        res["warnings"].append("8-bit AdamW cannot run: its rows fall back to AdamW")
    if cuda:
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        res["memory_end"] = {
            "free": free,
            "total": total,
            "max_allocated": torch.cuda.max_memory_allocated(),
        }
    return res


def format_smoke(res: dict[str, Any]) -> str:
    lines = [
        f"smoke: {'DRY RUN (CPU)' if res['dry_run'] else res['env'].get('gpu', '?')}, "
        f"torch {res['env'].get('torch')}, clip {res.get('clip')}"
    ]
    if res.get("kernels"):
        lines += [
            "",
            "| q [.., heads, N, d] | k N | dtype | mask | mask grad | kernel | calls |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in res["kernels"]:
            kern = r["kernel"]
            if "padded_from" in r:
                kern += f" (padded from d={r['padded_from']}; unpadded: {r['kernel_unpadded']})"
            lines.append(
                f"| {r['q'][-3:]} | {r['k'][-2]} | {r['dtype']} | {r['mask']} | "
                f"{r['mask_needs_grad']} | {kern} | {r['calls']} |"
            )
    if "sync_sites" in res:
        lines += [
            "",
            "host-sync sites over one forward + backward: "
            + (", ".join(f"{k} ×{v}" for k, v in res["sync_sites"].items()) or "none"),
        ]
    if "timing" in res:
        t = res["timing"]
        lines.append(
            f"timing core: {t['regions']} regions, step {t['step_ms']:.1f} ms, "
            f"peak {t['peak_memory'].get('peak', 0) / 2**30:.2f} GiB, missing {t['missing']}"
        )
    if "adamw8bit" in res:
        lines.append(f"8-bit AdamW: {res['adamw8bit']}")
    for key in ("memory_start", "memory_end"):
        if key in res:
            lines.append(
                f"{key}: free {res[key]['free'] / 2**30:.1f} of {res[key]['total'] / 2**30:.1f} GiB"
            )
    lines += [f"WARNING: {w}" for w in res["warnings"]]
    lines += [f"CRITICAL: {c}" for c in res["critical"]]
    return "\n".join(lines)


def run_smoke(out: Path, dry: bool, timeout_s: float) -> int:
    """The smoke checks in a child process (bounded by ``timeout_s``), then the archive."""
    work = Path(tempfile.mkdtemp(prefix="gpu_suite_smoke_"))
    arch = Archive(out, "smoke", work)
    arch.summary["env"] = _env_info()
    step = Step(
        "smoke",
        ("gpu_suite.py", "_smoke", "--work", "{work}") + (("--dry-run",) if dry else ()),
        timeout_s,
        "smoke checks",
    )
    res = run_step(step, work, timeout_s)
    arch.summary["steps"].append(res)
    try:
        checks = json.loads((work / "smoke" / "smoke.json").read_text())
    except (OSError, ValueError):
        checks = {"critical": [f"smoke checks did not finish ({res['status']})"], "warnings": []}
    arch.summary["smoke"] = checks
    arch.summary["finished"] = True
    text = format_smoke({"dry_run": dry, "env": {}, **checks})
    (work / "smoke.md").write_text(text + "\n")
    arch.write()
    shutil.rmtree(work, ignore_errors=True)
    print(text)
    return 1 if checks.get("critical") else 0


# --------------------------------------------------------------------------- CLI


def main(
    argv: Sequence[str] | None = None, steps: Callable[[bool], list[Step]] = figure_steps
) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("phase", choices=["smoke", "figures", "_smoke"])
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the archive and its summary (default $OUT, else runs/gpu_suite)",
    )
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model: checks the suite")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=290.0,
        help="figures: start no step after this many seconds (default 290)",
    )
    ap.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="STEP",
        help="figures: run only these steps ("
        + ", ".join(s.name for s in figure_steps(False))
        + ")",
    )
    ap.add_argument("--timeout", type=float, default=150.0, help="smoke: its time limit in s")
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if USE_DEPS:
        sys.path.insert(0, str(DEPS))
    if args.phase == "_smoke":  # the child of `smoke`
        args.work.mkdir(parents=True, exist_ok=True)
        res = smoke_checks(args.work, args.dry_run)
        (args.work / "smoke.json").write_text(json.dumps(res, indent=1, default=str))
        print(format_smoke(res))
        return 0
    out = args.out or Path(os.environ.get("OUT") or ROOT / "runs" / "gpu_suite")
    out.mkdir(parents=True, exist_ok=True)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu_suite: no CUDA device (use --dry-run on a CPU machine)", file=sys.stderr)
            return 2
    if args.phase == "smoke":
        return run_smoke(out, args.dry_run, args.timeout)
    known = {s.name for s in steps(args.dry_run)}
    if args.only and not set(args.only) <= known:
        print(
            f"gpu_suite: --only: unknown step {sorted(set(args.only) - known)[0]!r} "
            f"(known: {', '.join(sorted(known))})",
            file=sys.stderr,
        )
        return 2
    summary = run_figures(steps(args.dry_run), out, args.budget_s, args.only)
    for s in summary["steps"]:
        print(f"{s['name']}: {s['status']}" + (f" ({s['seconds']} s)" if "seconds" in s else ""))
    print(f"archive: {out / 'gpu_suite_figures.tar.gz'}")
    return 0 if any(s.get("status") == "ok" for s in summary["steps"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
