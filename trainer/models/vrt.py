"""VRT (video restoration transformer), deblurring setting, written from MODEL.md.

Features travel channels-last, ``[B, T, H, W, C]``. Stages 1-7 are: reshape, a group of
mutual+self attention blocks on frame pairs, a group of self attention blocks on the clip
window, then flow-guided deformable parallel warping. Stage 8 reconstructs at full
resolution. The attention blocks are :mod:`trainer.models.tmsa`'s, their window attention
:mod:`trainer.models.attention`'s.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from trainer.models import _timing
from trainer.models.config import NUM_ALIGN_STAGES, ModelConfig, VRTConfig
from trainer.models.ops import GEGLU, deform_conv2d, flow_warp, flow_warp_nearest4, fp32_region
from trainer.models.spynet import SpyNet
from trainer.models.tmsa import TMSAGroup

# ------------------------------------------------------------------ parallel warping


class DeformAlign(nn.Module):
    """Flow-guided modulated deformable conv (3×3): offsets = max_offset·tanh(net) + flow."""

    def __init__(self, dim: int, groups: int, max_offset: float) -> None:
        super().__init__()
        self.groups, self.max_offset = groups, max_offset
        k = 9
        self.conv_offset = nn.Sequential(
            nn.Conv2d(2 * dim + 2, dim, 3, 1, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(dim, dim, 3, 1, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(dim, dim, 3, 1, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(dim, 3 * k * groups, 3, 1, 1),
        )
        nn.init.zeros_(self.conv_offset[-1].weight)
        nn.init.zeros_(self.conv_offset[-1].bias)
        self.weight = nn.Parameter(torch.empty(dim, dim, 3, 3))
        self.bias = nn.Parameter(torch.zeros(dim))
        bound = 1.0 / (dim * k) ** 0.5
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, nbr: Tensor, warped: Tensor, cur: Tensor, flow: Tensor) -> Tensor:
        """nbr/warped/cur [N,C,H,W], flow [N,2,H,W] (neighbour -> current) -> aligned nbr."""
        out = self.conv_offset(torch.cat((warped, cur, flow.to(cur.dtype)), 1))
        with fp32_region(nbr):
            out = out.float()
            n = out.shape[1] // 3
            offset = self.max_offset * torch.tanh(out[:, : 2 * n])
            offset = offset + flow.float().flip(1).repeat(1, n, 1, 1)
            mask = torch.sigmoid(out[:, 2 * n :])
            return deform_conv2d(nbr, offset, mask, self.weight, self.bias, self.groups)


# ------------------------------------------------------------------ stages


class AlignStage(nn.Module):
    """Stages 1-7: reshape, mutual group, self group, parallel warping."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        reshape: str,
        max_offset: float,
        vcfg: VRTConfig,
        drop_paths: list[float],
    ) -> None:
        super().__init__()
        self.reshape = reshape
        if reshape == "none":
            self.reshape_norm = nn.LayerNorm(dim)
        elif reshape == "down":
            self.reshape_norm = nn.LayerNorm(4 * dim)
            self.reshape_proj = nn.Linear(4 * dim, dim)
        else:
            self.reshape_norm = nn.LayerNorm(dim // 4)
            self.reshape_proj = nn.Linear(dim // 4, dim)
        _, wh, ww = vcfg.WINDOW_SIZE
        n1 = int(depth * vcfg.MUTUAL_RATIO)
        self.groups = nn.ModuleList()
        if n1:
            self.groups.append(TMSAGroup(dim, n1, heads, (2, wh, ww), True, vcfg, drop_paths[:n1]))
        if depth - n1:
            # the reference hands group 2 the stage's rates from the start, not the rest
            self.groups.append(
                TMSAGroup(
                    dim,
                    depth - n1,
                    heads,
                    tuple(vcfg.WINDOW_SIZE),
                    False,
                    vcfg,
                    drop_paths[: depth - n1],
                )
            )
        self.pa_deform = DeformAlign(dim, vcfg.DEFORMABLE_GROUPS, max_offset)
        self.pa_fuse = GEGLU(3 * dim, 3 * dim, dim)
        self.ckpt_align = vcfg.USE_CHECKPOINT_ALIGN
        self.recompute_region: str | None = None  # as TMSA's: set while timing is on
        self.timing_logger: Any = None

    def _reshape(self, x: Tensor) -> Tensor:
        b, t, h, w, c = x.shape
        if self.reshape == "down":
            # channels of a 2×2 neighbourhood in (column, row, channel) order, as the reference
            x = x.view(b, t, h // 2, 2, w // 2, 2, c).permute(0, 1, 2, 4, 5, 3, 6)
            return self.reshape_proj(self.reshape_norm(x.reshape(b, t, h // 2, w // 2, 4 * c)))
        if self.reshape == "up":
            x = x.view(b, t, h, w, 2, 2, c // 4).permute(0, 1, 2, 5, 3, 4, 6)
            return self.reshape_proj(self.reshape_norm(x.reshape(b, t, 2 * h, 2 * w, c // 4)))
        return self.reshape_norm(x)

    def forward(self, x: Tensor, flow_b: Tensor, flow_f: Tensor) -> Tensor:
        """x [B,T,H,W,C] at the previous resolution; flows [B,T-1,2,H',W'] at this one."""
        x = self._reshape(x)
        for g in self.groups:
            x = g(x)
        if self.ckpt_align and torch.is_grad_enabled():
            # the deformable alignment saves ~9x its input in fp32: recompute it instead
            return checkpoint(
                self._charged_warp, x, flow_b, flow_f, use_reentrant=False, preserve_rng_state=False
            )
        return self._parallel_warp(x, flow_b, flow_f)

    def _charged_warp(self, x: Tensor, flow_b: Tensor, flow_f: Tensor) -> Tensor:
        if self.recompute_region is not None and _timing.in_backward():
            with _timing.recompute(self.timing_logger, self.recompute_region):
                return self._parallel_warp(x, flow_b, flow_f)
        return self._parallel_warp(x, flow_b, flow_f)

    def _parallel_warp(self, x: Tensor, flow_b: Tensor, flow_f: Tensor) -> Tensor:
        b, t, h, w, c = x.shape
        xc = x.permute(0, 1, 4, 2, 3)  # [B,T,C,H,W]

        def align(nbr: Tensor, cur: Tensor, flow: Tensor) -> Tensor:
            nbr = nbr.reshape(b * (t - 1), c, h, w)
            cur = cur.reshape(b * (t - 1), c, h, w)
            flow = flow.reshape(b * (t - 1), 2, h, w)
            out = self.pa_deform(nbr, flow_warp(nbr, flow), cur, flow)
            return out.view(b, t - 1, c, h, w).to(x.dtype)

        zero = xc.new_zeros(b, 1, c, h, w)
        back = torch.cat((align(xc[:, 1:], xc[:, :-1], flow_b), zero), 1)  # from frame i+1
        fwd = torch.cat((zero, align(xc[:, :-1], xc[:, 1:], flow_f)), 1)  # from frame i-1
        y = torch.cat((xc, back, fwd), 2).permute(0, 1, 3, 4, 2)
        return self.pa_fuse(y)


class ReconStage(nn.Module):
    """Stage 8: LayerNorm + Linear to the reconstruction width, then residual groups."""

    def __init__(self, in_dim: int, vcfg: VRTConfig, drop_paths: list[float]) -> None:
        super().__init__()
        dims, depths, heads = vcfg.EMBED_DIMS, vcfg.DEPTHS, vcfg.NUM_HEADS
        dim = dims[NUM_ALIGN_STAGES]
        self.reshape_norm = nn.LayerNorm(in_dim)
        self.reshape_proj = nn.Linear(in_dim, dim)
        _, wh, ww = vcfg.WINDOW_SIZE
        self.groups = nn.ModuleList()
        off = 0
        for j in range(NUM_ALIGN_STAGES, len(depths)):
            win = (1, wh, ww) if j in vcfg.INDEP_RECONSTS else tuple(vcfg.WINDOW_SIZE)
            self.groups.append(
                TMSAGroup(
                    dim, depths[j], heads[j], win, False, vcfg, drop_paths[off : off + depths[j]]
                )
            )
            off += depths[j]

    def forward(self, x: Tensor) -> Tensor:
        x = self.reshape_proj(self.reshape_norm(x))
        for g in self.groups:
            x = g(x)
        return x


# ------------------------------------------------------------------ flow, input, head


class FlowNet(nn.Module):
    """SpyNet on neighbouring frames, both directions, at scales 1, 1/2, 1/4, 1/8."""

    def __init__(self) -> None:
        super().__init__()
        self.spynet = SpyNet()

    def forward(self, rgb: Tensor) -> tuple[Tensor, ...]:
        """rgb [B,T,3,H,W] -> (backward flows ×4 scales, forward flows ×4 scales), each
        [B,T-1,2,h,w]; backward flow i maps frame i+1 onto frame i, forward the reverse."""
        b, t, c, h, w = rgb.shape
        a = rgb[:, :-1].reshape(-1, c, h, w)
        z = rgb[:, 1:].reshape(-1, c, h, w)
        flows = self.spynet(torch.cat((a, z)), torch.cat((z, a)))
        out_b, out_f = [], []
        for f in flows:
            fb, ff = f.view(2, b, t - 1, 2, *f.shape[2:]).unbind(0)
            out_b.append(fb)
            out_f.append(ff)
        return (*out_b, *out_f)


class InputAlign(nn.Module):
    """Image pre-alignment (4 nearest samples of each flow-warped neighbour) + first conv."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_first = nn.Conv3d(27, dim, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, rgb: Tensor, flow_b: Tensor, flow_f: Tensor) -> Tensor:
        b, t, c, h, w = rgb.shape
        n = b * (t - 1)
        back = flow_warp_nearest4(rgb[:, 1:].reshape(n, c, h, w), flow_b.reshape(n, 2, h, w))
        fwd = flow_warp_nearest4(rgb[:, :-1].reshape(n, c, h, w), flow_f.reshape(n, 2, h, w))
        zero = rgb.new_zeros(b, 1, 4 * c, h, w)
        back = torch.cat((back.view(b, t - 1, 4 * c, h, w), zero), 1)
        fwd = torch.cat((zero, fwd.view(b, t - 1, 4 * c, h, w)), 1)
        x = torch.cat((rgb, back, fwd), 2).transpose(1, 2)  # [B,27,T,H,W]
        return self.conv_first(x).permute(0, 2, 3, 4, 1)  # [B,T,H,W,C]


class Head(nn.Module):
    """LayerNorm, Linear back to the stage width, + first-conv features, conv to RGB,
    + input (global residual)."""

    def __init__(self, recon_dim: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(recon_dim)
        self.conv_after_body = nn.Linear(recon_dim, dim)
        self.conv_last = nn.Conv3d(dim, 3, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, x: Tensor, first: Tensor, rgb: Tensor) -> Tensor:
        x = self.conv_after_body(self.norm(x)) + first
        out = self.conv_last(x.permute(0, 4, 1, 2, 3)).transpose(1, 2)  # [B,T,3,H,W]
        return out.to(rgb.dtype) + rgb


class VRT(nn.Module):
    """The VRT core; with ``fusions`` (spike branch) its stages 1-4 outputs are fused with
    the spike features passed as extra forward arguments."""

    def __init__(self, cfg: ModelConfig, fusions: nn.ModuleList | None = None) -> None:
        super().__init__()
        v = cfg.VRT
        dim = v.EMBED_DIMS[0]
        nb = sum(v.DEPTHS)
        dpr = [x.item() for x in torch.linspace(0, v.DROP_PATH_RATE, nb, device="cpu")]
        self.flow = FlowNet()
        if cfg.FLOW_WEIGHTS:
            self.flow.spynet.load_weights(cfg.FLOW_WEIGHTS)
        self.prealign = InputAlign(dim)
        reshapes = ["none", "down", "down", "down", "up", "up", "up"]
        scales = [1, 2, 4, 8, 4, 2, 1]
        self.stages = nn.ModuleList()
        off = 0
        for i in range(NUM_ALIGN_STAGES):
            self.stages.append(
                AlignStage(
                    dim,
                    v.DEPTHS[i],
                    v.NUM_HEADS[i],
                    reshapes[i],
                    v.MAX_RESIDUE_MAGNITUDE / scales[i],
                    v,
                    dpr[off : off + v.DEPTHS[i]],
                )
            )
            off += v.DEPTHS[i]
        self.stages.append(ReconStage(dim, v, dpr[off:]))
        self.fusions = fusions if fusions is not None else nn.ModuleList()
        self.head = Head(v.EMBED_DIMS[NUM_ALIGN_STAGES], dim)
        self._flow_scale = [0, 1, 2, 3, 2, 1, 0]

    def forward(self, rgb: Tensor, *spike_feats: Tensor) -> Tensor:
        # each module's forward region (vrt/flow, vrt/stage1...) comes from the model's
        # instrumentation (stagewatch.instrument), not from regions written here
        flows = self.flow(rgb)
        fb, ff = flows[:4], flows[4:]
        first = self.prealign(rgb, fb[0], ff[0])
        x = first
        skips: list[Tensor] = []
        for i, stage in enumerate(self.stages[:NUM_ALIGN_STAGES]):
            s = self._flow_scale[i]
            if i == 5:
                x = x + skips[2]
            elif i == 6:
                x = x + skips[1]
            x = stage(x, fb[s], ff[s])
            if i < 4:
                if len(self.fusions):
                    x = self.fusions[i](x, spike_feats[i])
                skips.append(x)
        x = x + skips[0]
        x = self.stages[NUM_ALIGN_STAGES](x)
        return self.head(x, first, rgb)
