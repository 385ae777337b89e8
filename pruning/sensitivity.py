"""Per-group sensitivity without retraining: prune one group at a time, measure, repeat.

:func:`sensitivity` prunes each dependency group alone at each ratio and measures the
model on held-out batches without retraining (Li et al. 2017, Fig. 2), never copying or
cutting the model. Without retraining, removing a group's channels changes the network
only where they are read: at the group's consumers (the convs and linears that take the
channels as inputs, on every branch of a residual stream). So the scan runs the unpruned
model with each consumer's forward swapped for a copy of that one layer with its inputs
cut as ``prune_filters`` cuts them, and reruns only the layers from the group's first
consumer on: the forward is split with ``torch.fx``, the activations before each cut are
computed once (one pass, advanced group by group in forward order), and the ratios of a
group run stacked in one batch. Channels are chosen by
:func:`pruning.structured.plan_removal`, as ``prune_filters`` chooses them. A model fx
cannot split runs whole (still no copies); a group whose removal changes what the kept
channels compute (``exact=False``: channels normalised together) is measured by pruning a copy.

``pruning.sensitivity`` is the function: import the rest with ``from pruning.sensitivity import ...``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn
from torch.fx.node import map_arg

from pruning.criteria import Criterion, get_criterion
from pruning.graph import ChannelGraph, ChannelGroup, build_graph
from pruning.handlers import get_handler
from pruning.measure import _WEIGHTED
from pruning.structured import check_ratio, group_name, plan_removal, prune_filters

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
Metric = Callable[[Tensor, Any], float]
Progress = Callable[[int, int, str], None]
Batch = tuple[tuple, Any, int]  # (inputs, targets, rows)
_PROBE = 7  # rows of the probe batch: a value with this many rows is per-sample


@dataclass
class SensitivityTable:
    """The unpruned metric and cost, and one row per (group, ratio) with the keys ``group``
    (a name ``prune_filters`` accepts as a ratio key), ``ratio``, ``channels``, ``kept``
    (what ``prune_filters(model, x, {group: ratio})`` keeps), ``metric``, ``macs_removed``
    and ``params_removed`` (what the whole model loses, by ``pruning.count``'s rule)."""

    base_metric: float
    base_macs: int
    base_params: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_records(self) -> list[dict[str, Any]]:
        """The rows as new dicts (JSON-able)."""
        return [dict(r) for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-able; ``SensitivityTable(**d)`` reads it back."""
        return {
            "base_metric": self.base_metric,
            "base_macs": self.base_macs,
            "base_params": self.base_params,
            "rows": self.to_records(),
        }

    def curves(self) -> dict[str, list[tuple[float, float]]]:
        """``{group: [(ratio, metric), ...]}`` in row order."""
        out: dict[str, list[tuple[float, float]]] = {}
        for r in self.rows:
            out.setdefault(r["group"], []).append((r["ratio"], r["metric"]))
        return out


def top1(outputs: Tensor, targets: Tensor) -> float:
    """Fraction of rows whose largest output is the target (the default metric)."""
    return float((outputs.argmax(-1) == targets).double().mean())


def first_tensor(out: Any) -> Tensor:
    """The model's main output: ``out``, or the first item of a tuple/list/dict, recursively."""
    while isinstance(out, (tuple, list, dict)) and out:
        out = next(iter(out.values())) if isinstance(out, dict) else out[0]
    if not isinstance(out, Tensor):
        raise TypeError(f"the model's first output is a {type(out).__name__}, not a tensor; the metric needs one")
    return out


def evaluate(model: nn.Module, batches: Iterable, metric: Metric | None = None) -> float:
    """``metric`` (default :func:`top1`) of ``model`` in eval mode over ``(inputs, targets)``
    batches, averaged weighted by batch size (what each row of the scan equals)."""
    return _mean(model, _materialize(batches, model), metric or top1)


def _mean(model: nn.Module, data: list[Batch], metric: Metric) -> float:
    with _eval_mode(model), torch.inference_mode():
        return sum(_weighted(metric, model(*x), y, n) for x, y, n in data) / sum(n for _, _, n in data)


def _weighted(metric: Metric, out: Any, targets: Any, rows: int) -> float:
    value = metric(first_tensor(out), targets)
    try:
        return float(value) * rows
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"metric returned {type(value).__name__}; it must return one number per batch") from None


def _materialize(batches: Iterable, model: nn.Module) -> list[Batch]:
    """``[(inputs tuple, targets, rows)]`` on the model's device."""
    if isinstance(batches, (Tensor, str)) or not isinstance(batches, Iterable):
        raise TypeError(f"batches must be an iterable of (inputs, targets) pairs, got {type(batches).__name__}")
    device, data = _device(model), []
    for i, item in enumerate(batches):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(
                f"batches must yield (inputs, targets) pairs; item {i} is a {type(item).__name__}"
                + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
            )
        x, y = item
        x = tuple(t.to(device) if isinstance(t, Tensor) else t for t in (x if isinstance(x, tuple) else (x,)))
        y = y.to(device) if isinstance(y, Tensor) else y
        rows = len(y) if hasattr(y, "__len__") else x[0].shape[0] if isinstance(x[0], Tensor) and x[0].dim() else 1
        if rows == 0:
            raise ValueError(f"batch {i} is empty (0 targets); drop it from batches")
        data.append((x, y, rows))
    if not data:
        raise ValueError("batches is empty: pass (inputs, targets) pairs of held-out data, e.g. a DataLoader")
    return data


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode inside; each module's own mode restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in modes:
            m.training = False
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class _Leaves(torch.fx.Tracer):
    """Keeps every layer with a pruning handler as one call (whose forward can be swapped)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return get_handler(m) is not None or super().is_leaf_module(m, qualname)


class _Program:
    """The model's forward as fx nodes, runnable from any position on (``split``), or one
    node that calls the whole model where fx cannot trace it."""

    def __init__(self, model: nn.Module, n_inputs: int, split: bool = True):
        self.model, self.consts, self.split, graph = model, {}, split, None
        if split:
            before = {id(m): set(vars(m)) for m in model.modules()}
            try:
                graph = _Leaves().trace(model)
            except Exception:  # any tracing failure: run the model whole
                self.split = False
            finally:  # fx stores tensor constants on the traced module: keep them here instead
                for m in model.modules():
                    for key in set(vars(m)) - before.get(id(m), set()):
                        self.consts[key] = vars(m).pop(key)
        if graph is None:
            graph = torch.fx.Graph()
            graph.output(graph.call_module("", tuple(graph.placeholder(f"x{i}") for i in range(n_inputs))))
        self.nodes = list(graph.nodes)
        index = {n: i for i, n in enumerate(self.nodes)}
        self.last = [max((index[u] for u in n.users), default=i) for i, n in enumerate(self.nodes)]
        self.mods = {n.target: model.get_submodule(n.target) for n in self.nodes if n.op == "call_module"}
        self.frees: list[list[torch.fx.Node]] = [[] for _ in self.nodes]
        self.first_call: dict[int, int] = {}  # id(module) -> index of its first call
        for i, n in enumerate(self.nodes):
            self.frees[self.last[i]].append(n)
            if n.op == "call_module":
                self.first_call.setdefault(id(self.mods[n.target]), i)
        self.start = next(i for i, n in enumerate(self.nodes) if n.op != "placeholder")
        self.per_sample, self.valid, self.stackable = set(self.nodes[: self.start]), [True] * len(self.nodes), False

    def inputs(self, x: tuple) -> dict[torch.fx.Node, Any]:
        if len(x) > self.start or any(not n.args for n in self.nodes[len(x) : self.start]):
            raise ValueError(
                f"the batches give {len(x)} inputs; the model's forward takes "
                f"{', '.join(str(n.target) for n in self.nodes[: self.start])}"
            )
        return {n: x[i] if i < len(x) else n.args[0] for i, n in enumerate(self.nodes[: self.start])}

    def run(self, env: dict[torch.fx.Node, Any], start: int, stop: int | None = None) -> Any:
        """Run nodes ``start:stop`` on ``env`` (the values live at ``start``), in place: after
        it ``env`` holds the values live at ``stop``. Returns the output if it was reached."""
        get = env.__getitem__
        for i in range(start, len(self.nodes) if stop is None else stop):
            n = self.nodes[i]
            if n.op == "output":
                return map_arg(n.args[0], get)
            args, kwargs = map_arg(n.args, get), map_arg(n.kwargs, get)
            if n.op == "call_module":
                env[n] = self.mods[n.target](*args, **kwargs)
            elif n.op == "call_function":
                env[n] = n.target(*args, **kwargs)
            elif n.op == "call_method":
                env[n] = getattr(args[0], n.target)(*args[1:], **kwargs)
            elif n.op == "get_attr":
                owner, _, name = n.target.rpartition(".")
                env[n] = (
                    self.consts[n.target] if n.target in self.consts else getattr(self.model.get_submodule(owner), name)
                )
            else:
                raise RuntimeError(f"fx node {n.format_node()} cannot be run")
            for dead in self.frees[i]:
                env.pop(dead, None)
        return None

    def probe(self, x: tuple, rows: int) -> None:
        """On a small batch: check the nodes reproduce the model; learn which values are
        per-sample (copies stack on dim 0) and where the forward may be cut (not where a
        batch-dependent value that is not per-sample, e.g. a batch size, is live)."""
        x = tuple(
            t[:1].expand(_PROBE, *t.shape[1:]).contiguous()
            if isinstance(t, Tensor) and t.dim() and t.shape[0] == rows
            else t
            for t in x
        )
        env = self.inputs(x)
        each = {n for n, v in env.items() if isinstance(v, Tensor) and v.dim() and v.shape[0] == _PROBE}
        depends, out = set(each), None
        for i in range(self.start, len(self.nodes)):
            n = self.nodes[i]
            out = self.run(env, i, i + 1)
            if any(a in depends for a in n.all_input_nodes):
                depends.add(n)
                if isinstance(v := env.get(n), Tensor) and v.dim() and v.shape[0] == _PROBE:
                    each.add(n)
        got, want = first_tensor(out), first_tensor(self.model(*x))
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
            raise RuntimeError("the fx nodes do not reproduce the model's forward")
        self.stackable = bool(got.dim() and got.shape[0] == _PROBE and each & set(self.nodes[: self.start]))
        self.per_sample = each
        for i, n in enumerate(self.nodes):
            if n in depends and n not in each:
                self.valid[i + 1 : self.last[i] + 1] = [False] * (self.last[i] - i)

    def cut(self, modules: Sequence[nn.Module]) -> int | None:
        """The latest position before every call of ``modules`` where the forward can be cut;
        None where one of them is never called as a node."""
        calls = [self.first_call.get(id(m)) for m in modules] if self.split else [self.start]
        if not modules or None in calls:
            return None
        k = min(calls)
        while k > self.start and not self.valid[k]:
            k -= 1
        return k

    def copies(self, env: dict[torch.fx.Node, Any], r: int) -> dict[torch.fx.Node, Any]:
        """Fresh per-sample values for ``r`` stacked copies (objects shared stay shared)."""
        made: dict[int, Tensor] = {}
        out = dict(env)
        for n, v in env.items():
            if n in self.per_sample and isinstance(v, Tensor):
                if id(v) not in made:
                    made[id(v)] = v.repeat(r, *([1] * (v.dim() - 1))) if r > 1 else v.clone()
                out[n] = made[id(v)]
        return out


def _cut_inputs(module: nn.Module, keeps: list[Tensor]) -> Callable:
    """A forward for ``module`` that runs each stacked copy of its input on the positions
    ``keeps[copy]`` only, through a copy of the layer cut as ``prune_filters`` cuts it: the
    pruned model's arithmetic at the pruned layer's cost (exactly removal, for a consumer)."""
    handler, parts = get_handler(module), []
    with torch.inference_mode(False), torch.no_grad():
        for keep in keeps:
            part = copy.copy(module)  # shares nothing it cuts: new parameter and buffer dicts
            part._parameters, part._buffers = dict(module._parameters), dict(module._buffers)
            handler.prune_in(part, keep)
            parts.append(part)

    def forward(input: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        axis = handler.channel_axis(module, input) % input.dim()
        xs = input.chunk(len(parts)) if len(parts) > 1 else (input,)
        return torch.cat([p.forward(x.index_select(axis, k), *args, **kwargs) for p, x, k in zip(parts, xs, keeps)])

    return forward


@contextmanager
def _forwards(swaps: list[tuple[nn.Module, Callable]]) -> Iterator[None]:
    """``module.forward`` replaced inside (an instance attribute, as the trace does), restored after."""
    saved = [(m, m.__dict__.get("forward")) for m, _ in swaps]
    try:
        for m, f in swaps:
            m.__dict__["forward"] = f
        yield
    finally:
        for m, old in saved:
            if old is None:
                m.__dict__.pop("forward", None)
            else:
                m.__dict__["forward"] = old


class _Costs:
    """Exact conv/linear weights and MACs (``pruning.count``'s rule, one sample) a removal
    mask takes from the whole model, from every layer's shape and the positions it loses."""

    def __init__(self, model: nn.Module, graph: ChannelGraph, example_inputs: Any):
        layers = {id(m): m for m in model.modules() if isinstance(m, _WEIGHTED)}
        elems = dict.fromkeys(layers, 0)

        def hook(m: nn.Module, args: tuple, out: Any) -> None:
            elems[id(m)] += first_tensor(out).numel()

        handles = [m.register_forward_hook(hook) for m in layers.values()]
        x = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        try:
            with torch.inference_mode():
                model(*(t[:1] if isinstance(t, Tensor) and t.dim() else t for t in x))
        finally:
            for h in handles:
                h.remove()
        index = {(id(m.module), m.dim): i for i, m in enumerate(graph.trace.members) if m.kind == "module"}
        rows = []
        for key, m in layers.items():
            w, conv = m.weight, not isinstance(m, nn.Linear)
            dw = conv and m.groups > 1 and m.groups == m.in_channels
            rows.append(
                [
                    w.shape[0],
                    w.shape[1],
                    w[0, 0].numel() if conv else 1,
                    elems[key] // w.shape[0],
                    m.groups if conv and not dw else 1,
                    int(dw),
                    index.get((key, 0), -1),
                    index.get((key, 1), -1),
                ]
            )
        self.graph = graph
        self.out, self.s1, self.k, self.pos, self.div, self.dw, self.i0, self.i1 = (
            torch.tensor(rows, dtype=torch.long).reshape(-1, 8).unbind(1)
        )
        self.base_params = int((self.out * self.s1 * self.k).sum())
        self.base_macs = int((self.pos * self.out * self.s1 * self.k).sum())

    def __call__(self, removed: Tensor) -> tuple[int, int]:
        """``(macs_removed, params_removed)`` of a :meth:`ChannelGraph.removal_mask`."""
        cut = torch.cat([self.graph.removed_per_member(removed), torch.zeros(1, dtype=torch.long)])
        out = self.out - cut[self.i0]
        s1 = torch.where(self.dw.bool(), self.s1, self.s1 - cut[self.i1] // self.div)
        params = int((out * s1 * self.k).sum())
        return self.base_macs - int((self.pos * out * s1 * self.k).sum()), self.base_params - params


def _select(graph: ChannelGraph, groups: Sequence[str] | None) -> list[ChannelGroup]:
    prunable = [g for g in graph.groups if g.n_prunable > 0]
    if groups is None:
        return prunable
    groups = [groups] if isinstance(groups, str) else list(groups)
    if not groups:
        raise ValueError("groups=[] selects nothing; pass None to scan every prunable group")
    by_name, chosen = {n: g for g in graph.groups for n in g.names}, {}
    for name in groups:
        g = by_name.get(name)
        if g is None:
            names = [group_name(x) for x in prunable]
            raise ValueError(
                f"groups names {name!r}, which is not a layer with prunable output channels; groups: "
                + ", ".join(names[:40])
                + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
            )
        if g.n_prunable == 0:
            raise ValueError(
                f"group {name!r} cannot be pruned: {'; '.join(g.reasons) or 'all its channels are frozen'}"
            )
        chosen[g.index] = g
    return [chosen[i] for i in sorted(chosen)]


def sensitivity(
    model: nn.Module,
    example_inputs: Any,
    batches: Iterable,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    criterion: str | Criterion = "l1",
    groups: Sequence[str] | None = None,
    metric: Metric | None = None,
    progress: Progress | None = None,
    *,
    ignore: Sequence[str] = (),
    round_to: int = 1,
    max_rows: int = 256,
) -> SensitivityTable:
    """Prune each group alone at each ratio and measure ``metric`` without retraining.

    batches: ``(inputs, targets)`` pairs (inputs a tensor or tuple), iterated once and held
        in memory, with the activations of one layer for all of them.
    ratios: fractions of each group's prunable channels to remove, each in [0, 1).
    criterion, ignore, round_to: as in ``prune_filters``, which would keep the same channels.
    groups: names of the groups to scan (any layer of a group); default every prunable group.
    metric: ``metric(outputs, targets) -> float`` per batch, averaged weighted by batch size;
        default :func:`top1` (a fraction). ``outputs``: the model's first output tensor.
    progress: ``progress(i, n, group)`` is called as group ``i`` of ``n`` (from 1) starts.
    max_rows: at most this many rows (images x stacked ratio copies) per forward pass.
    The model is left as it was: structure, tensors and train/eval modes.
    """
    if isinstance(ratios, (str, bytes)) or not isinstance(ratios, Iterable):
        raise TypeError(f"ratios must be a sequence of numbers in [0, 1), got {ratios!r}")
    ratios = [check_ratio(f"ratios[{i}]", r) for i, r in enumerate(ratios)]
    if not ratios:
        raise ValueError("ratios is empty: give at least one ratio in [0, 1)")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable as progress(i, n, group), got {progress!r}")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows={max_rows!r}: must be a positive integer")
    data, metric = _materialize(batches, model), metric or top1
    ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    crit, scores = get_criterion(criterion), {}

    def cached(g: ChannelGroup) -> Tensor | None:  # scored once for all ratios, after one prepare
        return scores[g.index] if g.index in scores else scores.setdefault(g.index, crit(g))

    with _eval_mode(model):
        graph = build_graph(model, example_inputs, ignore)
        chosen = _select(graph, groups)
        if getattr(crit, "prepare", None) is not None and any(r > 0 for r in ratios):
            crit.prepare(model, chosen)
        plans = {
            g.index: [
                plan_removal(graph, {g.index: r}, cached, round_to) if r > 0 else graph.removal_mask() for r in ratios
            ]
            for g in chosen
        }
        costs = _Costs(model, graph, example_inputs)

        def naive(g: ChannelGroup, ratio: float) -> float:  # copy, prune, evaluate
            pruned = copy.deepcopy(model)
            prune_filters(pruned, example_inputs, {group_name(g): ratio}, crit, ignore, round_to)
            return _mean(pruned, data, metric)

        metrics, base = _scan(model, graph, chosen, ratios, plans, data, metric, progress, max_rows, naive)
    rows = []
    for g in chosen:
        for r, removed in zip(ratios, plans[g.index]):
            macs, params = costs(removed)
            rows.append(
                {
                    "group": group_name(g),
                    "ratio": r,
                    "channels": g.n_channels,
                    "kept": g.n_channels - int(removed[graph.comps(g)].sum()),
                    "metric": metrics.get((g.index, _key(removed)), base),
                    "macs_removed": macs,
                    "params_removed": params,
                }
            )
    return SensitivityTable(base, costs.base_macs, costs.base_params, rows)


def _key(removed: Tensor) -> tuple[int, ...]:
    return tuple(removed.nonzero().flatten().tolist())


def _program(model: nn.Module, x: tuple, rows: int) -> _Program:
    """A split program if fx reproduces the model, else the whole model (stacking ratio
    copies if the model runs on other batch sizes)."""
    program = _Program(model, len(x))
    try:
        program.probe(x, rows)
    except Exception:  # the nodes do not run like the model: run it whole
        program = _Program(model, len(x), split=False)
        try:
            program.probe(x, rows)
        except Exception:  # not even on other batch sizes: one ratio at a time
            program.stackable = False
    return program


def _scan(
    model: nn.Module,
    graph: ChannelGraph,
    chosen: list[ChannelGroup],
    ratios: list[float],
    plans: dict[int, list[Tensor]],
    data: list[Batch],
    metric: Metric,
    progress: Progress | None,
    max_rows: int,
    naive: Callable[[ChannelGroup, float], float],
) -> tuple[dict[tuple, float], float]:
    """``{(group index, removal key): metric}`` for every removal that cuts something, and
    the unpruned metric."""
    members, total = graph.trace.members, sum(n for _, _, n in data)
    with torch.inference_mode():
        program = _program(model, data[0][0], data[0][2])
    consumers, cuts = {}, {}
    for g in chosen:  # consumers: the layers that read the group's channels (inputs, dim 1)
        touched = graph.removed_per_member(graph.removal_mask().index_fill(0, graph.comps(g), True)) > 0
        consumers[g.index] = [i for i, m in enumerate(members) if m.kind == "module" and m.dim == 1 and touched[i]]
        cuts[g.index] = program.cut([members[i].module for i in consumers[g.index]]) if g.exact else None
    order = sorted(chosen, key=lambda g: (len(program.nodes) if cuts[g.index] is None else cuts[g.index], g.index))
    metrics: dict[tuple, float] = {}
    with torch.inference_mode():
        envs = [program.inputs(tuple(t.clone() if isinstance(t, Tensor) else t for t in x)) for x, _, _ in data]
    at = program.start
    for step, g in enumerate(order, 1):
        if progress is not None:
            progress(step, len(order), group_name(g))
        todo: dict[tuple, tuple[float, Tensor]] = {}
        for r, removed in zip(ratios, plans[g.index]):
            if bool(removed[graph.comps(g)].any()):
                todo.setdefault(_key(removed), (r, removed))
        cut, keys = cuts[g.index], list(todo)
        if cut is None:
            metrics.update({(g.index, k): naive(g, r) for k, (r, _) in todo.items()})
            continue
        per = max(1, max_rows // max(n for _, _, n in data)) if program.stackable else 1
        keeps = {
            i: [(~graph.gone(i, todo[k][1])).nonzero().flatten().to(_device(model)) for k in keys]
            for i in consumers[g.index]
        }
        chunks = [
            (
                j,
                len(keys[j : j + per]),
                [(members[i].module, _cut_inputs(members[i].module, keep[j : j + per])) for i, keep in keeps.items()],
            )
            for j in range(0, len(keys), per)
        ]
        sums = [0.0] * len(keys)
        with torch.inference_mode():
            for env in envs:  # advance the cached activations to this group's cut
                program.run(env, at, cut)
            at = cut
            for env, (_, y, n) in zip(envs, data):
                for j, r, swaps in chunks:
                    with _forwards(swaps):
                        out = first_tensor(program.run(program.copies(env, r), cut))
                    for c in range(r):
                        sums[j + c] += _weighted(metric, out[c * n : (c + 1) * n] if r > 1 else out, y, n)
        metrics.update({(g.index, k): s / total for k, s in zip(keys, sums)})
    with torch.inference_mode():
        base = sum(_weighted(metric, program.run(env, at), y, n) for env, (_, y, n) in zip(envs, data))
    return metrics, base / total
