"""Region names of the simulated step: the region open at each op (the same spans the
trainer's timing measures), and figures summed up the region tree."""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode


def in_backward() -> bool:
    """True while the autograd engine runs (a backward pass, or a checkpoint's recompute)."""
    return torch._C._current_graph_task_id() != -1


class Regions:
    """The open regions (innermost last), fed by forward hooks and by the model's backward
    instrumentation, which calls :meth:`begin`/:meth:`end` like a timing logger."""

    # what the model's instrumentation checks on a timing logger before it calls it
    enabled = True
    _closed = False

    def __init__(self) -> None:
        self.open: list[str] = []
        self.phase = "forward"
        # the autograd engine runs a checkpoint's recompute without the Python function
        # modes of the caller: the autocast emulation is re-entered around it
        self.recompute_mode: TorchFunctionMode | None = None
        self._entered: list[TorchFunctionMode] = []

    def begin(self, name: str) -> str:
        self.open.append(name)
        if name.endswith("/recompute") and self.recompute_mode is not None:
            if torch._C._len_torch_function_stack() == 0:
                self.recompute_mode.__enter__()
                self._entered.append(self.recompute_mode)
            else:
                self._entered.append(None)  # type: ignore[arg-type]
        return name

    def end(self, handle: Any) -> None:
        if isinstance(handle, str) and handle.endswith("/recompute") and self._entered:
            mode = self._entered.pop()
            if mode is not None:
                mode.__exit__(None, None, None)
        for i in range(len(self.open) - 1, -1, -1):
            if self.open[i] == handle:
                del self.open[i]
                return

    @property
    def current(self) -> str:
        """The innermost open region, else the phase (forward, loss, backward)."""
        return self.open[-1] if self.open else self.phase


def inclusive(excl: dict[str, int]) -> dict[str, int]:
    """Per-region figures summed into every enclosing region (``a/b/c`` counts in ``a/b``
    and ``a`` too)."""
    out: dict[str, int] = {}
    for name, v in excl.items():
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            key = "/".join(parts[:i])
            out[key] = out.get(key, 0) + v
    return out


def region_rows(names: list[str]) -> list[str]:
    """The plan's rows: each module region below the trainer's forward/backward."""
    rows = []
    for n in names:
        if n.startswith("forward/") and not n.endswith("/chunk"):
            r = n.removeprefix("forward/")
            if r != "vrt" and r.count("/") <= 1:
                rows.append(r)
    return rows
