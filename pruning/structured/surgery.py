"""The cut itself: which channels to remove, cutting them from every member through the layer
handlers, and the check that the cut model still runs on the example inputs (a cut that fails
is undone and the error names the module and an ``ignore`` that avoids it)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from pruning.criteria import Criterion
from pruning.graph import ChannelMappingError, dryrun
from pruning.graph.groups import ChannelGraph, ChannelGroup
from pruning.graph.handlers import cut_tensor
from pruning.graph.trace import modules_like
from pruning.structured.record import PruningRecord, RecordEntry


def kept_channels(n: int, ratio: float, round_to: int = 1, frozen: int = 0) -> int:
    """How many of ``n`` prunable channels to keep at ``ratio`` (``frozen`` more are kept anyway).

    ``floor(n * (1 - ratio))`` (the rule of Li et al.'s reimplementations, computed
    without float round-off), at least one channel in all; with ``round_to > 1`` the
    total ``frozen + kept`` is rounded down to a multiple of ``round_to`` (at least
    ``round_to``). Ratio 0 keeps everything.
    """
    if ratio == 0 or n == 0:
        return n
    keep = math.floor(round(n * (1.0 - ratio), 9))
    if round_to > 1:
        total = max(round_to, (frozen + keep) // round_to * round_to)
        keep = min(n, max(0, total - frozen))
    return max(keep, 1 - frozen, 0)


def plan_removal(graph: ChannelGraph, ratios: dict[int, float], criterion: Criterion, round_to: int = 1) -> Tensor:
    """Which channels to remove: a :meth:`ChannelGraph.removal_mask` with True where cut."""
    keeps = {}
    for g in graph.groups:
        if ratios.get(g.index, 0.0) > 0 and g.n_prunable > 0:
            keeps[g.index] = kept_channels(g.n_prunable, ratios[g.index], round_to, g.n_channels - g.n_prunable)
    return removal_for_keep(graph, keeps, criterion)


def group_scores(criterion: Criterion, group: ChannelGroup) -> Tensor | None:
    """The criterion's scores of every channel of ``group`` as float64 on the CPU (None: it cannot
    score the group), or a ValueError naming the criterion when they are not one finite score a channel."""
    s = criterion(group)
    if s is None:
        return None
    s = torch.as_tensor(s).detach().to("cpu", torch.float64).flatten()
    if s.shape != (group.n_channels,) or bool(torch.isnan(s).any()):
        raise ValueError(
            f"criterion {criterion!r} returned {tuple(s.shape)} scores (NaN?) for group "
            f"{group.index} with {group.n_channels} channels"
        )
    return s


def removal_for_keep(graph: ChannelGraph, keeps: dict[int, int], criterion: Criterion) -> Tensor:
    """Which channels to remove so that group ``i`` keeps ``keeps[i]`` of its prunable channels."""
    removed = graph.removal_mask()
    scores = torch.full((graph.n_comps + 1,), -math.inf, dtype=torch.float64)
    todo = [(g, keeps[g.index]) for g in graph.groups if g.index in keeps and keeps[g.index] < g.n_prunable]
    prepare = getattr(criterion, "prepare", None)
    if prepare is not None and todo:
        prepare(graph.model, [g for g, _ in todo])
    ranked: list[tuple[Tensor, Tensor, int]] = []  # per group: candidate scores, their channels, kept count
    for g, keep in todo:
        s = group_scores(criterion, g)
        if s is None:
            continue
        comps = graph.comps(g)
        scores[comps] = s
        if g.n_prunable == g.n_channels:
            ranked.append((s, comps, keep))
        else:
            cand = (~g.frozen).nonzero().flatten()
            ranked.append((s[cand], comps[cand], keep))
    if ranked:
        removed[_beyond_keep(ranked)] = True
    if todo:
        _keep_one_per_layer(graph, removed, scores)
    return removed


def _beyond_keep(ranked: list[tuple[Tensor, Tensor, int]]) -> Tensor:
    """The channels past each group's ``keep`` best scores (ties: the earlier channel first),
    ranked in two sorts over all groups at once rather than one per group."""
    counts = torch.tensor([len(s) for s, _, _ in ranked])
    group = torch.repeat_interleave(torch.arange(len(ranked)), counts)
    by_score = torch.argsort(torch.cat([s for s, _, _ in ranked]), descending=True, stable=True)
    order = by_score[torch.argsort(group[by_score], stable=True)]  # by group, best first within
    rank = torch.arange(len(order)) - (torch.cumsum(counts, 0) - counts)[group]
    keeps = torch.tensor([k for _, _, k in ranked])
    return torch.cat([c for _, c, _ in ranked])[order[rank >= keeps[group]]]


def _keep_one_per_layer(graph: ChannelGraph, removed: Tensor, scores: Tensor) -> None:
    """Never cut every channel of a layer: restore its best-scoring channel."""
    emptied = (graph.removed_per_member(removed) == graph.member_sizes) & (graph.member_sizes > 0)
    for i in emptied.nonzero().flatten().tolist():
        comps = graph.member_comps[i]
        if bool(removed[comps].all()):
            removed[comps[scores[comps].argmax()]] = False


def cut(model: nn.Module, graph: ChannelGraph, removed: Tensor) -> PruningRecord:
    """Cut the channels ``removed`` from every member, in place; return the record.

    A member whose handler refuses its cut raises :class:`ChannelMappingError` naming it
    (the members cut before it stay cut: :func:`cut_checked` undoes them)."""
    entries = []
    touched: dict[str, nn.Module] = {}
    members = graph.trace.members
    todo = [
        (members[i], (~graph.gone(i, removed)).nonzero().flatten())
        for i in (graph.removed_per_member(removed) > 0).nonzero().flatten().tolist()
    ]
    pairs, fused = _both_sides(todo), set()
    for m, keep in todo:
        try:
            if m.kind == "param":
                cut_tensor(m.module, m.param, keep, m.dim)
            elif id(m.module) in fused:
                pass  # cut with its other side
            elif (both := pairs.pop(id(m.module), None)) is not None and m.handler.prune_both(m.module, *both):
                fused.add(id(m.module))
            elif m.dim == 0:
                m.handler.prune_out(m.module, keep)
            else:
                m.handler.prune_in(m.module, keep)
        except Exception as err:
            what = f"parameter {m.name!r}" if m.kind == "param" else f"module {m.name!r} ({type(m.module).__name__})"
            side = "" if m.kind == "param" else " input" if m.dim == 1 else " output"
            raise ChannelMappingError(
                f"cannot cut the{side} channels of {what}: {err}. Pass ignore=[{_owner(m)!r}] to leave its "
                "channels alone"
            ) from err
        entries.append(RecordEntry(m.name, m.kind, m.dim, tuple(keep.tolist()), m.ids.numel()))
        touched[_owner(m)] = m.module
    return PruningRecord(entries, state_shapes(touched))


def _both_sides(todo: list[tuple[Any, Tensor]]) -> dict[int, tuple[Tensor, Tensor]]:
    """``{id(module): (kept outputs, kept inputs)}`` of the layers cut on both sides, once each:
    their handlers may cut both in one copy of the weight (``prune_both``)."""
    sides: dict[int, dict[int, list[Tensor]]] = {}
    for m, keep in todo:
        if m.kind == "module" and hasattr(m.handler, "prune_both"):
            sides.setdefault(id(m.module), {}).setdefault(m.dim, []).append(keep)
    return {k: (v[0][0], v[1][0]) for k, v in sides.items() if v.keys() == {0, 1} and len(v[0]) == 1 and len(v[1]) == 1}


def _owner(m: Any) -> str:
    """The module name of a trace member (a parameter's owner)."""
    return m.name if m.kind == "module" else m.name.rpartition(".")[0]


def _snapshot(modules: list[nn.Module]) -> list[tuple[nn.Module, dict[str, Any]]]:
    """What a cut changes in ``modules``: their attributes, parameter and buffer dicts (handlers
    replace tensors and sizes, they never write into a tensor), so :func:`_restore` undoes it."""
    return [(m, {k: v.copy() if isinstance(v, (dict, list, set)) else v for k, v in vars(m).items()}) for m in modules]


def _restore(snapshot: list[tuple[nn.Module, dict[str, Any]]]) -> None:
    for m, state in snapshot:
        m.__dict__.clear()
        m.__dict__.update(state)


def _outputs(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _outputs(o)]
    return []


def _run(model: nn.Module, example_inputs: Any, modules: list[nn.Module] | None = None) -> Any:
    """``model(*example_inputs)`` in eval mode without gradients; the modes of ``modules``
    (default: all of the model's) are restored."""
    modes = [(m, m.training) for m in (model.modules() if modules is None else modules)]
    try:
        model.eval()
        with torch.no_grad():
            return model(*(example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)))
    finally:
        for m, mode in modes:
            if m.training != mode:
                m.training = mode


def zeroed_outputs(model: nn.Module, graph: ChannelGraph, removed: Tensor, example_inputs: Any) -> list[Tensor]:
    """The outputs of the uncut ``model`` with the channels ``removed`` zeroed at the input of
    every layer that reads them: what an exact cut computes."""
    handles = []
    members = graph.trace.members
    for i in (graph.removed_per_member(removed) > 0).nonzero().flatten().tolist():
        m = members[i]
        if m.kind != "module" or m.dim != 1:
            continue
        idx = graph.gone(i, removed).nonzero().flatten()

        def zero(module: nn.Module, args: tuple, idx: Tensor = idx, axis: int = m.axis) -> tuple:
            return (args[0].index_fill(axis, idx.to(args[0].device), 0.0), *args[1:])

        handles.append(m.module.register_forward_pre_hook(zero))
    try:
        return _outputs(_run(model, example_inputs))
    finally:
        for h in handles:
            h.remove()


def _suggest_ignore(model: nn.Module, graph: ChannelGraph | None, name: str) -> list[str]:
    """What to ignore when the cut model fails in module ``name``: it and every module of its
    type, and (with the graph) one layer of each group feeding them, so their inputs stay too."""
    like = modules_like(model, name)
    feeding = []
    if graph is not None:
        inside = tuple(like)
        for g in graph.groups:
            if g.n_prunable and any(
                m.dim == 1 and any(m.name == n or m.name.startswith(n + ".") for n in inside) for m in g.members
            ):
                feeding.append(group_name(g))
    return list(dict.fromkeys(like + feeding))


def check_forward(
    model: nn.Module, example_inputs: Any, graph: ChannelGraph | None = None, dry: bool = False
) -> list[Tensor]:
    """Run ``model`` on ``example_inputs`` (eval mode, no grad; modes restored) and return its
    output tensors. A failure raises :class:`ChannelMappingError` naming the innermost module
    that was running and what to ignore (with ``graph``, the traced uncut model: the layers
    feeding it too). The forward runs without hooks; only a failing one is run again with
    hooks that follow the modules, to name where it fails.

    dry: where ``graph``'s trace found that the model reads no activation values and the model
    is in eval mode (the mode the trace and this check then share), check shapes only
    (:func:`pruning.graph.dryrun.checked_shapes`: convs and linears are not computed) and return
    no outputs if that passes; the real forward runs only if it fails."""
    modules = list(model.modules())
    if dry and graph is not None and graph.trace.shapes_only and not any(m.training for m in modules):
        try:
            with dryrun.checked_shapes(modules):
                _run(model, example_inputs, modules)
            return []
        except Exception:
            pass  # the real forward decides, and names the module
    try:
        return _outputs(_run(model, example_inputs, modules))
    except Exception as err:
        inner, err = _failing_module(model, example_inputs, err)
        where = (
            f"module {inner!r} ({type(model.get_submodule(inner)).__name__})" if inner else "the model's own forward"
        )
        hint = f"; pass ignore={_suggest_ignore(model, graph, inner)} to leave its channels alone" if inner else ""
        raise ChannelMappingError(
            f"the cut model fails on the example inputs in {where} ({type(err).__name__}: {err}){hint}"
        ) from err


def _failing_module(model: nn.Module, example_inputs: Any, err: Exception) -> tuple[str | None, Exception]:
    """The innermost named module running when ``model`` fails on ``example_inputs``, and the
    error of that run (``err`` and None if it does not fail again)."""
    names = {id(m): n for n, m in model.named_modules()}
    stack: list[str] = []

    def pre(module: nn.Module, args: Any) -> None:
        if id(module) in names:
            stack.append(names[id(module)])

    def post(module: nn.Module, args: Any, out: Any) -> None:
        if id(module) in names and stack:
            stack.pop()

    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]
    try:
        _run(model, example_inputs)
    except Exception as again:
        return next((n for n in reversed(stack) if n), None), again
    finally:
        for h in handles:
            h.remove()
    return None, err


def cut_checked(
    model: nn.Module, graph: ChannelGraph, removed: Tensor, example_inputs: Any, compare: bool = False
) -> PruningRecord:
    """:func:`cut`, then run the cut model on ``example_inputs``: the engine never hands back a
    model that does not run. If either fails, every cut module is put back as it was and the
    :class:`ChannelMappingError` naming the module says the model was left unchanged.

    compare: also run the uncut model with the cut channels zeroed first, and record the
    largest output difference in ``record.approximation_error`` (and warn with it)."""
    members = graph.trace.members
    cut_idx = (graph.removed_per_member(removed) > 0).nonzero().flatten().tolist()
    want = zeroed_outputs(model, graph, removed, example_inputs) if compare and cut_idx else None
    snapshot = _snapshot(list({id(members[i].module): members[i].module for i in cut_idx}.values()))
    try:
        record = cut(model, graph, removed)
        got = check_forward(model, example_inputs, graph, dry=want is None)
    except ChannelMappingError as err:
        _restore(snapshot)
        raise ChannelMappingError(f"{err} (the model was left as it was)") from err.__cause__
    except BaseException:
        _restore(snapshot)
        raise
    if want is not None:
        record.approximation_error = max(
            (float((g.double() - w.double()).abs().max()) for g, w in zip(got, want) if g.numel()), default=0.0
        )
        warnings.warn(
            f"approximate cut: the cut model's outputs differ by up to {record.approximation_error:.3g} from the "
            "uncut model with the same channels zeroed, on the example inputs (record.approximation_error)",
            stacklevel=3,
        )
    return record


def state_shapes(modules: dict[str, nn.Module]) -> dict[str, list[int]]:
    """``{state-dict key: shape}`` of the parameters and persistent buffers of ``modules``
    (``{qualified name: module}``)."""
    shapes = {}
    for mname, module in modules.items():
        prefix = mname + "." if mname else ""
        for k, v in module._parameters.items():
            if v is not None:
                shapes[prefix + k] = list(v.shape)
        for k, v in module._buffers.items():
            if v is not None and k not in module._non_persistent_buffers_set:
                shapes[prefix + k] = list(v.shape)
    return shapes


def group_name(group: ChannelGroup) -> str:
    """The name that selects ``group`` in a ratio or keep dict: its first output member."""
    return group.names[0] if group.names else f"group{group.index}"
