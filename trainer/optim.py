"""Optimizers (AdamW, bitsandbytes AdamW8bit) and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from typing import Any

import torch
from torch import nn

from trainer.config import TrainConfig

#: parameter-name fragments of the optical-flow net and deformable alignment (frozen early)
FLOW_PARAM_KEYS = ("spynet", "deform")


def import_bnb() -> Any:
    """Import bitsandbytes without its start-up chatter (optional-kernel notices on CPU).

    The chatter is held back, not lost: if the import fails, the ImportError carries it
    (bitsandbytes' CUDA-setup diagnostics say which library it looked for and why).
    """
    quiet = logging.getLogger("bitsandbytes")
    old = quiet.level
    quiet.setLevel(logging.ERROR)
    out, err = io.StringIO(), io.StringIO()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            warnings.simplefilter("ignore")
            import bitsandbytes as bnb
    except Exception as e:
        raise ImportError(
            f"bitsandbytes cannot be imported ({type(e).__name__}: {e})" + _diagnostics(out, err)
        ) from e
    finally:
        quiet.setLevel(old)
    return bnb


def _diagnostics(*streams: io.StringIO) -> str:
    text = "\n".join(s.getvalue().strip() for s in streams if s.getvalue().strip())
    return f"\nbitsandbytes said:\n{text}" if text else ""


def adamw8bit_or_none(
    groups: list[dict[str, Any]], device: torch.device, **kw: Any
) -> tuple[torch.optim.Optimizer | None, str | None]:
    """(bitsandbytes AdamW8bit, None), or (None, why) when bitsandbytes cannot run on
    ``device``: it is imported and one 8-bit step is tried on a throwaway tensor there
    (a wrong binary otherwise shows only at the first real ``step()``)."""
    try:
        bnb = import_bnb()
    except ImportError as e:
        return None, str(e)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            probe = torch.zeros(4096, device=device, requires_grad=True)  # 8-bit state size
            trial = bnb.optim.AdamW8bit([probe], lr=1e-3)
            probe.grad = torch.ones_like(probe)
            trial.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return bnb.optim.AdamW8bit(groups, **kw), None
    except Exception as e:
        return None, (
            f"an 8-bit AdamW step fails on {device} ({type(e).__name__}: "
            f"{str(e).strip()[:500]})" + _diagnostics(out, err)
        )


def _flow_ids(model: nn.Module) -> set[int]:
    """Parameters of the optical-flow net and deformable alignment (the model says which)."""
    inner = getattr(model, "module", model)
    getter = getattr(inner, "flow_and_deform_parameters", None)
    if callable(getter):
        return {id(p) for p in getter()}
    return {id(p) for n, p in inner.named_parameters() if any(k in n for k in FLOW_PARAM_KEYS)}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Groups: weights with decay; biases, norms and tables without; flow/deform apart.

    Each group carries ``flow`` (bool) so the schedule can give those parameters their own
    learning-rate multiplier. Frozen parameters are included: they may be unfrozen later.
    """
    flow = _flow_ids(model)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        decay = p.ndim >= 2 and "position_bias" not in name and "norm" not in name
        groups.setdefault((id(p) in flow, decay), []).append(p)
    return [
        {"params": ps, "weight_decay": weight_decay if decay else 0.0, "flow": is_flow}
        for (is_flow, decay), ps in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or bitsandbytes AdamW8bit (works on CPU too with bitsandbytes >= 0.49); falls
    back to AdamW with one warning (and bitsandbytes' own diagnostics) when 8-bit cannot
    run on the model's device. Move the model to its device first."""
    o = cfg.OPTIM
    groups = param_groups(model, o.WEIGHT_DECAY)
    if o.TYPE == "adamw8bit":
        params = [p for g in groups for p in g["params"]]
        device = params[0].device if params else torch.device("cpu")
        opt, why = adamw8bit_or_none(
            groups, device, lr=o.LR, betas=o.BETAS, eps=o.EPS, weight_decay=o.WEIGHT_DECAY
        )
        if opt is not None:
            return opt
        warnings.warn(
            f"TRAIN.OPTIM.TYPE adamw8bit: {why}\nFalling back to torch AdamW "
            "(32-bit state, same hyper-parameters).",
            RuntimeWarning,
            stacklevel=2,
        )
    return torch.optim.AdamW(groups, lr=o.LR, betas=o.BETAS, eps=o.EPS, weight_decay=o.WEIGHT_DECAY)


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state tensors (moments, 8-bit blocks and maxima)."""
    total = 0
    for st in opt.state.values():
        for v in st.values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
    return total


class WarmupCosine:
    """Linear warm-up to ``lr`` then cosine down to ``min_lr`` at ``total_steps``.

    ``constant`` keeps ``lr`` after the warm-up. Groups flagged ``flow`` get factor 0 for the
    first ``freeze_flow_steps`` steps (the trainer also stops their gradients then), then
    ``flow_lr_mult``. Call :meth:`step` after each
    optimizer step; :meth:`lr_at` is the schedule as a pure function.
    """

    def __init__(
        self,
        opt: torch.optim.Optimizer,
        lr: float,
        total_steps: int,
        warmup: int = 0,
        min_lr: float = 0.0,
        kind: str = "cosine",
        freeze_flow_steps: int = 0,
        flow_lr_mult: float = 1.0,
    ) -> None:
        self.opt, self.lr, self.total, self.warmup = opt, lr, max(1, total_steps), warmup
        self.min_lr, self.kind = min_lr, kind
        self.freeze, self.flow_mult = freeze_flow_steps, flow_lr_mult
        self.done = 0  # optimizer steps taken
        self._apply()

    def lr_at(self, step: int) -> float:
        """Learning rate for the optimizer step that follows ``step`` completed steps."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.kind == "constant":
            return self.lr
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def _apply(self) -> None:
        base = self.lr_at(self.done)
        flow = 0.0 if self.done < self.freeze else self.flow_mult
        for g in self.opt.param_groups:
            g["lr"] = base * (flow if g.get("flow") else 1.0)

    def step(self) -> None:
        self.done += 1
        self._apply()

    @property
    def current_lr(self) -> float:
        return self.lr_at(self.done)

    def state_dict(self) -> dict[str, int]:
        return {"done": self.done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.done = int(state["done"])
        self._apply()


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> WarmupCosine:
    s = cfg.SCHED
    return WarmupCosine(
        opt,
        cfg.OPTIM.LR,
        total_steps,
        s.WARMUP_STEPS,
        s.MIN_LR,
        s.TYPE,
        cfg.FREEZE_FLOW_STEPS,
        cfg.FLOW_LR_MULT,
    )
