"""Trace a model's channel flow with one forward pass.

Every tensor the forward computes gets a *label* tensor: for each position, the
global id of the channel it belongs to (``-1``: a position no channel owns, e.g.
zero padding). Labels are stored compressed: a dim along which the ids do not vary
has size 1. Producers (conv/linear outputs) create fresh ids; every other op maps
labels the way it maps values, so shape ops (view, flatten, permute, cat, chunk,
getitem, pad, channel shuffle) need no special cases: the same op runs on the labels.

The trace collects three things that :mod:`pruning.graph` turns into groups:

* members: (module or parameter, dim, position -> id): what to cut;
* unions: ids that must be removed together (residual additions, SE gates, groups);
* frozen ids: channels that cannot be removed (model outputs, ignored modules,
  zero-padded shortcuts, fixed-size slices), each with the reason.

Running the forward (rather than symbolic tracing) gives exact shapes and follows
control flow, so one tracer covers every model that runs; handled layers compute
only their output shapes (:mod:`pruning.graph.dryrun`), which keeps the trace cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from pruning.graph import dryrun, oprules
from pruning.graph.handlers import ChannelwiseHandler, FilterHandler, get_handler
from pruning.graph.oprules import tensors_in


class ChannelMappingError(RuntimeError):
    """An op or module whose channel mapping the engine does not know."""


@dataclass
class Member:
    """Something to cut: a module along its output (dim 0) or input (dim 1) channels,
    or a parameter/buffer along one of its dims. ``ids[p]`` is the channel of position p."""

    name: str
    kind: str  # "module" | "param"
    dim: int
    role: str  # "out" | "in" | "dw" | "norm" | "scale"
    ids: Tensor
    module: nn.Module
    handler: Any = None
    param: str | None = None
    axis: int = 1  # activation dim of the channels (for activation statistics)


@dataclass
class ChannelTrace:
    """Raw result of :func:`trace_channels` (see :mod:`pruning.graph` for groups)."""

    n_ids: int = 0
    spaces: list[tuple[int, int, str]] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    unions: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    frozen: list[tuple[Tensor, str]] = field(default_factory=list)
    inexact: list[Tensor] = field(default_factory=list)
    shapes_only: bool = False  # traced on zeros: the forward reads no activation values


def _as_tuple(example_inputs: Any) -> tuple:
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def _ignored(name: str, ignore: tuple[str, ...]) -> bool:
    return any(name == i or name.startswith(i + ".") for i in ignore)


def modules_like(model: nn.Module, name: str) -> list[str]:
    """``name`` and every other module of ``model`` of its type (outermost ones only): what an
    ``ignore`` must list to leave all copies of a block alone."""
    kind = type(model.get_submodule(name))
    out: list[str] = []
    for n, m in model.named_modules():
        if type(m) is kind and n and not _ignored(n, tuple(out)):
            out.append(n)
    return out if name in out else [name]


class _Mode(TorchFunctionMode):
    def __init__(self, tracer: "_Tracer"):
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        t = self.tracer
        if t.shapes_only and not t.busy and not t.leaf_depth and dryrun.reads_values(func, args):
            raise dryrun.NeedsValues(getattr(func, "__name__", str(func)))
        out = func(*args, **kwargs)
        if t.busy or t.leaf_depth:
            return out
        t.busy = True
        try:
            t.on_op(func, args, kwargs, out)
        finally:
            t.busy = False
        return out


class _Tracer:
    def __init__(self, model: nn.Module, ignore: tuple[str, ...], approximate: tuple[str, ...] = ()):
        self.model = model
        self.ignore = ignore
        self.approximate = approximate
        self.result = ChannelTrace()
        self.labels: dict[int, Tensor | None] = {}
        self.alive: list[Tensor] = []
        self.busy = False
        self.shapes_only = False
        self.leaf_depth = 0
        self.stack: list[tuple[str, nn.Module]] = []
        self.params: dict[int, tuple[str, str, nn.Module]] = {}
        self.seen: dict[tuple[str, int, int], Member] = {}
        self.out_ids: dict[str, Tensor] = {}
        self.reached: set[int] = set()  # ids of the modules run (or whose parameters were read)

    def add_params(self, mname: str, module: nn.Module) -> None:
        for store in (module._parameters, module._buffers):
            for pname, p in store.items():
                if p is not None and id(p) not in self.params:
                    self.params[id(p)] = (mname, pname, module)

    # ---- labels ---------------------------------------------------------------
    def label(self, t: Tensor) -> Tensor | None:
        return self.labels.get(id(t))

    def set_label(self, t: Any, lab: Tensor | None, compressed: bool = False) -> None:
        """Label ``t``; ``compressed``: ``lab`` is known compressed with some id >= 0."""
        if not isinstance(t, Tensor):
            return
        if lab is not None and not compressed:
            lab = oprules.compress(lab)
            if bool((lab < 0).all()):
                lab = None
        if lab is None:
            self.labels.pop(id(t), None)
            return
        self.labels[id(t)] = lab
        self.alive.append(t)

    def fresh(self, n: int, owner: str) -> Tensor:
        r = self.result
        ids = torch.arange(r.n_ids, r.n_ids + n)
        r.spaces.append((r.n_ids, n, owner))
        r.n_ids += n
        return ids

    def union(self, a: Tensor, b: Tensor, why: str) -> None:
        a, b = a.reshape(-1), b.reshape(-1)
        if int(torch.minimum(a.min(), b.min())) >= 0:
            self.result.unions.append((a, b))
            return
        both = (a >= 0) & (b >= 0)
        one = (a >= 0) ^ (b >= 0)
        if bool(one.any()):
            self.freeze(torch.where(a >= 0, a, b)[one], f"{why} meets zero padding or a fixed tensor")
        if bool(both.any()):
            self.result.unions.append((a[both], b[both]))

    def freeze(self, ids: Tensor | None, why: str) -> None:
        if ids is None:
            return
        ids = ids.reshape(-1)
        ids = ids[ids >= 0]
        if ids.numel():
            self.result.frozen.append((ids.unique(), why))

    def where(self) -> str:
        if not self.stack:
            return "the model's forward"
        name, module = self.stack[-1]
        return (
            f"module {name!r} ({type(module).__name__})" if name else f"the model's forward ({type(module).__name__})"
        )

    def error(self, message: str) -> ChannelMappingError:
        """An error for the op being traced, with the ``ignore`` that leaves its channels alone."""
        where = self.stack[-1][0] if self.stack and self.stack[-1][0] else None
        if where is not None and "ignore=" not in message:
            message += f". Pass ignore={modules_like(self.model, where)} to leave its channels alone"
        return ChannelMappingError(message)

    def in_ignored(self) -> bool:
        return any(_ignored(n, self.ignore) for n, _ in self.stack if n)

    # ---- members --------------------------------------------------------------
    def member(
        self,
        name: str,
        kind: str,
        dim: int,
        role: str,
        ids: Tensor,
        module: nn.Module,
        handler: Any = None,
        param: str | None = None,
        axis: int = 1,
    ) -> Tensor:
        """Add a member, or unite with the same member seen before (a module called twice)."""
        key = (name if param is None else f"{name}.{param}", dim, 0 if kind == "module" else 1)
        old = self.seen.get(key)
        if old is not None:
            if old.ids.shape == ids.shape:
                self.union(old.ids, ids, f"{key[0]} is used twice")
                return old.ids
            raise ChannelMappingError(f"{key[0]} is used twice with different channel counts")
        m = Member(
            name if param is None else (f"{name}.{param}" if name else param),
            kind,
            dim,
            role,
            ids.reshape(-1),
            module,
            handler,
            param,
            axis,
        )
        self.seen[key] = m
        self.result.members.append(m)
        if handler is not None and (not handler.exact or (role == "in" and not getattr(handler, "exact_in", True))):
            self.result.inexact.append(m.ids)
        if dim == 0 and _ignored(name, self.ignore):
            self.freeze(m.ids, f"{name!r} is in ignore")
        return m.ids

    def vector(self, lab: Tensor | None, axis: int, size: int, what: str) -> Tensor | None:
        """The ids along ``axis`` (length ``size``) of a label; None if untracked. Where the ids
        also vary along other dims (a layer reading the bins of four box sides as one channel),
        the ids at one position of ``axis`` are the same channel: they are united."""
        if lab is None:
            return None
        shape = lab.shape
        axis = axis % len(shape)
        if shape[axis] not in (1, size):
            raise ChannelMappingError(f"{what}: its input has {shape[axis]} channels along dim {axis}, not {size}")
        if any(shape[d] != 1 for d in range(len(shape)) if d != axis):
            rows = lab.movedim(axis, -1).reshape(-1, shape[axis])
            self.union(rows[:1].expand(len(rows) - 1, -1), rows[1:], f"{what} reading several ids as one channel")
            lab = rows.max(0).values
        v = lab.reshape(-1)
        return v.expand(size) if v.numel() == 1 and size != 1 else v

    def vector_or_freeze(self, name: str, lab: Tensor | None, axis: int, size: int, what: str) -> Tensor | None:
        """:meth:`vector`; a layout it cannot map in an ignored module freezes the input instead."""
        try:
            return self.vector(lab, axis, size, what)
        except ChannelMappingError as err:
            if _ignored(name, self.ignore) or self.in_ignored():
                self.freeze(lab, f"{what} is in ignore")
                return None
            raise ChannelMappingError(
                f"{err}. Pass ignore={modules_like(self.model, name)} to leave its channels alone"
            ) from None

    def slides_over_channels(
        self, name: str, module: nn.Module, handler: Any, lab: Tensor, axis: int, out: Tensor
    ) -> str | None:
        """A conv with one input and one output channel that slides along the channels (ECA's
        ``Conv1d`` over the pooled channels): cutting a channel changes its neighbours' outputs.
        With ``approximate`` holding "eca" every channel keeps its position, marked inexact
        (returns "cut"); else the channels are frozen, the reason naming the option ("frozen")."""
        if not isinstance(handler, FilterHandler):
            return None
        axis %= lab.dim()
        spatial = [d for d in range(lab.dim()) if lab.shape[d] > 1]
        if (
            lab.shape[axis] != 1
            or not spatial
            or any(d <= axis for d in spatial)
            or handler.in_channels(module) != 1
            or handler.out_channels(module) != 1
            or out.dim() != lab.dim()
            or any(out.shape[d] != lab.shape[d] for d in spatial)
        ):
            return None
        if "eca" not in self.approximate:
            self.freeze(
                lab,
                f"module {name!r} ({type(module).__name__}) slides along the channels (ECA); approximate=('eca',) cuts them",
            )
            return "frozen"
        self.result.inexact.append(lab.reshape(-1))
        self.set_label(out, lab, compressed=True)
        return "cut"

    # ---- modules ----------------------------------------------------------------
    def on_module(self, name: str, module: nn.Module, handler: Any, args: tuple, kwargs: dict, out: Any) -> None:
        tensors = tensors_in(args) or tensors_in(kwargs)
        if not tensors or not isinstance(out, Tensor):
            raise ChannelMappingError(f"module {name!r} ({type(module).__name__}): expected one tensor in and out")
        x = tensors[0]
        lab = self.label(x)
        axis = handler.channel_axis(module, x)
        what = f"module {name!r} ({type(module).__name__})"
        slide = self.slides_over_channels(name, module, handler, lab, axis, out) if lab is not None else None
        if slide == "cut":
            return
        if slide == "frozen":
            lab = None
        if isinstance(handler, ChannelwiseHandler):
            c, g = handler.channels(module), handler.groups(module)
            ids = self.vector_or_freeze(name, lab, axis, c, what)
            if ids is not None and g > 1:
                grid = ids.view(g, c // g)
                self.union(grid[:1].expand(g - 1, -1), grid[1:], f"groups of {name!r}")
            if ids is not None and c > 1:
                self.member(name, "module", 0, "norm", ids, module, handler, axis=axis)
            self.set_label(out, lab, compressed=True)
            return
        cin, cout, g = handler.in_channels(module), handler.out_channels(module), handler.groups(module)
        in_ids = self.vector_or_freeze(name, lab, axis, cin, what)
        out_axis = axis if axis >= 0 else out.dim() + axis
        if g > 1 and g == cin:  # depthwise: output channel i*m+k is input channel i
            if in_ids is None:
                out_ids = None
            else:
                out_ids = self.member(
                    name, "module", 0, "dw", in_ids.repeat_interleave(cout // cin), module, handler, axis=out_axis
                )
        else:
            if in_ids is not None:
                if g > 1:
                    grid = in_ids.view(g, cin // g)
                    self.union(grid[:1].expand(g - 1, -1), grid[1:], f"groups of {name!r}")
                self.member(name, "module", 1, "in", in_ids, module, handler, axis=axis)
            out_ids = self.out_ids.get(name)
            if out_ids is None:
                out_ids = self.fresh(cout // g, name)
                if g > 1:
                    out_ids = out_ids.repeat(g)
                self.out_ids[name] = out_ids
                self.member(name, "module", 0, "out", out_ids, module, handler, axis=out_axis)
        if out_ids is None:
            self.set_label(out, None)
            return
        shape = [1] * out.dim()
        shape[out_axis] = cout
        self.set_label(out, out_ids.view(shape), compressed=bool((out_ids >= 0).any()))

    # ---- functional ops ------------------------------------------------------------
    def on_op(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        outs = tensors_in(out)
        if not outs and getattr(func, "__name__", "") != "__setitem__":  # x[i] = v returns None
            return
        ins = tensors_in(args)
        if kwargs:
            ins += tensors_in(kwargs)
        labels, params = self.labels, self.params
        labs = [labels.get(id(t)) for t in ins]
        foreign = [params[id(t)] for t in ins if id(t) in params and isinstance(t, nn.Parameter)]
        for _, _, module in foreign:
            self.reached.add(id(module))
        if not foreign and all(lab is None for lab in labs):
            for t in outs:
                if id(t) in labels:
                    del labels[id(t)]
            return
        name = oprules.op_name(func)
        rule = oprules.RULES.get(name)
        if foreign and name not in oprules.NO_FIXED_PARAMS and all(get_handler(f[2]) is None for f in foreign):
            foreign = []  # parameters of modules without a handler are never cut: fixed tensors here
        if rule is not None and (not foreign or name in oprules.PARAM_OK):
            try:
                if rule(self, func, name, args, kwargs, ins, labs, out) is not NotImplemented:
                    return
            except ChannelMappingError:
                if not self.in_ignored():
                    raise
            rule = None
        if rule is None or foreign:
            if self.in_ignored():
                for t, lab in zip(ins, labs):
                    self.freeze(lab, f"op {name!r} inside an ignored module")
                for t in outs:
                    self.set_label(t, None)
                return
            if foreign and name not in oprules.PARAM_OK:
                mname, pname, module = foreign[0]
                if get_handler(module) is not None:
                    caller = self.stack[-1][0] if self.stack else ""
                    raise ChannelMappingError(
                        f"parameter {pname!r} of {type(module).__name__} {mname!r} is used outside that module, by "
                        f"op {name!r} in {self.where()}; the engine cannot follow it there. Pass "
                        f"ignore=[{caller!r}] to leave that code's channels alone, or register a handler for "
                        f"{type(self.stack[-1][1]).__name__ if self.stack else 'it'} with pruning.register_handler"
                    )
                raise ChannelMappingError(
                    f"module {mname!r} ({type(module).__name__}) is not supported: its parameters are used by "
                    f"op {name!r} and no pruning handler is registered for {type(module).__name__}. Register one "
                    f"with pruning.register_handler({type(module).__name__}, handler) or pass "
                    f"ignore={modules_like(self.model, mname)}"
                )
            where = self.stack[-1][0] if self.stack and self.stack[-1][0] else None
            raise ChannelMappingError(
                f"cannot map channels through op {oprules.qualname(func)!r} in {self.where()}. "
                + (
                    f"Pass ignore={modules_like(self.model, where)} to leave its channels alone, or register"
                    if where
                    else "Register"
                )
                + " a handler for the module type with pruning.register_handler(...)"
                + " or an op rule with pruning.register_op_rule(...)"
            )


APPROXIMATIONS = ("eca",)
"""Approximate cuts :func:`trace_channels` can be asked for: ``"eca"``, a Conv1d that slides
along the channels (ECA attention) keeps them in place; a cut changes the neighbours' gates."""


def check_approximate(approximate: Any) -> tuple[str, ...]:
    """``approximate`` as a tuple of known names, or a ValueError listing them."""
    approximate = (approximate,) if isinstance(approximate, str) else tuple(approximate or ())
    unknown = [a for a in approximate if a not in APPROXIMATIONS]
    if unknown:
        raise ValueError(f"approximate={unknown}: unknown; choose from {', '.join(APPROXIMATIONS)}")
    return approximate


def trace_channels(
    model: nn.Module,
    example_inputs: Any,
    ignore: tuple[str, ...] | list[str] = (),
    values: bool = False,
    approximate: tuple[str, ...] = (),
) -> ChannelTrace:
    """Run ``model`` once on ``example_inputs`` and record how channels flow.

    The model runs in the mode it is in (a detector in eval mode runs its inference
    path); only the handled layers are switched to eval mode (so BatchNorm statistics
    are not touched), and every mode is restored afterwards, also on error. Layers with
    weights that this forward never ran (train-only branches such as auxiliary heads)
    are traced by a second forward in training mode, merged into the same trace; if
    that forward fails (a detector wants targets), the unreached layers are an error
    that names them (see :func:`_unreached_error`). Handled layers compute only their
    output shapes (zeros come out) unless ``values`` is True; a model that reads
    activation values (data-dependent control flow, ``.item()``, tensor indices) is
    traced again with real values automatically. ``approximate`` names the approximate cuts
    allowed (:data:`APPROXIMATIONS`); their channels are marked inexact.
    """
    if not values:
        try:
            return _trace(model, example_inputs, tuple(ignore), True, approximate)
        except dryrun.NeedsValues:
            pass
    return _trace(model, example_inputs, tuple(ignore), False, approximate)


def _unreached_error(
    names: list[str], mods: dict[str, nn.Module], training: bool, failure: BaseException
) -> ChannelMappingError:
    shown = ", ".join(f"{n!r} ({type(mods[n]).__name__})" for n in names[:8])
    more = f" and {len(names) - 8} more" if len(names) > 8 else ""
    parents = sorted({n.rpartition(".")[0] or n for n in names})
    parents = [p for p in parents if not any(p.startswith(q + ".") for q in parents)]
    return ChannelMappingError(
        f"the model's forward (in {'training' if training else 'eval'} mode) never ran {shown}{more}, layers "
        f"with weights (a train-only branch?), and a second forward in training mode to trace them failed "
        f"({type(failure).__name__}: {str(failure)[:200]}). What they read is unknown, so pruning could break "
        f"them. Give example inputs that run them (the tuple of forward's arguments, targets included), or pass "
        f"ignore={parents!r} to leave them uncut: they are then not pruned, but no longer fit their inputs if "
        f"those lose channels"
    )


def _trace(
    model: nn.Module, example_inputs: Any, ignore: tuple[str, ...], shapes_only: bool, approximate: tuple[str, ...]
) -> ChannelTrace:
    tracer = _Tracer(model, ignore, check_approximate(approximate))
    tracer.shapes_only = tracer.result.shapes_only = shapes_only
    patched: list[tuple[nn.Module, Any]] = []
    handlers: dict[type, Any] = {}
    mods: dict[int, tuple[str, nn.Module, Any]] = {}
    modes: list[tuple[nn.Module, bool]] = []  # every module's mode, restored at the end
    disable: list[Any] = []

    def pre(module: nn.Module, args: tuple) -> None:
        info = mods.get(id(module))
        if info is None:
            return
        tracer.reached.add(id(module))
        if tracer.leaf_depth:  # inside a handled layer: nothing to record
            tracer.leaf_depth += 1
            return
        tracer.stack.append(info[:2])
        handler = info[2]
        if handler is not None and handler.leaf:
            tracer.leaf_depth = 1
            ctx = torch._C.DisableTorchFunction()  # the layer is one op: skip its internals
            ctx.__enter__()
            disable.append(ctx)

    def post(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        info = mods.get(id(module))
        if info is None:
            return
        if tracer.leaf_depth > 1:
            tracer.leaf_depth -= 1
            return
        tracer.stack.pop()
        if tracer.leaf_depth == 1:
            tracer.leaf_depth = 0
            try:  # still without torch-function dispatch: the tracer's own ops are not the model's
                tracer.on_module(info[0], module, info[2], args, kwargs, out)
            finally:
                disable.pop().__exit__(None, None, None)

    def forward() -> None:
        try:
            with torch.no_grad(), _Mode(tracer):
                out = model(*_as_tuple(example_inputs))
            tracer.busy = True
            for t in tensors_in(out):
                tracer.freeze(tracer.label(t), "model output")
        finally:
            while disable:
                disable.pop().__exit__(None, None, None)
            tracer.busy, tracer.leaf_depth = False, 0
            tracer.stack.clear()

    def unreached() -> list[str]:
        """Layers with weights the trace has not run (nor a handled layer around them)."""
        names, inside = [], ()
        for name, module, handler in mods.values():
            if id(module) in tracer.reached:
                if handler is not None and handler.leaf and name:
                    inside += (name + ".",)
                continue
            if name.startswith(inside) or _ignored(name, ignore):
                continue
            if handler is not None or any(p is not None for p in module._parameters.values()):
                names.append(name)
        return names

    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    handles = []
    try:
        for name, module in model.named_modules():
            kind = type(module)
            if kind not in handlers:
                handlers[kind] = get_handler(module)
            handler = handlers[kind]
            mods[id(module)] = (name, module, handler)
            tracer.add_params(name, module)
            modes.append((module, module.training))
            if handler is not None:
                module.__dict__["training"] = False
            if shapes_only and handler is not None and handler.leaf:
                patched.append((module, module.__dict__.get("forward")))
                module.__dict__["forward"] = dryrun.shapes_only(module, module.forward, tracer)
        handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post, with_kwargs=True)]
        forward()
        missed = unreached()
        if missed and any(not mode for m, mode in modes if mods[id(m)][2] is None):
            # train-only branches: run the model again in training mode into the same trace
            # (a layer seen twice keeps its ids). A forward that fails half-way cannot be
            # used: the outputs it did not return were never frozen.
            for m, _ in modes:
                if mods[id(m)][2] is None:
                    m.__dict__["training"] = True
            try:
                forward()
            except (dryrun.NeedsValues, ChannelMappingError):
                raise
            except Exception as e:
                raise _unreached_error(missed, {n: m for n, m, _ in mods.values()}, modes[0][1], e) from e
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.__dict__["training"] = mode
        dryrun.restore_forwards(patched)
    return tracer.result
