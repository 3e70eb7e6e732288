"""Official VRT checkpoints (JingyunLiang/VRT, ``models/network_vrt.py``) in and out.

Our parameter names differ from the reference's; :data:`KEY_MAP` is the whole difference,
one row per module family, tested in both directions. Values need no permutation: the
model follows the reference's layouts (2×2 neighbourhood channel order, nearest-4 block
order). The reference also stores buffers we recompute (:data:`RECOMPUTED`): they are
skipped on load and written on export, so the reference loads exported files strictly.

>>> report = load_pretrained_vrt(model, "006_VRT_videodeblurring_GoPro.pth")
>>> print(report.format())
>>> save_official(model, "mine_official.pth")   # {"params": ...}, loadable by the reference
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from stagewatch.errors import ConfigError
from trainer.models.config import NUM_ALIGN_STAGES
from trainer.models.ops import sine_position_encoding
from trainer.models.spynet import _MEAN, _STD

__all__ = [
    "KEY_MAP",
    "PretrainedReport",
    "export_official",
    "from_official",
    "load_pretrained_vrt",
    "save_official",
    "to_official",
]

#: (our name, official name). ``{s}``: alignment stage, 0-6 here, 1-7 there; ``{g}``:
#: reconstruction group, 0.. here (``stages.7.groups.{g}``), 1.. there (``stage8.0`` is the
#: reshape); ``{rest}``: the rest of the name, identical on both sides (inside a block the
#: names agree: ``norm1``, ``attn.qkv_self``, ``attn.qkv_mut``, ``mlp.fc11``...).
KEY_MAP: tuple[tuple[str, str], ...] = (
    ("vrt.flow.spynet.{rest}", "spynet.{rest}"),
    ("vrt.prealign.conv_first.{rest}", "conv_first.{rest}"),
    ("vrt.stages.{s}.reshape_norm.{rest}", "stage{s}.reshape.1.{rest}"),
    ("vrt.stages.{s}.reshape_proj.{rest}", "stage{s}.reshape.2.{rest}"),
    ("vrt.stages.{s}.groups.0.blocks.{rest}", "stage{s}.residual_group1.blocks.{rest}"),
    ("vrt.stages.{s}.groups.0.linear.{rest}", "stage{s}.linear1.{rest}"),
    ("vrt.stages.{s}.groups.1.blocks.{rest}", "stage{s}.residual_group2.blocks.{rest}"),
    ("vrt.stages.{s}.groups.1.linear.{rest}", "stage{s}.linear2.{rest}"),
    ("vrt.stages.{s}.pa_deform.{rest}", "stage{s}.pa_deform.{rest}"),
    ("vrt.stages.{s}.pa_fuse.{rest}", "stage{s}.pa_fuse.{rest}"),
    ("vrt.stages.7.reshape_norm.{rest}", "stage8.0.1.{rest}"),
    ("vrt.stages.7.reshape_proj.{rest}", "stage8.0.2.{rest}"),
    ("vrt.stages.7.groups.{g}.blocks.{rest}", "stage8.{g}.residual_group.blocks.{rest}"),
    ("vrt.stages.7.groups.{g}.linear.{rest}", "stage8.{g}.linear.{rest}"),
    ("vrt.head.norm.{rest}", "norm.{rest}"),
    ("vrt.head.conv_after_body.{rest}", "conv_after_body.{rest}"),
    ("vrt.head.conv_last.{rest}", "conv_last.{rest}"),
)

#: load-only: the standalone SpyNet file (``spynet_sintel_final-3d2a1287.pth``) names its
#: levels without the ``spynet.`` prefix
_IMPORT_ALIASES: tuple[tuple[str, str], ...] = (
    ("vrt.flow.spynet.basic_module.{rest}", "basic_module.{rest}"),
)

#: buffers the reference saves and we recompute (ImageNet statistics, bias-table indices,
#: the mutual attention's sine encoding)
RECOMPUTED = re.compile(
    r"(^|\.)(spynet\.(mean|std)|attn\.relative_position_index|"
    r"attn\.position_bias)$|^(mean|std)$"
)

_FIELDS = {"s": ("[0-6]", "[1-7]"), "g": (r"\d+", r"[1-9]\d*"), "rest": (".+", ".+")}


def _compile(template: str, side: int) -> re.Pattern[str]:
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out += re.escape(template[pos : m.start()])
        out += f"(?P<{m.group(1)}>{_FIELDS[m.group(1)][side]})"
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]) + "$")


def _rules(
    pairs: tuple[tuple[str, str], ...],
) -> list[tuple[re.Pattern[str], str, re.Pattern[str], str]]:
    return [(_compile(a, 0), a, _compile(b, 1), b) for a, b in pairs]


_RULES = _rules(KEY_MAP)
_ALIASES = _rules(_IMPORT_ALIASES)


def _fill(template: str, fields: dict[str, str], step: int) -> str:
    vals = {k: (str(int(v) + step) if k in ("s", "g") else v) for k, v in fields.items()}
    return template.format(**vals)


def to_official(key: str) -> str | None:
    """The official name of one of our VRT state-dict keys (None: not part of VRT)."""
    for ours, _ours_t, _off, off_t in _RULES:
        m = ours.match(key)
        if m:
            return _fill(off_t, m.groupdict(), +1)
    return None


def from_official(key: str) -> str | None:
    """Our name for an official key (also a standalone SpyNet file's); None if unknown."""
    for _ours, ours_t, off, _off_t in (*_RULES, *_ALIASES):
        m = off.match(key)
        if m:
            return _fill(ours_t, m.groupdict(), -1)
    return None


# ------------------------------------------------------------------ loading


@dataclass
class PretrainedReport:
    """What :func:`load_pretrained_vrt` did. Names are ours unless said otherwise."""

    source: str
    loaded: list[str] = field(default_factory=list)
    #: how many of ``loaded`` came under an official (different) name
    renamed: int = 0
    #: VRT entries of the model that the source did not provide (they keep their init)
    missing: list[str] = field(default_factory=list)
    #: source entries (source names) that are no part of the model
    unexpected: list[str] = field(default_factory=list)
    #: (source name, our name, source shape, our shape)
    mismatched: list[tuple[str, str, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )
    #: source buffers that the model recomputes (skipped)
    recomputed: list[str] = field(default_factory=list)
    #: model entries outside VRT (the spike branch), left as initialised
    kept: int = 0
    #: source entries of the model's spike branch (our own layout): not loaded, no problem
    outside_vrt: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def first_problem(self) -> str | None:
        if self.mismatched:
            src, ours, a, b = self.mismatched[0]
            return f"{src} has shape {list(a)}, the model's {ours} has {list(b)}"
        if self.missing:
            off = to_official(self.missing[0])
            return f"no entry {off or self.missing[0]} (our {self.missing[0]})"
        if self.unexpected:
            return f"entry {self.unexpected[0]} is no part of the model"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "loaded": len(self.loaded),
            "renamed": self.renamed,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "shape_mismatches": [
                {"source": s, "model": o, "source_shape": list(a), "model_shape": list(b)}
                for s, o, a, b in self.mismatched
            ],
            "recomputed_buffers": len(self.recomputed),
            "kept_outside_vrt": self.kept,
            "skipped_outside_vrt": len(self.outside_vrt),
        }

    def format(self, limit: int = 5) -> str:
        """A few lines for a terminal or a log."""
        lines = [
            f"pretrained: {self.source}",
            f"  loaded {len(self.loaded)} tensors "
            f"({self.renamed} renamed from the official layout); "
            f"{len(self.recomputed)} buffers skipped (recomputed); "
            f"{self.kept} spike-branch tensors keep their initialisation"
            + (f" ({len(self.outside_vrt)} in the source skipped)" if self.outside_vrt else ""),
        ]

        def some(title: str, items: list[str]) -> None:
            lines.append(f"  {title}: {len(items)}")
            lines.extend(f"    {x}" for x in items[:limit])
            if len(items) > limit:
                lines.append(f"    ... {len(items) - limit} more")

        some("missing", self.missing)
        some("unexpected", self.unexpected)
        some(
            "shape mismatches",
            [f"{s} {list(a)} -> {o} {list(b)}" for s, o, a, b in self.mismatched],
        )
        return "\n".join(lines)


def _unwrap_model(model: nn.Module) -> nn.Module:
    m = getattr(model, "module", model)  # DDP
    return getattr(m, "_orig_mod", m)  # torch.compile


def read_state_dict(
    source: str | os.PathLike[str] | dict[str, Any], key: str = "MODEL.PRETRAINED"
) -> tuple[dict[str, Tensor], str]:
    """(flat state dict, description) from a file or a dict: unwraps ``params`` (the
    official files), ``params_ema``, ``state_dict`` or ``model`` and a ``module.`` prefix.
    Raises ConfigError naming ``key``."""
    if isinstance(source, dict):
        obj: Any = source
        where = "state dict"
    else:
        where = os.fspath(source)
        if not os.path.isfile(where):
            raise ConfigError(key, f"no such file: {where}")
        try:
            obj = torch.load(where, map_location="cpu", weights_only=True)
        except Exception as e:  # not a torch file, or one holding arbitrary objects
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(key, f"cannot read {where}: {msg}") from None
    for wrapper in ("params", "params_ema", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConfigError(key, f"{where} does not hold a state dict of tensors")
    out: dict[str, Tensor] = {}
    for k, v in obj.items():
        k = str(k)
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out, where


def _is_vrt(key: str) -> bool:
    return key.startswith("vrt.") and not key.startswith("vrt.fusions.")


def load_pretrained_vrt(
    model: nn.Module,
    source: str | os.PathLike[str] | dict[str, Any],
    strict: bool = True,
    key: str = "MODEL.PRETRAINED",
) -> PretrainedReport:
    """Load the VRT part of ``model`` from an official-layout checkpoint (path or state dict,
    under ``params`` or bare; our own layout, e.g. a trainer checkpoint's ``model``, loads
    too). The spike branch keeps its initialisation; SpyNet loads from the ``spynet.*``
    entries, or from a standalone SpyNet file (then the rest is ``missing``).

    ``strict``: any missing entry, unexpected entry or shape mismatch raises one ConfigError
    naming the first (nothing is loaded). Otherwise what matches is loaded and the rest
    reported.
    """
    m = _unwrap_model(model)
    state, where = read_state_dict(source, key)
    own = m.state_dict()
    report = PretrainedReport(source=where)
    report.kept = sum(1 for k in own if not _is_vrt(k))
    take: dict[str, Tensor] = {}
    for k, v in state.items():
        if k in own and not _is_vrt(k):
            report.outside_vrt.append(k)
            continue
        ours = k if k in own else from_official(k)
        if ours is None or ours not in own or not _is_vrt(ours):
            (report.recomputed if RECOMPUTED.search(k) else report.unexpected).append(k)
            continue
        if tuple(v.shape) != tuple(own[ours].shape):
            report.mismatched.append((k, ours, tuple(v.shape), tuple(own[ours].shape)))
            continue
        take[ours] = v
        report.renamed += ours != k
    seen = set(take) | {o for _s, o, _a, _b in report.mismatched}
    report.missing = [k for k in own if _is_vrt(k) and k not in seen]
    if strict and not report.ok:
        n = len(report.missing) + len(report.unexpected) + len(report.mismatched)
        more = (
            f" (and {n - 1} more problems; MODEL.PRETRAINED_STRICT: false loads the rest)"
            if n > 1
            else ""
        )
        raise ConfigError(key, f"{where}: {report.first_problem()}{more}")
    m.load_state_dict(take, strict=False)
    report.loaded = list(take)
    return report


# ------------------------------------------------------------------ export


def _check_layout(m: nn.Module) -> None:
    for i, st in enumerate(m.vrt.stages[:NUM_ALIGN_STAGES]):
        kinds = [g.blocks[0].attn.mutual for g in st.groups]
        if kinds != [True, False]:
            raise ValueError(
                f"stage {i + 1} has {len(kinds)} attention group(s); the official "
                "layout needs a mutual and a self group in each of stages 1-7 "
                "(MODEL.VRT.DEPTHS × MUTUAL_RATIO)"
            )


def export_official(model: nn.Module) -> dict[str, Tensor]:
    """The VRT part of ``model`` as an official-layout state dict (CPU tensors), with the
    buffers the reference stores, so that its ``load_state_dict`` accepts it strictly."""
    from trainer.models.attention import _rel_index

    m = _unwrap_model(model)
    _check_layout(m)
    out: dict[str, Tensor] = {}

    def host(t: Tensor) -> Tensor:  # a model built on the meta device exports meta tensors
        return t.detach().clone() if t.is_meta else t.detach().cpu().clone()

    for k, v in m.state_dict().items():
        off = to_official(k) if _is_vrt(k) else None
        if off is not None:
            out[off] = host(v)
    out["spynet.mean"] = torch.tensor(_MEAN, device="cpu").view(1, 3, 1, 1)
    out["spynet.std"] = torch.tensor(_STD, device="cpu").view(1, 3, 1, 1)
    for name, mod in m.named_modules():
        if not hasattr(mod, "relative_position_bias_table") or not _is_vrt(name + "."):
            continue
        win = mod.window
        n = win[0] * win[1] * win[2]
        base = to_official(f"{name}.relative_position_bias_table")
        assert base is not None
        stem = base[: -len("relative_position_bias_table")]
        out[stem + "relative_position_index"] = _rel_index(win, win, "cpu").view(n, n).clone()
        if mod.mutual:
            pe = sine_position_encoding(win[1], win[2], mod.dim, torch.device("cpu"))
            out[stem + "position_bias"] = pe[None].contiguous()
    return out


def save_official(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """Write :func:`export_official` as ``{"params": ...}`` (the released files' form);
    returns the number of entries."""
    sd = export_official(model)
    torch.save({"params": sd}, os.fspath(path))
    return len(sd)
