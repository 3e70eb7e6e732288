"""``VRTWithSpike``: the spike branch feeding VRT, or plain VRT with ``USE_SPIKE: false``."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from stagewatch.timing.instrument import instrument
from trainer.models import _timing
from trainer.models.config import ModelConfig
from trainer.models.instrument import RecomputeCharges
from trainer.models.pretrained import PretrainedReport
from trainer.models.regions import region_names
from trainer.models.spike import NUM_SCALES, SpikeEncoder3D, SpikeTSA, TemporalFusion
from trainer.models.vrt import VRT, DeformAlign


class VRTWithSpike(nn.Module):
    """``model(rgb [B,T,3,H,W], spikes [B,T,K,H,W] | None) -> [B,T,3,H,W]``.

    H and W must be multiples of 8, T >= 2. Forward regions (relative to the caller's):
    ``spike_encoder/scale0..3``, ``spike_tsa/scale0..3[/chunk]``, ``vrt/flow``,
    ``vrt/prealign``, ``vrt/stage1..8``, ``vrt/fusion1..4``, ``vrt/head``. While a timing
    logger is enabled, :func:`stagewatch.instrument` times these modules (``forward/...``
    and ``backward/...``) and the checkpointed blocks charge their re-run to
    ``backward/vrt/stageN/recompute``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        v, s = cfg.VRT, cfg.SPIKE
        fusions = None
        if cfg.USE_SPIKE:
            self.spike_encoder = SpikeEncoder3D(s)
            self.spike_tsa = SpikeTSA(s)
            fusions = nn.ModuleList(
                TemporalFusion(
                    v.EMBED_DIMS[0], s.WIDTH, s.FUSION_HEADS, s.FUSION_MLP_RATIO, s.TSA_CHUNK_TOKENS
                )
                for _ in range(NUM_SCALES)
            )
        self.vrt = VRT(cfg, fusions)
        #: what build_model loaded from MODEL.PRETRAINED (None: nothing)
        self.pretrained_report: PretrainedReport | None = None
        self._instr: Any = None  # a stagewatch.InstrumentHandle while timing is on
        self._charges: RecomputeCharges | None = None
        self._instr_log: Any = None

    # ------------------------------------------------------------------ forward

    def forward(self, rgb: Tensor, spikes: Tensor | None = None) -> Tensor:
        self._sync_instrumentation()
        self._check(rgb, spikes)
        feats: tuple[Tensor, ...] = ()
        if self.cfg.USE_SPIKE:
            assert spikes is not None
            feats = self.spike_encoder(spikes.to(rgb.dtype))
            feats = self.spike_tsa(*feats)
        return self.vrt(rgb, *feats)

    def _check(self, rgb: Tensor, spikes: Tensor | None) -> None:
        if rgb.dim() != 5 or rgb.shape[2] != 3:
            raise ValueError(f"rgb must be [B,T,3,H,W], got {tuple(rgb.shape)}")
        b, t, _, h, w = rgb.shape
        if t < 2:
            raise ValueError(f"VRT needs at least 2 frames, got T={t}")
        if h % 8 or w % 8:
            raise ValueError(f"H and W must be multiples of 8, got {h}x{w}")
        if not self.cfg.USE_SPIKE:
            return
        k = self.cfg.SPIKE.BINS
        if spikes is None:
            raise ValueError("MODEL.USE_SPIKE is true: spikes [B,T,K,H,W] are required")
        if tuple(spikes.shape) != (b, t, k, h, w):
            raise ValueError(
                f"spikes must be {(b, t, k, h, w)} (K = MODEL.SPIKE.BINS), "
                f"got {tuple(spikes.shape)}"
            )

    # ------------------------------------------------------------------ regions

    def region_modules(self) -> dict[str, nn.Module]:
        """Region name (without ``forward/``/``backward/``) -> the module it times."""
        out: dict[str, nn.Module] = {}
        if self.cfg.USE_SPIKE:
            out["spike_encoder"] = self.spike_encoder
            for i, m in enumerate(self.spike_encoder.scales):
                out[f"spike_encoder/scale{i}"] = m
            out["spike_tsa"] = self.spike_tsa
            for i, m in enumerate(self.spike_tsa.scales):
                out[f"spike_tsa/scale{i}"] = m
        out["vrt"] = self.vrt
        out["vrt/flow"] = self.vrt.flow
        out["vrt/prealign"] = self.vrt.prealign
        for i, m in enumerate(self.vrt.stages):
            out[f"vrt/stage{i + 1}"] = m
            if i < len(self.vrt.fusions):
                out[f"vrt/fusion{i + 1}"] = self.vrt.fusions[i]
        out["vrt/head"] = self.vrt.head
        return out

    def region_tree(self, checkpointing: bool | None = None) -> list[str]:
        """The region names one training step of this model produces (see region_names)."""
        return region_names(
            self.cfg,
            checkpointing=checkpointing,
            train_flow=any(p.requires_grad for p in self.vrt.flow.parameters()),
        )

    # ------------------------------------------------------------------ instrumentation

    def _sync_instrumentation(self) -> None:
        log = _timing.active_logger()
        if log is self._instr_log:
            return
        self.remove_instrumentation()
        if log is not None:
            recompute = {}
            for i, st in enumerate(self.vrt.stages):
                blocks = [b for g in st.groups for b in g.blocks]
                if getattr(st, "ckpt_align", False):
                    blocks.append(st)  # its checkpointed alignment recomputes too
                recompute[f"vrt/stage{i + 1}"] = blocks
            self._instr = instrument(self, modules=self.region_modules(), logger=log)
            self._charges = RecomputeCharges(recompute, log)
            self._instr_log = log

    def remove_instrumentation(self) -> None:
        """Take away all timing hooks (they come back at the next forward if timing is on)."""
        if self._instr is not None:
            self._instr.remove()
        if self._charges is not None:
            self._charges.remove()
        self._instr, self._charges, self._instr_log = None, None, None

    # ------------------------------------------------------------------ parameters

    def param_counts(self) -> dict[str, int]:
        """Parameters per region module (top-level modules and VRT stages)."""

        def n(m: nn.Module) -> int:
            return sum(p.numel() for p in m.parameters())

        return {name: n(m) for name, m in self.region_modules().items()}

    def flow_and_deform_parameters(self) -> list[nn.Parameter]:
        """SpyNet and every deformable-alignment module (frozen early in the VRT recipe)."""
        params = list(self.vrt.flow.parameters())
        for m in self.vrt.modules():
            if isinstance(m, DeformAlign):
                params += list(m.parameters())
        return params
