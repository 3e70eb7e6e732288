"""The input pipeline in two regions: :func:`timed_loader`.

``data/wait`` is the loop waiting for the loader's next batch; ``data/h2d`` is the copy of
the batch's tensors (nested in tuples, lists, dicts and named tuples) to ``device``. Both
are regions of the logger like any other (on a CUDA logger, CUDA events: ``data/h2d`` is
then the time the copy holds the GPU's stream, which is what a pinned ``non_blocking``
copy shortens). torch is imported only when a batch is copied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from stagewatch.timing import regions


def _resolve(logger: Any) -> Any:
    lg = logger if logger is not None else regions._active
    if lg is None or not lg.enabled or lg._closed:
        return None
    return lg


def move(batch: Any, device: Any, non_blocking: bool | None, torch: Any) -> Any:
    """``batch`` with every tensor in it on ``device``. ``non_blocking=None``: a
    non-blocking copy of pinned tensors, a plain copy of the others."""
    if isinstance(batch, torch.Tensor):
        nb = batch.is_pinned() if non_blocking is None else non_blocking
        return batch.to(device, non_blocking=nb)
    if isinstance(batch, Mapping):
        moved = {k: move(v, device, non_blocking, torch) for k, v in batch.items()}
        try:
            return type(batch)(moved)
        except Exception:
            return moved
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a named tuple
        return type(batch)(*(move(v, device, non_blocking, torch) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move(v, device, non_blocking, torch) for v in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        fields = {
            f.name: move(getattr(batch, f.name), device, non_blocking, torch)
            for f in dataclasses.fields(batch)
            if f.init
        }
        try:
            return dataclasses.replace(batch, **fields)
        except Exception:
            return batch
    return batch


class TimedLoader:
    """Iterates ``loader`` with ``data/wait`` and ``data/h2d`` regions (see
    :func:`timed_loader`); other attributes (``dataset``, ``sampler``...) are the loader's."""

    def __init__(
        self, loader: Iterable[Any], device: Any, logger: Any, non_blocking: bool | None
    ) -> None:
        self.loader = loader
        self.device = device
        self.logger = logger
        self.non_blocking = non_blocking

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        device, nb = self.device, self.non_blocking
        torch = None
        if device is not None:
            import torch
        while True:
            lg = _resolve(self.logger)
            if lg is None:
                try:
                    batch = next(it)
                except StopIteration:
                    return
                if device is not None:
                    batch = move(batch, device, nb, torch)
                yield batch
                continue
            r = lg.region("/data/wait")
            r.__enter__()
            try:
                batch = next(it)
            except StopIteration:
                r.__exit__(None, None, None)
                return
            r.__exit__(None, None, None)
            if device is not None:
                with lg.region("/data/h2d"):
                    batch = move(batch, device, nb, torch)
            yield batch

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.loader, name)


def timed_loader(
    loader: Iterable[Any],
    device: Any = None,
    *,
    logger: Any = None,
    non_blocking: bool | None = None,
) -> TimedLoader:
    """``loader``'s batches, timed: ``data/wait`` while the next batch is awaited and, with
    a ``device``, ``data/h2d`` while its tensors are copied there (nested containers too).

    ``non_blocking``: default non-blocking for pinned tensors only. ``logger``: default the
    global timing logger, looked up per batch; with timing off the batches are still moved
    to ``device``, untimed. ``for batch in stagewatch.timed_loader(loader, "cuda"):``.
    """
    return TimedLoader(loader, device, logger, non_blocking)
