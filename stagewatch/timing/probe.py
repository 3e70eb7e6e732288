"""One instrumented module: :class:`Probe`, its timed forward (:class:`TimedForward`) and
the autograd hooks of each call (how, see :mod:`stagewatch.timing.instrument`), and
:func:`on_node`."""

from __future__ import annotations

import functools
from collections import deque
from typing import Any

from stagewatch.timing import regions
from stagewatch.timing.calls import NO_HOOKS, Call, _rec
from stagewatch.timing.forward import TimedForward
from stagewatch.timing.modules import first_param, output_nodes, swap_inputs, warn_once
from stagewatch.timing.regions import CpuRegion

MAX_PENDING = 64  # backward calls a probe remembers (bounded even if backward never runs)
CHECKED_CALLS = 2  # a module's first calls with gradients: do their outputs use the inputs?
MAX_NODES = 256  # autograd nodes that check walks at most (past it: inputs taken as used)
# a call that made more autograd nodes is not checked (its inputs taken as used): modules
# that read an input for its shape are small (a positional embedding: a node or two), and
# the walk from a module's outputs back to the inputs it uses covers all the nodes it made
MAX_MADE = 16
# regions waiting in the logger's list for step() (folded into the step's dict past this)
MAX_RAW = 4096


def _reached(nodes: Any, targets: list[Any], next_seq: int) -> set[int] | None:
    """Which of ``targets`` (input number, its node, its view, the view's version) the
    autograd graph from ``nodes`` reaches, walking only the nodes the module's call made
    (sequence numbers from the first target's on, to ``next_seq``); None: not known (too
    many nodes)."""
    first = min(n._sequence_nr() + (1 if v is None else 0) for _, n, v, _ in targets)
    if next_seq - first > MAX_MADE:
        return None
    want = {}
    used: set[int] = set()
    for i, n, v, version in targets:
        if v is not None and v._version != version:  # changed in place: taken as used
            used.add(i)
        else:
            want[id(n)] = i
    todo = list(nodes)
    seen: dict[int, Any] = {}  # the nodes too: an id stays theirs while they are held
    while todo and want:
        n = todo.pop()
        if n is None or id(n) in seen:
            continue
        seen[id(n)] = n
        if len(seen) > MAX_NODES:
            return None
        i = want.pop(id(n), None)
        if i is not None:
            used.add(i)
            continue
        if n._sequence_nr() < first:
            continue
        todo.extend(f for f, _ in n.next_functions)
    return used


# --------------------------------------------------------------------------- one module


def on_node(proxy: Any, node: Any, fn: Any) -> None:
    """Call ``fn`` when autograd runs ``node`` (backward), without a removable handle.

    ``node.register_prehook(fn)`` goes through Python (``Function._register_hook``, a
    ``RemovableHandle`` with a weak reference and a global id): in a training step, where
    the caches are cold between two module calls, that measured ~30 µs per call against
    ~5 µs warm. This is the same C++ hook ``Tensor.register_hook`` puts on a node
    (``_register_hook_dict``), given a dict of hooks through ``proxy``, a tensor of ours
    that autograd never sees: its ``_backward_hooks`` is read once here, and its output
    number (0) picks which gradient of ``node`` the hook gets (any: only the moment is
    used). The user's tensors and their ``_backward_hooks`` are left alone. Nothing can
    take the hook away: it goes with the graph, and ``Call`` ignores a call it no longer
    wants."""
    proxy._backward_hooks = {0: fn}
    node._register_hook_dict(proxy)


def forward_name(base: str, path: str) -> str:
    """The region of a forward of module ``path`` called inside region ``base``: under it,
    except inside a backward region (a loss module called in ``timed("backward")``), whose
    names are the modules' backward regions: ``forward/<path>`` there."""
    if base == "backward" or base.startswith("backward/"):
        base = "forward"
    return base + "/" + path


class Frame(CpuRegion):
    """One forward call on the hooks' stack; on a CPU logger also its own ``forward/``
    region (a :class:`CpuRegion` entered inline: no region object and method calls).
    ``region``: None (a re-entered call: no region), :data:`INLINE` (the frame is its own
    region) or the logger's region object."""

    __slots__ = ("base", "call", "probe", "region")


# A frame that is its own region says so with this, not with a reference to itself: that
# was a reference cycle per module call, freed only by the garbage collector (two objects
# per timed module per step, a gen-0 collection every ~20 steps of the benchmark's model)
INLINE = True


new_frame = object.__new__


def fold_now(lg: Any) -> None:
    """Fold the regions waiting for ``step()`` into the current step now (a loop that
    calls ``step()`` seldom or never: the list stays bounded)."""
    with lg._lock:
        regions.fold_raw(lg._raw, lg._cur)


def _exit_region(frame: Frame, region: Any) -> None:
    """Close a forward region the general way: a CPU frame not on top of the logger's stack
    (a region the module left open), or the logger's region object (CUDA)."""
    if region is INLINE:
        CpuRegion.__exit__(frame, None, None, None)
    else:
        region.__exit__(None, None, None)


def thread_stack(lg: Any) -> list[Any]:
    """The region stack of ``lg`` on this thread (made if none): one list per thread for
    the logger's life, so the hooks keep it in their own per-thread state."""
    tls = lg._tls
    try:
        return tls.stack
    except AttributeError:
        tls.stack = []
        return tls.stack


class Probe:
    """The hooks of one timed module."""

    def __init__(self, inst: Any, module: Any, path: str) -> None:
        self.inst = inst
        self.module = module
        self.path = path
        self.bwd_name = "backward/" + path
        self.params = [p for p in module.parameters()]
        self.first = first_param(module)
        self.pending: deque[Call] = deque()
        self.param_hooks: list[Any] = []
        self.hooked: tuple[bool, ...] = ()
        self.trainable = 0  # parameters that need a gradient (while hooked)
        self.names: dict[str, str] = {}  # the caller's region -> this module's region name
        # calls left whose outputs are checked to depend on their inputs (-1: always, for a
        # module seen ignoring an input, as a positional embedding taking x for its shape)
        self.check = CHECKED_CALLS
        self.fwd = TimedForward(self, module)

    # a copy of something that holds the probe holds an inert one (not a copy of the model)
    def __reduce__(self) -> Any:
        return (inert_probe, ())

    def enter(self, args: Any, kwargs: Any, tls: Any) -> tuple[Frame | None, Any]:
        """A forward call begins (see :meth:`TimedForward.__call__`): its frame (None: not
        timed) and the arguments to run with (None: the same)."""
        inst = self.inst
        lg = inst.log
        if lg._closed:
            inst.remove()
            return None, None
        if inst.armed:
            inst.disarm_recompute()
        pending = self.pending
        if pending and pending[0].state:
            if len(pending) == 1 and pending[0].state >= 2:  # the last call's backward done
                pending.clear()
            else:
                self._stale()
        stack = tls.frames
        last = tls.last_node  # held by the last forward's end: taken back here
        tls.last_node = None
        frame = new_frame(Frame)
        frame.probe = self
        for f in stack:
            if f.probe is self:  # re-entered: the outer call's regions cover this one
                frame.base, frame.call, frame.region = f.base, None, None
                stack.append(frame)
                return frame, None
        open_ = tls.open  # the logger's region stack of this thread, looked up once
        if open_ is None:
            open_ = tls.open = thread_stack(lg)
        base = stack[-1].base if stack else (open_[-1]._full if open_ else "forward")
        full = self.names.get(base)
        if full is None:
            full = forward_name(base, self.path)
            if len(self.names) < 64:  # bounded even if the caller's regions vary without end
                self.names[base] = full
        frame.base = base
        replaced = None
        if inst.grad_enabled():
            frame.call, replaced = self._new_call(args, kwargs, inst.tensor, tls, last)
        else:
            frame.call = None
        stack.append(frame)
        if inst.cpu:  # CpuRegion.__enter__ inlined, on the frame itself
            frame.region = INLINE
            frame._lg = lg
            frame._full = full
            frame._stack = open_
            open_.append(frame)
            frame._t0 = regions._perf()
        else:
            frame.region = region = lg._region_cls(lg, "/" + full)
            region.__enter__()
        return frame, replaced

    def leave(self, frame: Frame, out: Any, tls: Any) -> None:
        """The forward call of ``frame`` returned ``out`` (None: it raised)."""
        stack = tls.frames
        if stack and stack[-1] is frame:
            stack.pop()
        else:  # a frame above it was left open (a forward that raised), or it is gone
            for i in range(len(stack) - 2, -1, -1):
                if stack[i] is frame:
                    del stack[i]
                    break
            else:
                return
        region = frame.region
        if region is None:
            return
        open_ = frame._stack if region is INLINE else None
        if open_ and open_[-1] is frame:  # CPU: CpuRegion.__exit__ inlined
            ms = (regions._perf() - frame._t0) * 1000.0
            open_.pop()
            raw = frame._lg._raw
            raw.append((frame._full, ms))  # folded at step()
            if len(raw) > MAX_RAW:  # bounded without step() (each call adds 1-2 entries)
                fold_now(frame._lg)
        else:
            _exit_region(frame, region)
        call = frame.call
        if call is None:
            return
        if call.views:
            self._check_views(call)
        if type(out) is self.inst.tensor:  # the common case, without output_nodes()
            node = out.grad_fn
            if node is not None:
                if self.check:
                    self._check_use(call, (node,))
                proxy = tls.proxy  # on_node() inlined
                tls.last_hooks = proxy._backward_hooks = {0: call.start}
                node._register_hook_dict(proxy)
                tls.last_seq = node._sequence_nr()  # the next module may share these hooks
                tls.last_node = node
                if self.pending:
                    self._remember(call)
                else:
                    self.pending.append(call)
                return
        self._hook_outputs(call, output_nodes(out, self.inst.torch), tls.proxy, out=out)

    def rerun(self, fwd: Any, args: Any, kwargs: Any) -> Any:
        """A forward re-run by a re-entrant checkpoint during the backward."""
        replaced = self._rerun_pre(self.module, args, kwargs)
        if replaced is not None:
            args, kwargs = replaced
        try:
            out = fwd(*args, **kwargs)
        except BaseException:
            self._rerun_post(None)
            raise
        self._rerun_post(out)
        return out

    # re-entrant activation checkpointing: the forward under checkpoint ran without
    # gradients (no backward hooks then); during the backward it re-runs with them and
    # autograd backwards through the re-run at once, so the re-run's calls get the hooks
    def _rerun_pre(self, module: Any, args: Any, kwargs: Any) -> Any:
        inst = self.inst
        tls = inst.thread_state()
        reruns = tls.reruns
        if any(p is self for p, _ in reruns) or not inst.grad_enabled():
            reruns.append((self, None))  # re-entered: the outer call covers it
            return None
        if inst.saved_hooks(False) is not None:  # non-reentrant: no backward of the re-run
            reruns.append((self, None))
            return None
        call, replaced = self._new_call(args, kwargs, inst.tensor, tls)
        rec = _rec
        # the module whose call opened this recompute region: its backward region starts
        # with the re-run (as in non-reentrant checkpointing), unless another re-run
        # starts before its gradients do (Call.rerun_start)
        call.mark = -1
        if rec.depth == 1 and rec.handles and rec.handles[-1][0] is module:
            call.mark = rec.opened
            if inst.cpu:
                call.t0 = regions._perf()
            else:
                call.handle = inst.log.begin(self.bwd_name)
        reruns.append((self, call))
        return replaced

    def _rerun_post(self, out: Any) -> None:
        inst = self.inst
        tls = inst.thread_state()
        reruns = tls.reruns
        for i in range(len(reruns) - 1, -1, -1):
            if reruns[i][0] is self:
                call = reruns.pop(i)[1]
                break
        else:
            return
        if call is None:
            return
        if call.views:
            self._check_views(call)
        self._hook_outputs(call, output_nodes(out, inst.torch), tls.proxy, call.rerun_start)

    def _check_use(self, call: Call, nodes: Any) -> None:
        """Inputs of ``call`` that its outputs do not depend on (the module read only their
        shape): their gradients never come through it, so the call does not wait for them;
        with none left it ends on its parameters' gradients. Without this its region would
        stretch to the end of the backward pass, with a warning."""
        targets = getattr(call, "targets", None)
        if not targets:
            return
        call.targets = None
        used = _reached(nodes, targets, self.inst.next_seq())
        if used is None or len(used) == len(targets):
            if self.check > 0:
                self.check -= 1
            return
        self.check = -1
        for i, _, _, _ in targets:
            if i not in used and not call.done & (1 << i):
                call.done |= 1 << i
                call.remaining -= 1
        if call.remaining <= 0:
            call.remaining = 0
            call.params = True
            self._hook_params()

    def _check_views(self, call: Call) -> None:
        for i, v, version in call.views:
            if v._version != version:
                self._modified_in_place(call, i, v)
        call.views = NO_HOOKS  # hold no activation past the forward

    def _hook_outputs(
        self, call: Call, nodes: list[Any], proxy: Any, start: Any = None, out: Any = None
    ) -> None:
        """The backward of ``call`` starts (``start``, else ``call.start``) at the first of the
        nodes that made its outputs; or, when ``out`` is a leaf of the module's own (it
        returned its parameter), at that leaf's gradient."""
        if not nodes and call.params and getattr(out, "grad_fn", 0) is None and out.requires_grad:
            # no node made it: a tensor hook, taken away when the call is done
            call.leaf_hooks = [*call.leaf_hooks, out.register_hook(start or call.start)]
            self._remember(call)
            return
        if not nodes:  # nothing to differentiate through this call
            call.dead = True
            if call.leaf_hooks:
                call.drop_hooks()
            return
        if self.check:
            self._check_use(call, nodes)
        seen: set[int] = set()
        for n in nodes:
            if id(n) not in seen:
                seen.add(id(n))
                on_node(proxy, n, start or call.start)
        self._remember(call)

    def _new_call(
        self, args: Any, kwargs: Any, tensor: Any, tls: Any, last: Any = None
    ) -> tuple[Call, Any]:
        """A call record, and the arguments to run with: each tensor argument that needs a
        gradient is replaced by a view of itself, which only this module consumes, so the
        view's gradient is complete exactly when this module's backward is (a skip
        connection around the module does not count). The same tensor passed twice gets
        the same view (``attn(h, h, h)`` keeps its ``query is key`` fast path).

        No view where none is needed (the common case: one tensor argument, made by the
        last autograd node created on this thread, ``x = layer(x)``): nothing has consumed
        it yet, so the node that made it runs right after this module's backward, as the
        view's node would (the CPU engine runs the ready node of highest sequence number
        first, and no node lies between the two). A view costs an autograd node, a reshape
        and an out-of-place gradient sum per call: in a training step, about half of the
        hooks' backward cost. When that node is the one the previous module's output hooked
        (its backward start: ``x = layer(x)`` again), this module's end joins that hook's
        dict: one hook run from autograd for both (sequence numbers are unique per thread,
        so the same number is the same node, without holding it)."""
        call = Call(self)
        proxy = tls.proxy
        if not kwargs and len(args) == 1 and type(args[0]) is tensor:  # the common case
            a = args[0]
            if a.requires_grad:
                call.remaining = 1
                node = a.grad_fn
                if node is not None:
                    seq = tls.last_seq if node is last else node._sequence_nr()
                    if seq + 1 == self.inst.next_seq():
                        if self.check:
                            call.targets = [(0, node, None, 0)]
                        if seq == tls.last_seq:
                            tls.last_hooks[call] = call.only_input
                        else:
                            proxy._backward_hooks = {0: call.only_input}  # on_node() inlined
                            node._register_hook_dict(proxy)
                        return call, None
                v = a.view_as(a)
                # a hook on the view's own node: it runs once its gradient is complete
                proxy._backward_hooks = {0: call.only_input}  # on_node() inlined
                v.grad_fn._register_hook_dict(proxy)
                call.views = [(0, v, v._version)]
                if self.check:
                    call.targets = [(0, v.grad_fn, v, v._version)]
                return call, ((v,), kwargs)
        views: dict[int, Any] = {}
        nested: list[Any] = []
        new_args = swap_inputs(enumerate(args), views, nested, tensor)
        new_kwargs = swap_inputs(kwargs.items(), views, nested, tensor) if kwargs else None
        if not views and not nested:
            call.params = True
            self._hook_params()
            return call, None
        self._hook_inputs(call, views, nested, proxy)
        if new_args is None and new_kwargs is None:
            return call, None
        if new_args is not None:
            args = tuple(new_args.get(j, a) for j, a in enumerate(args))
        if new_kwargs is not None:
            kwargs = {**kwargs, **new_kwargs}
        return call, (args, kwargs)

    def _hook_inputs(
        self, call: Call, views: dict[int, Any], nested: list[Any], proxy: Any
    ) -> None:
        """The end hooks of a call with several inputs: on each view's node, and on each
        tensor inside a container argument."""
        call.remaining = len(views) + len(nested)
        partial = functools.partial
        i = 0
        call.views = []
        for v in views.values():
            on_node(proxy, v.grad_fn, call.first_input if i == 0 else partial(call.input_grad, i))
            call.views.append((i, v, v._version))
            i += 1
        if self.check:
            call.targets = [(j, v.grad_fn, v, version) for j, v, version in call.views]
        for t in nested:
            h = t.register_hook(call.first_input if i == 0 else partial(call.input_grad, i))
            if t.grad_fn is None:  # a leaf keeps its hooks: take them away when done
                if not call.leaf_hooks:
                    call.leaf_hooks = []
                call.leaf_hooks.append(h)
            i += 1

    @staticmethod
    def _modified_in_place(call: Call, i: int, v: Any) -> None:
        """The module changed its input view in place (``ReLU(inplace=True)``): autograd
        rewrote the input's history, so the view's own node no longer runs. The input (the
        view's base) now ends in the node of that in-place op: its gradient passes that
        node last, so a post-hook there ends the module's backward."""
        base = v._base
        node = base.grad_fn if base is not None else None
        if node is not None:
            node.register_hook(functools.partial(call.input_grad, i))
        else:
            v.register_hook(functools.partial(call.input_grad, i))

    def _stale(self) -> None:
        """A new forward: a backward of this module still open did not complete."""
        keep: deque[Call] = deque()
        for call in self.pending:
            if call.state == 1:
                self._abandon(call)
            elif call.state == 0:
                keep.append(call)
        self.pending = keep

    def _remember(self, call: Call) -> None:
        pending = self.pending
        while pending and pending[0].state >= 2:
            pending.popleft()
        if len(pending) >= MAX_PENDING:
            old = pending.popleft()
            self._abandon(old)
        pending.append(call)

    def unfinished(self, call: Call) -> None:
        if call.params and call.remaining < self.trainable:
            # some parameters got no gradient in this backward (a layer LayerDrop skipped, a
            # mixture-of-experts' expert no token chose, a part this call did not use): the
            # backward ended with the last gradient that came, and there is nothing to say
            call.finish_at(getattr(call, "t_last", call.t0))
            return
        warn_once(
            "unfinished:" + self.path,
            f"instrument(): the backward of {self.path!r} ended without the gradients of all "
            "its inputs or parameters (an input it does not use, or a pruned graph); its "
            "region ends with the backward pass",
        )
        call.finish()

    def _abandon(self, call: Call) -> None:
        if call.state == 1:
            warn_once(
                "incomplete:" + self.path,
                f"instrument(): the backward of {self.path!r} did not complete (some of "
                "its inputs or parameters got no gradient); its region is closed late",
            )
            call.finish()
        call.dead = True
        call.drop_hooks()

    def _hook_params(self) -> None:
        """Post-accumulate hooks on the trainable parameters (re-made when parameters are
        frozen or unfrozen: a hook cannot go on a tensor that needs no gradient)."""
        first = self.first
        if first is not None and first[0]._parameters.get(first[1]) is not (
            self.params[0] if self.params else None
        ):
            # another module's parameters now (FSDP2 puts the unsharded ones in for the
            # forward; hooks on the sharded ones never run): hook the ones in use
            self.params = [p for p in self.module.parameters()]
            self.hooked = ()
        hooked = self.hooked
        if len(hooked) == len(self.params):  # unchanged (the common case): no tuple made
            for p, on in zip(self.params, hooked, strict=True):
                if p.requires_grad is not on:
                    break
            else:
                return
        want = tuple(p.requires_grad for p in self.params)
        self.trainable = sum(want)
        for h in self.param_hooks:
            h.remove()
        self.param_hooks = [
            p.register_post_accumulate_grad_hook(self._accumulated)
            if p.grad_fn is None
            # a view standing in for a parameter (FSDP1 with use_orig_params): its gradient
            else p.register_hook(functools.partial(self._view_grad, p))
            for p, on in zip(self.params, want, strict=True)
            if on
        ]
        self.hooked = want

    def _view_grad(self, p: Any, _grad: Any) -> None:
        self._accumulated(p)

    def _accumulated(self, p: Any) -> None:
        if not p.requires_grad:
            return
        now = regions._perf()
        for call in self.pending:
            if call.state == 1 and call.params:
                call.t_last = now
                call.param_grad()

    def rewrap(self) -> None:
        """The module's forward is no longer this probe's timed forward: time the one it has
        (unless it calls this probe's through ``__wrapped__``, a wrapper on top)."""
        fwd = self.fwd
        f = self.module.__dict__.get("forward")
        for _ in range(8):
            if f is fwd:
                return
            f = getattr(f, "__wrapped__", None)
        fwd.remove()  # a pass-through, wherever it still is
        self.fwd = TimedForward(self, self.module)

    def remove(self) -> None:
        self.fwd.remove()
        for h in self.param_hooks:
            h.remove()
        self.param_hooks, self.hooked = [], ()
        for call in self.pending:
            call.dead = True
            call.drop_hooks()
            if call.state == 1:
                call.finish()
        self.pending.clear()


class InertProbe:
    """What a probe becomes in a pickle or deep copy of an object holding it (a callback
    holding the handle): nothing, not a copy of the model it times."""

    inst = None


def inert_probe() -> InertProbe:
    return InertProbe()
