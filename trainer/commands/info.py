"""``trainer info --cfg FILE [--json]``: what a config builds, without training.

Parameter counts per top-level module and per stage, input shapes, feature shapes per
stage and the timing-region tree one training step will produce. The model is built on
PyTorch's ``meta`` device: no memory for weights, no forward pass.

``--pretrained FILE`` instead loads an official VRT checkpoint (or a SpyNet file) into the
model and prints the load report (loaded, renamed, missing, unexpected, shape mismatches);
with ``MODEL.PRETRAINED_STRICT`` (the default) any problem then exits 2.
``--export-official OUT`` writes the VRT weights in the official layout (``{"params": ...}``,
loadable by the reference code), from ``--checkpoint CKPT`` (a training checkpoint) or
from ``--pretrained``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from stagewatch.errors import ConfigError

DEFAULT_CLIP_LEN = 5
DEFAULT_CROP = 256
DEFAULT_BATCH = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cfg",
        required=True,
        metavar="FILE",
        help="YAML with a MODEL section (a full training config or model-only)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--pretrained",
        metavar="FILE",
        help="load this official VRT checkpoint and print the load report",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="CKPT",
        help="a training checkpoint whose weights --export-official writes",
    )
    parser.add_argument(
        "--export-official",
        metavar="OUT",
        help="write the VRT weights in the official layout to OUT",
    )


def _data_shape(data: dict[str, Any], file: str) -> tuple[int, int, int, int]:
    """(batch, clip length, crop height, crop width) from DATA/TRAIN, else defaults."""
    dsec = data.get("DATA") or {}
    tsec = data.get("TRAIN") or {}
    if not isinstance(dsec, dict):
        raise ConfigError("DATA", "expected a mapping", file)
    if not isinstance(tsec, dict):
        raise ConfigError("TRAIN", "expected a mapping", file)
    t = dsec.get("CLIP_LEN", DEFAULT_CLIP_LEN)
    if not isinstance(t, int) or isinstance(t, bool) or t < 2:
        raise ConfigError("DATA.CLIP_LEN", f"expected an integer >= 2, got {t!r}", file)
    crop = dsec.get("CROP_SIZE", DEFAULT_CROP)
    if crop == 0:  # whole frames: their size is the data's; show the default crop
        crop = DEFAULT_CROP
    hw = crop if isinstance(crop, list) else [crop, crop]
    if len(hw) != 2 or any(
        not isinstance(x, int) or isinstance(x, bool) or x < 8 or x % 8 for x in hw
    ):
        raise ConfigError(
            "DATA.CROP_SIZE", f"expected a multiple of 8 (or [h, w]), got {crop!r}", file
        )
    b = tsec.get("BATCH_SIZE", DEFAULT_BATCH)
    if not isinstance(b, int) or isinstance(b, bool) or b < 1:
        raise ConfigError("TRAIN.BATCH_SIZE", f"expected an integer >= 1, got {b!r}", file)
    return b, t, hw[0], hw[1]


def describe(path: str) -> dict[str, Any]:
    """Everything ``info`` prints, as a JSON-ready dict."""
    from trainer.models.presets import read_yaml

    data = read_yaml(path)
    if "MODEL" not in data:
        raise ConfigError("MODEL", "section missing", path)
    import torch

    from trainer.models import ModelConfig, build_model, flow_and_deform_parameters
    from trainer.models.config import NUM_ALIGN_STAGES

    cfg = ModelConfig.from_dict(data["MODEL"], path)
    b, t, h, w = _data_shape(data, path)
    with torch.device("meta"):
        model = build_model(cfg)
    counts = model.param_counts()
    total = sum(p.numel() for p in model.parameters())
    fusion = sum(v for k, v in counts.items() if k.startswith("vrt/fusion"))
    v = cfg.VRT
    c, cr = v.EMBED_DIMS[0], v.EMBED_DIMS[NUM_ALIGN_STAGES]
    scale = [1, 2, 4, 8, 4, 2, 1, 1]
    features = {
        f"vrt/stage{i + 1}": [b, t, h // s, w // s, c if i < 7 else cr] for i, s in enumerate(scale)
    }
    if cfg.USE_SPIKE:
        for i in range(4):
            features[f"spike_encoder/scale{i}"] = [b, cfg.SPIKE.WIDTH, t, h >> i, w >> i]
    inputs = {"rgb": [b, t, 3, h, w]}
    if cfg.USE_SPIKE:
        inputs["spikes"] = [b, t, cfg.SPIKE.BINS, h, w]
    return {
        "config": path,
        "use_spike": cfg.USE_SPIKE,
        "flow_weights": cfg.FLOW_WEIGHTS,
        "pretrained": cfg.PRETRAINED,
        "checkpointing": {"attention": v.USE_CHECKPOINT_ATTN, "ffn": v.USE_CHECKPOINT_FFN},
        "inputs": inputs,
        "features": features,
        "params": {
            "total": total,
            # grouped as the table (by module): the VRT module holds the spike fusions
            "vrt": counts["vrt"],
            "spike_fusion": fusion,
            "spike_branch": total - counts["vrt"],  # spike encoder + its self-attention
            "flow_and_deform": sum(p.numel() for p in flow_and_deform_parameters(model)),
            "modules": counts,
        },
        "regions": model.region_tree(),
    }


def _fmt_tree(names: list[str]) -> list[str]:
    lines: list[str] = []
    seen: set[str] = set()
    for name in names:
        parts = name.split("/")
        for depth in range(len(parts)):
            key = "/".join(parts[: depth + 1])
            if key not in seen:
                seen.add(key)
                lines.append("  " * depth + parts[depth])
    return lines


def _groups(p: dict[str, Any]) -> str:
    """The header's split, grouped as the table's rows: the vrt module (its spike fusions
    inside it, as the table shows them) and the spike modules outside it."""
    vrt = f"vrt {p['vrt']:,}"
    if p.get("spike_fusion"):
        plain = p["vrt"] - p["spike_fusion"]
        vrt += f" = plain VRT {plain:,} + spike fusion {p['spike_fusion']:,}"
    if not p["spike_branch"]:
        return vrt
    return f"{vrt}; spike_encoder + spike_tsa {p['spike_branch']:,}"


def format_text(info: dict[str, Any]) -> str:
    p = info["params"]
    ck = info["checkpointing"]
    out = [
        f"config: {info['config']}",
        f"model: {'VRT + spike branch' if info['use_spike'] else 'plain VRT (USE_SPIKE false)'}"
        f", {p['total']:,} parameters ({_groups(p)})",
        f"flow weights: {info['flow_weights'] or 'none (zero-flow initialisation)'}",
        f"pretrained VRT: {info['pretrained'] or 'none'}",
        f"checkpointing: attention {'on' if ck['attention'] else 'off'}, "
        f"feed-forward {'on' if ck['ffn'] else 'off'}",
        "inputs: " + "  ".join(f"{k} {v}" for k, v in info["inputs"].items()),
        "",
        f"{'parameters':<28}{'count':>14}{'share':>8}",
    ]
    for name, n in p["modules"].items():
        depth = name.count("/")
        label = "  " * depth + name.rsplit("/", 1)[-1]
        out.append(f"{label:<28}{n:>14,}{100 * n / p['total']:>7.1f}%")
    out.append(f"{'total':<28}{p['total']:>14,}")
    out.append(f"{'(flow + deformable)':<28}{p['flow_and_deform']:>14,}")
    out += ["", "feature shapes [B, T, H, W, C] (spike encoder: [B, C, T, H, W])"]
    out += [f"  {k:<26}{v}" for k, v in info["features"].items()]
    out += ["", "timing regions of one training step"]
    out += ["  " + line for line in _fmt_tree(info["regions"])]
    return "\n".join(out)


def weights(args: argparse.Namespace) -> int:
    """``--pretrained`` / ``--export-official``: load, report, export (CPU model)."""
    from trainer.checkpoint import load_checkpoint
    from trainer.models import build_model, load_pretrained_vrt, save_official
    from trainer.models.presets import load_model_config

    if args.export_official and not (args.checkpoint or args.pretrained):
        raise ConfigError(
            "--export-official",
            "needs the weights: --checkpoint CKPT (a training checkpoint) or --pretrained FILE",
        )
    cfg = load_model_config(args.cfg)
    model = build_model(cfg, load_pretrained=False)
    result: dict[str, Any] = {"config": args.cfg}
    if args.checkpoint:
        state = {
            k.removeprefix("module.").removeprefix("_orig_mod."): v
            for k, v in load_checkpoint(args.checkpoint)["model"].items()
        }
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
            raise ConfigError(
                "--checkpoint", f"{args.checkpoint} does not fit {args.cfg}: {first}"
            ) from None
        result["checkpoint"] = args.checkpoint
    if args.pretrained:
        report = load_pretrained_vrt(model, args.pretrained, strict=False, key="--pretrained")
        result["pretrained"] = report.to_dict()
        if args.json and not args.export_official:
            print(json.dumps(result, indent=2))
        else:
            print(report.format())
        if cfg.PRETRAINED_STRICT and not report.ok:
            raise ConfigError(
                "--pretrained",
                f"{args.pretrained}: {report.first_problem()} "
                "(MODEL.PRETRAINED_STRICT: false loads the rest)",
            )
    if args.export_official:
        try:
            n = save_official(model, args.export_official)
        except (OSError, ValueError) as e:
            raise ConfigError("--export-official", str(e)) from None
        result["exported"] = {"path": args.export_official, "entries": n}
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(
                f"wrote {args.export_official}: {n} entries in the official VRT layout "
                "(under 'params')"
            )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.pretrained or args.export_official or args.checkpoint:
        return weights(args)
    info = describe(args.cfg)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_text(info))
    return 0
