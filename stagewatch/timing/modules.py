"""Which modules :func:`~stagewatch.timing.instrument.instrument` times, under which paths.

Paths come from ``named_modules`` with ``.`` -> ``/``, wrapper components dropped (DDP's
``module`` by unwrapping the root, FSDP's ``_fsdp_wrapped_module``, ``checkpoint_wrapper``'s
``_checkpoint_wrapped_module``, torch.compile's ``_orig_mod``; FSDP2's ``fully_shard`` keeps
the names). Also the static checks made once at instrumentation (compiled modules), and the
tensors of a call the hooks use.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from stagewatch.timing.jsonl import TimingWarning

# path components added by wrappers, dropped from region paths
_WRAPPER_PARTS = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """A :class:`TimingWarning` the first time ``key`` is seen in this process (for what
    hooks find while the loop runs)."""
    if key not in _warned:
        _warned.add(key)
        warn(message)


def warn(message: str) -> None:
    """A :class:`TimingWarning` (for what ``instrument()`` finds when it is called)."""
    warnings.warn(message, TimingWarning, stacklevel=4)


def norm_path(name: str) -> str:
    parts = [p for p in name.replace(".", "/").split("/") if p and p not in _WRAPPER_PARTS]
    return "/".join(parts)


def matches(path: str, patterns: tuple[str, ...]) -> bool:
    """A pattern matches the module's path or one of its ancestors' (``encoder`` covers
    ``encoder/layers/0``)."""
    for pat in patterns:
        if fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(path, pat.rstrip("/") + "/*"):
            return True
    return False


def patterns(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    try:
        pats = tuple(value)
    except TypeError:
        raise TypeError(f"instrument({what}=): expected a pattern or a list of patterns") from None
    if not all(isinstance(p, str) for p in pats):
        raise TypeError(f"instrument({what}=): patterns must be strings, got {pats!r}")
    return tuple(norm_path(p) if "*" not in p else p.replace(".", "/") for p in pats)


def _children(m: Any) -> dict[str, Any]:
    """A module's own ``_modules`` dict (a TorchScript module's is not a dict: none)."""
    mods = m.__dict__.get("_modules")
    return mods if isinstance(mods, dict) else {}


def unwrap(model: Any) -> Any:
    """The user's module inside DDP, DataParallel, FSDP (1) and torch.compile wrappers."""
    for _ in range(8):
        inner = None
        for attr in ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"):
            inner = _children(model).get(attr)
            if inner is not None:
                break
        if inner is None and type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
            inner = getattr(model, "module", None)
        if inner is None:
            return model
        model = inner
    return model


def _is_wrapper(m: Any) -> bool:
    mods = _children(m)
    return any(a in mods for a in ("_fsdp_wrapped_module", "_checkpoint_wrapped_module"))


def is_compiled(m: Any) -> bool:
    return "_orig_mod" in _children(m) or (m.__dict__.get("_compiled_call_impl") is not None)


def select_modules(
    model: Any, depth: int | None, include: tuple[str, ...], exclude: tuple[str, ...]
) -> dict[str, Any]:
    """Path -> module for every module of ``model`` (unwrapped) that ``instrument`` times.

    Containers without a forward (ModuleList, ModuleDict) and wrappers are skipped; a module
    reachable under several names is timed under the first."""
    import torch

    skip = (torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.ParameterList)
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for name, m in model.named_modules():
        path = norm_path(name)
        if not path or id(m) in seen or isinstance(m, skip) or _is_wrapper(m):
            continue
        if depth is not None and path.count("/") + 1 > depth:
            continue
        if include and not matches(path, include):
            continue
        if exclude and matches(path, exclude):
            continue
        if path in out:
            continue
        seen.add(id(m))
        out[path] = m
    return out


def owners(model: Any, timed: dict[str, Any]) -> dict[int, str]:
    """id(module) -> path of the nearest timed module at or above it (for recompute)."""
    by_id = {id(m): p for p, m in timed.items()}
    out: dict[int, str] = {}

    def walk(m: Any, owner: str | None, seen: set[int]) -> None:
        if id(m) in seen:
            return
        seen.add(id(m))
        own = by_id.get(id(m), owner)
        if own is not None:
            out[id(m)] = own
        for child in m._modules.values():
            if child is not None:
                walk(child, own, seen)

    walk(model, None, set())
    return out


def given_modules(
    modules: Mapping[str, Any], inc: tuple[str, ...], exc: tuple[str, ...], torch: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, m in modules.items():
        if not isinstance(m, torch.nn.Module):
            raise TypeError(f"instrument(modules=): {name!r} is not a torch.nn.Module")
        path = norm_path(str(name))
        if not path:
            raise ValueError(f"instrument(modules=): {name!r} is not a region name")
        if (inc and not matches(path, inc)) or (exc and matches(path, exc)):
            continue
        out[path] = unwrap(m)
    return out


def drop_compiled(timed: dict[str, Any]) -> dict[str, Any]:
    """Without the modules instrument cannot time: compiled ones, TorchScript ones (which
    refuse Python hooks), each kind with one warning, and those whose class makes
    ``forward`` a property (the timed forward would sit unread in the instance's dict)."""
    out = {}
    scripted = []
    for path, m in timed.items():
        if is_script(m):
            scripted.append(path)
            continue
        if not forward_replaceable(m):
            warn(
                f"instrument(): {path!r} has a `forward` its class defines as a property (or "
                "another data descriptor), which the timed forward cannot replace; not timed",
            )
            continue
        if is_compiled(m):
            warn(
                f"instrument(): {path!r} is compiled by torch.compile, which ignores hooks "
                "added after it; not timed",
            )
            continue
        out[path] = m
    if scripted:
        more = f" (and {len(scripted) - 1} more)" if len(scripted) > 1 else ""
        warn(
            f"instrument(): {scripted[0]!r}{more} is a TorchScript module, which takes no "
            "Python hooks; not timed (its time counts in its caller's)",
        )
    return out


def forward_replaceable(m: Any) -> bool:
    """Whether ``m.forward`` is read from the instance's ``__dict__`` (where the timed forward
    goes): not if the class makes it a data descriptor (a ``property``)."""
    import inspect

    attr = inspect.getattr_static(type(m), "forward", None)
    return not hasattr(type(attr), "__set__")


def is_script(m: Any) -> bool:
    import sys

    jit = getattr(sys.modules.get("torch"), "jit", None)
    script = getattr(jit, "ScriptModule", None)
    return script is not None and isinstance(m, script)


# --------------------------------------------------------------------------- a call's tensors


def first_param(module: Any) -> tuple[Any, str] | None:
    """The module that holds ``module``'s first parameter, and its name there (the order of
    ``module.parameters()``): a probe checks that one is still the parameter it hooked."""
    for m in module.modules():
        for name, p in m._parameters.items():
            if p is not None:
                return m, name
    return None


def nested_grad_tensors(a: Any, tensor: type) -> list[Any]:
    """Tensors that need a gradient one level inside a tuple, list or dict argument."""
    items = a.values() if isinstance(a, Mapping) else a
    return [x for x in items if isinstance(x, tensor) and x.requires_grad]


def swap_inputs(
    items: Iterable[tuple[Any, Any]], views: dict[int, Any], nested: list[Any], tensor: type
) -> dict[Any, Any] | None:
    """Position or name -> a view of each tensor argument that needs a gradient (one view
    per distinct tensor, kept in ``views``); tensors inside containers go to ``nested``."""
    swapped: dict[Any, Any] | None = None
    for k, a in items:
        if isinstance(a, tensor):
            if a.requires_grad:
                v = views.get(id(a))
                if v is None:
                    v = views[id(a)] = a.view_as(a)
                if swapped is None:
                    swapped = {}
                swapped[k] = v
        elif isinstance(a, (tuple, list, dict)):  # concrete types: an ABC check is slow
            nested += nested_grad_tensors(a, tensor)
    return swapped


def output_nodes(out: Any, torch: Any, depth: int = 0) -> list[Any]:
    """The autograd nodes that made the output tensors that need a gradient."""
    if isinstance(out, torch.Tensor):
        fn = out.grad_fn
        return [fn] if fn is not None else []
    if depth > 2:
        return []
    if isinstance(out, Mapping):  # dicts, Hugging Face ModelOutput
        items: Iterable[Any] = out.values()
    elif isinstance(out, (tuple, list)):
        items = out
    elif is_dataclass(out) and not isinstance(out, type):  # a model's own output class
        items = [getattr(out, f.name, None) for f in fields(out)]
    else:
        return []
    nodes = []
    for o in items:
        nodes.extend(output_nodes(o, torch, depth + 1))
    return nodes
