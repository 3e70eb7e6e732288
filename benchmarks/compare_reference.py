"""Side-by-side check of our VRT against the public reference implementation (issue 14).

Needs a copy of the reference code (JingyunLiang/VRT; the directory holding
``models/network_vrt.py``) and ``einops`` (``.venv/bin/pip install einops``; not a project
dependency). The reference's ``torchvision.ops.deform_conv2d`` is served by our pure-PyTorch
op through a stand-in ``torchvision`` module, so no torchvision build is needed. The
reference model is built with our config's sizes, its random weights (plus small noise, so
that zero-initialised layers such as the offset convs' last layer take part) are mapped
into ours with :func:`trainer.models.load_pretrained_vrt` (strict), and both run on the same
fixed input in fp32 on the CPU::

    .venv/bin/python benchmarks/compare_reference.py --ref /tmp/vrt_ref \\
        --config configs/model/vrt_spike_tiny.yaml --shape 1 6 64 64 --shape 1 5 72 88

Prints max |diff| and relative L2 of the output and of the flows. No reference code is in
this repository.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.models import build_model, export_official, load_pretrained_vrt  # noqa: E402
from trainer.models.config import NUM_ALIGN_STAGES, ModelConfig  # noqa: E402
from trainer.models.ops import deform_conv2d  # noqa: E402
from trainer.models.presets import load_model_config  # noqa: E402


def _tv_deform_conv2d(
    x, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None
):
    """torchvision.ops.deform_conv2d's signature, served by our op (3×3, stride 1, pad 1)."""
    kh, kw = weight.shape[-2:]
    assert (kh, kw) == (3, 3) and tuple(torch.nn.modules.utils._pair(stride)) == (1, 1)
    assert tuple(torch.nn.modules.utils._pair(padding)) == (1, 1)
    assert tuple(torch.nn.modules.utils._pair(dilation)) == (1, 1) and mask is not None
    groups = offset.shape[1] // (2 * kh * kw)
    return deform_conv2d(x, offset, mask, weight, bias, groups)


def load_reference(ref_dir: Path) -> types.ModuleType:
    """Import ``models/network_vrt.py`` from ``ref_dir`` with the stand-in torchvision."""
    tv = types.ModuleType("torchvision")
    tv.ops = types.ModuleType("torchvision.ops")  # type: ignore[attr-defined]
    tv.ops.deform_conv2d = _tv_deform_conv2d  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, tv.ops  # type: ignore[attr-defined]
    if "distutils" not in sys.modules:  # the reference imports LooseVersion (gone in 3.12)
        try:
            import distutils.version  # noqa: F401
        except ImportError:
            du = types.ModuleType("distutils")
            du.version = types.ModuleType("distutils.version")  # type: ignore[attr-defined]
            du.version.LooseVersion = str  # type: ignore[attr-defined]
            sys.modules["distutils"], sys.modules["distutils.version"] = du, du.version  # type: ignore[attr-defined]
    path = ref_dir / "models" / "network_vrt.py"
    if not path.is_file():
        raise SystemExit(f"--ref: no models/network_vrt.py under {ref_dir}")
    spec = importlib.util.spec_from_file_location("network_vrt_reference", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # inference only: the reference's forced checkpointing of group 2 is a no-op here
    mod.checkpoint = types.SimpleNamespace(checkpoint=lambda f, *a, **k: f(*a))
    return mod


def reference_model(mod: types.ModuleType, cfg: ModelConfig, t: int) -> torch.nn.Module:
    v = cfg.VRT
    return mod.VRT(
        upscale=1,
        img_size=[t, 64, 64],
        window_size=list(v.WINDOW_SIZE),
        depths=list(v.DEPTHS),
        indep_reconsts=list(v.INDEP_RECONSTS),
        embed_dims=list(v.EMBED_DIMS),
        num_heads=list(v.NUM_HEADS),
        mul_attn_ratio=v.MUTUAL_RATIO,
        mlp_ratio=v.MLP_RATIO,
        qkv_bias=v.QKV_BIAS,
        drop_path_rate=v.DROP_PATH_RATE,
        pa_frames=v.PA_FRAMES,
        deformable_groups=v.DEFORMABLE_GROUPS,
    )


def _diff(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    d = a.double() - b.double()
    return {
        "max_abs": float(d.abs().max()),
        "rel_l2": float(d.norm() / b.double().norm().clamp_min(1e-30)),
    }


def compare(
    mod: types.ModuleType,
    cfg: ModelConfig,
    shape: tuple[int, int, int, int],
    seed: int,
    noise: float,
) -> dict[str, object]:
    b, t, h, w = shape
    torch.manual_seed(seed)
    ref = reference_model(mod, cfg, t).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * noise)
    ours = build_model(cfg).eval()
    report = load_pretrained_vrt(ours, ref.state_dict(), strict=True)
    x = torch.rand(b, t, 3, h, w, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        t0 = time.perf_counter()
        out_ref = ref(x)
        t1 = time.perf_counter()
        out = ours(x)
        t2 = time.perf_counter()
        fb_ref, ff_ref = ref.get_flows(x)
        flows = ours.vrt.flow(x)
    # and back: our weights exported to the official layout load strictly into a fresh
    # reference model and reproduce its parameters exactly
    back = reference_model(mod, cfg, t)
    back.load_state_dict(export_official(ours), strict=True)
    sb, sr = back.state_dict(), ref.state_dict()
    exact = sb.keys() == sr.keys() and all(torch.equal(sb[k], sr[k]) for k in sr)
    return {
        "shape": list(shape),
        "loaded": len(report.loaded),
        "export_exact": exact,
        "recomputed_buffers": len(report.recomputed),
        "params": sum(p.numel() for p in ours.vrt.parameters()),
        "output": _diff(out, out_ref),
        "flow_scale1": _diff(torch.cat((flows[0], flows[4])), torch.cat((fb_ref[0], ff_ref[0]))),
        "seconds": {"reference": round(t1 - t0, 2), "ours": round(t2 - t1, 2)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", required=True, type=Path, help="reference checkout directory")
    ap.add_argument(
        "--config",
        action="append",
        default=None,
        help="model YAML (repeatable; default: the tiny and the full config)",
    )
    ap.add_argument(
        "--shape",
        action="append",
        nargs=4,
        type=int,
        metavar=("B", "T", "H", "W"),
        help="input shape (repeatable; default 1 6 64 64 and 1 5 72 88)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--noise",
        type=float,
        default=0.02,
        help="std of the noise added to every reference parameter",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    mod = load_reference(args.ref)
    configs = args.config or [
        str(ROOT / "configs/model/vrt_spike_tiny.yaml"),
        str(ROOT / "configs/model/vrt_spike_full.yaml"),
    ]
    shapes = [tuple(s) for s in (args.shape or [[1, 6, 64, 64], [1, 5, 72, 88]])]
    rows = []
    for c in configs:
        cfg = load_model_config(c)
        cfg.USE_SPIKE = False  # the reference has no spike branch
        assert len(cfg.VRT.DEPTHS) > NUM_ALIGN_STAGES
        for s in shapes:
            row = {"config": Path(c).name, **compare(mod, cfg, s, args.seed, args.noise)}
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                o, f = row["output"], row["flow_scale1"]
                print(
                    f"{row['config']:<24} {'x'.join(map(str, s)):<12} "
                    f"params {row['params']:>11,}  output max|diff| {o['max_abs']:.2e} "
                    f"rel L2 {o['rel_l2']:.2e}  flow max|diff| {f['max_abs']:.2e} "
                    f"rel L2 {f['rel_l2']:.2e}  export exact {row['export_exact']}  "
                    f"({row['seconds']})",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
