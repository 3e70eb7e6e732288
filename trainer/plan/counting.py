"""Counting on the meta device, op by op: FLOPs per region and the bytes of live storages
(the live-bytes curve and its peak)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from trainer.plan.autocast import AutocastSdpa, fp32_regions
from trainer.plan.regions import Regions

_EXPIRED = torch.UntypedStorage._expired


def storage_key(t: Tensor) -> int:
    """Identity of ``t``'s storage (shared by its views), valid while the storage lives."""
    return t.untyped_storage()._cdata


class OpCounter(TorchDispatchMode):
    """FLOPs per region and the live bytes of every storage created on the meta device.

    Liveness is polled (a storage's weak reference expires when it is freed): storages
    born in the last ``YOUNG_OPS`` ops at every op, all of them every few ops and before
    a new peak is recorded (at most every ``MIN_FULL_GAP`` ops), so that a peak is not
    inflated by temporaries that are already gone.
    """

    YOUNG_OPS = 32
    MIN_FULL_GAP = 16

    def __init__(self, regions: Regions) -> None:
        super().__init__()
        self.regions = regions
        self.flops: dict[str, int] = {}
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.young: list[tuple[int, int]] = []  # (birth op, key)
        self.live_bytes = 0
        self.peak = 0
        self.peak_at = ""
        self.ops = 0
        self.last_full = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        self._charge_flops(func, args, kwargs, out)
        grew = self._track_new_storages(out)
        self._poll(grew)
        return out

    def _charge_flops(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> None:
        """Add the op's FLOPs (``torch.utils.flop_counter``'s formula, where it has one) to
        the open region."""
        fn = flop_registry.get(func._overloadpacket)
        if fn is not None:
            n = int(fn(*args, **kwargs, out_val=out))
            if n:
                r = self.regions.current
                self.flops[r] = self.flops.get(r, 0) + n

    def _track_new_storages(self, out: Any) -> bool:
        """Track the storages the op created; whether there were any."""
        grew = False
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.device.type == "meta":
                st = t.untyped_storage()
                key = st._cdata
                if key not in self.live:
                    nb = st.nbytes()
                    self.live[key] = (StorageWeakRef(st), nb)
                    self.young.append((self.ops, key))
                    self.live_bytes += nb
                    grew = True
        return grew

    def _poll(self, grew: bool) -> None:
        """Forget the storages that died and record a new peak (when: see the class)."""
        self._sweep_young()
        gap = self.ops - self.last_full
        if gap >= max(self.MIN_FULL_GAP, len(self.live) // 16):
            self.sweep()
        if grew and self.live_bytes > self.peak:
            if gap >= self.MIN_FULL_GAP:
                self.sweep()
            if self.live_bytes > self.peak:
                self.peak, self.peak_at = self.live_bytes, self.regions.current

    def _sweep_young(self) -> None:
        expired = _EXPIRED
        keep = []
        old = self.ops - self.YOUNG_OPS
        for born, key in self.young:
            ent = self.live.get(key)
            if ent is None:
                continue
            if expired(ent[0].cdata):
                del self.live[key]
                self.live_bytes -= ent[1]
            elif born > old:
                keep.append((born, key))
        self.young = keep

    def sweep(self) -> None:
        """Forget every storage that died since the last sweep."""
        expired = _EXPIRED
        dead = [k for k, (ref, _nb) in self.live.items() if expired(ref.cdata)]
        for k in dead:
            self.live_bytes -= self.live.pop(k)[1]
        self.last_full = self.ops


def count_flops(
    fn: Callable[..., Tensor], *args: Tensor, amp: torch.dtype | None = None, arch: str = "sm90"
) -> dict[str, int]:
    """FLOPs of ``fn(*args)`` (meta tensors) and of the backward of its sum, under the same
    autocast emulation and SDPA kernel choice as :func:`~trainer.plan.simulate`:
    ``{"forward": n, "backward": m}``."""
    regions = Regions()
    counter = OpCounter(regions)
    ac = AutocastSdpa(amp, arch)
    with fp32_regions(ac), ac, counter:
        out = fn(*args)
        regions.phase = "backward"
        if out.requires_grad:
            out.float().sum().backward()
    return {
        "forward": counter.flops.get("forward", 0),
        "backward": counter.flops.get("backward", 0),
    }
