"""Filter pruning that physically removes channels (Li et al. 2017 and friends).

``prune_filters`` traces the model once, builds the channel-dependency groups, scores
each group with a criterion, keeps ``floor(C * (1 - ratio))`` channels per group (at
least one, or a multiple of ``round_to``) and cuts every member of the group through
the layer handlers. The model's outputs are never cut. The cut model is run on the example
inputs before it is handed back; a cut that fails is undone (:func:`cut_checked`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pruning.checks import check_number
from pruning.criteria import Criterion, get_criterion
from pruning.graph import ChannelMappingError
from pruning.graph.groups import ChannelGraph, ChannelGroup, build_graph
from pruning.graph.handlers import cut_tensor
from pruning.graph.trace import check_approximate, modules_like
from pruning.structured.ranking import global_keeps
from pruning.structured.record import PruningRecord, RecordEntry

Ratio = float | Mapping[str, float]


def check_ratio(key: str, ratio: Any) -> float:
    """``ratio`` as a float in [0, 1), or a ValueError naming ``key`` (``ratio['features.0']``)."""
    return float(check_number(key, ratio, 0, 1, high_open=True))


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


def _group_ratios(model: nn.Module, groups: list[ChannelGroup], ratio: Ratio) -> dict[int, float]:
    if not isinstance(ratio, Mapping):
        r = check_ratio("ratio", ratio)
        return {g.index: r for g in groups if g.n_prunable > 0}
    by_name = {n: g for g in groups for n in g.names}
    valid = [n for g in groups if g.n_prunable > 0 for n in g.names]
    out: dict[int, float] = {}
    named: dict[int, str] = {}
    for name, r in ratio.items():
        r = check_ratio(f"ratio[{name!r}]", r)
        g = by_name.get(name)
        if g is None:
            known = name in dict(model.named_modules())
            shown = ", ".join(valid[:40]) + (f", ... ({len(valid)} in all)" if len(valid) > 40 else "")
            raise ValueError(
                f"ratio names {name!r}, which {'has no prunable output channels' if known else 'is not a module of the model'}; "
                f"prunable layers: {shown}"
            )
        if g.n_prunable == 0 and r > 0:
            raise ValueError(
                f"layer {name!r} cannot be pruned: {'; '.join(g.reasons) or 'all its channels are frozen'}"
            )
        if g.index in out and out[g.index] != r:
            raise ValueError(
                f"layers {named[g.index]!r} and {name!r} share one channel group (they lose the same channels) "
                f"but have different ratios {out[g.index]} and {r}; give them one ratio"
            )
        out[g.index] = r
        named[g.index] = name
    return out


def plan_removal(graph: ChannelGraph, ratios: dict[int, float], criterion: Criterion, round_to: int = 1) -> Tensor:
    """Which channels to remove: a :meth:`ChannelGraph.removal_mask` with True where cut."""
    keeps = {}
    for g in graph.groups:
        if ratios.get(g.index, 0.0) > 0 and g.n_prunable > 0:
            keeps[g.index] = kept_channels(g.n_prunable, ratios[g.index], round_to, g.n_channels - g.n_prunable)
    return removal_for_keep(graph, keeps, criterion)


def removal_for_keep(graph: ChannelGraph, keeps: dict[int, int], criterion: Criterion) -> Tensor:
    """Which channels to remove so that group ``i`` keeps ``keeps[i]`` of its prunable channels."""
    removed = graph.removal_mask()
    scores = torch.full((graph.n_comps + 1,), -math.inf, dtype=torch.float64)
    todo = [(g, keeps[g.index]) for g in graph.groups if g.index in keeps and keeps[g.index] < g.n_prunable]
    prepare = getattr(criterion, "prepare", None)
    if prepare is not None and todo:
        prepare(graph.model, [g for g, _ in todo])
    for g, keep in todo:
        s = criterion(g)
        if s is None:
            continue
        s = torch.as_tensor(s).detach().to("cpu", torch.float64).flatten()
        if s.shape != (g.n_channels,) or bool(torch.isnan(s).any()):
            raise ValueError(
                f"criterion {criterion!r} returned {tuple(s.shape)} scores (NaN?) for group "
                f"{g.index} with {g.n_channels} channels"
            )
        comps = graph.comps(g)
        scores[comps] = s
        if g.n_prunable == g.n_channels:
            order = torch.argsort(s, descending=True, stable=True)
            removed[comps[order[keep:]]] = True
        else:
            cand = (~g.frozen).nonzero().flatten()
            order = torch.argsort(s[cand], descending=True, stable=True)
            removed[comps[cand[order[keep:]]]] = True
    if todo:
        _keep_one_per_layer(graph, removed, scores)
    return removed


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
    for i in (graph.removed_per_member(removed) > 0).nonzero().flatten().tolist():
        m = members[i]
        keep = (~graph.gone(i, removed)).nonzero().flatten()
        try:
            if m.kind == "param":
                cut_tensor(m.module, m.param, keep, m.dim)
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


def _run(model: nn.Module, example_inputs: Any) -> Any:
    """``model(*example_inputs)`` in eval mode without gradients; the modes are restored."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            return model(*(example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)))
    finally:
        for m, mode in modes:
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


def check_forward(model: nn.Module, example_inputs: Any, graph: ChannelGraph | None = None) -> list[Tensor]:
    """Run ``model`` on ``example_inputs`` (eval mode, no grad; modes restored) and return its
    output tensors. A failure raises :class:`ChannelMappingError` naming the innermost module
    that was running and what to ignore (with ``graph``, the traced uncut model: the layers
    feeding it too)."""
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
        return _outputs(_run(model, example_inputs))
    except Exception as err:
        inner = next((n for n in reversed(stack) if n), None)
        where = (
            f"module {inner!r} ({type(model.get_submodule(inner)).__name__})" if inner else "the model's own forward"
        )
        hint = f"; pass ignore={_suggest_ignore(model, graph, inner)} to leave its channels alone" if inner else ""
        raise ChannelMappingError(
            f"the cut model fails on the example inputs in {where} ({type(err).__name__}: {err}){hint}"
        ) from err
    finally:
        for h in handles:
            h.remove()


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
        got = check_forward(model, example_inputs, graph)
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


Rounding = Callable[[nn.Module, Any, Mapping[str, tuple[int, int]], Sequence[str]], dict[str, tuple[int, int]]]
ROUNDINGS: dict[str, Rounding] = {}


def register_rounding(name: str, rounding: Rounding) -> None:
    """Make ``round_to=name`` available: ``rounding(model, example_inputs, planned, ignore)``
    takes ``{group: (channels, kept)}`` and returns it with the kept counts it chooses."""
    if name in ROUNDINGS and ROUNDINGS[name] is not rounding:
        raise ValueError(f"round_to {name!r} is already registered ({ROUNDINGS[name].__qualname__})")
    ROUNDINGS[name] = rounding


def check_round_to(round_to: Any) -> None:
    """Refuse a ``round_to`` that is neither a positive integer nor a registered rounding."""
    if isinstance(round_to, str) and round_to in ROUNDINGS:
        return
    check_number("round_to", round_to, 1, integer=True, suffix="".join(f" or {n!r}" for n in sorted(ROUNDINGS)))


def prune_filters(
    model: nn.Module,
    example_inputs: Any,
    ratio: Ratio,
    criterion: str | Criterion = "l1",
    ignore: tuple[str, ...] | list[str] = (),
    round_to: int | str = 1,
    scope: str = "group",
    max_ratio: float = 0.9,
    approximate: tuple[str, ...] | list[str] = (),
) -> PruningRecord:
    """Remove filters from ``model`` in place; return the record of what was removed.

    ratio: a float for every prunable group, or ``{module_name: ratio}`` for the groups
        of the named layers (others keep their channels).
    scope: ``group`` removes ``ratio`` of every group's channels; ``global`` removes ``ratio``
        of all prunable channels, ranked together by per-group normalised scores
        (:mod:`pruning.structured.ranking`), no group losing more than ``max_ratio``.
    criterion: a registered name (``pruning.criteria.criterion_names()``) or a criterion object.
    ignore: module names (or prefixes) whose output channels are never pruned.
    round_to: keep a multiple of this many channels per group, or the name of a registered
        rounding (:func:`register_rounding`); ``"auto"``: per group the multiple (1, 8, 16) a
        latency table times fastest (``pruning.latency.round_auto``).
    approximate: approximate cuts to allow where no exact one exists, e.g. ``("eca",)``: ECA's
        Conv1d across channels keeps the channels in place (cutting one changes its neighbours'
        gates). The output difference it causes on ``example_inputs`` is warned about and kept in
        ``record.approximation_error``. Default: exact cuts only.

    The cut model is run on ``example_inputs`` before it is returned; a cut that fails raises
    :class:`pruning.ChannelMappingError` naming the module, with the model left as it was.
    """
    check_round_to(round_to)
    if isinstance(ignore, str):
        ignore = (ignore,)
    crit = get_criterion(criterion)
    if isinstance(ratio, Mapping):
        for name, r in ratio.items():
            check_ratio(f"ratio[{name!r}]", r)
    else:
        check_ratio("ratio", ratio)
    names = set(dict(model.named_modules())) if ignore else set()
    unknown = [i for i in ignore if i not in names]
    if unknown:
        raise ValueError(f"ignore names {unknown}, which are not modules of the model")
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r}: choose one of {', '.join(SCOPES)}")
    approximate = check_approximate(approximate)
    graph = build_graph(model, example_inputs, tuple(ignore), approximate)
    if scope == "global":
        if isinstance(ratio, Mapping) or isinstance(round_to, str):
            raise ValueError("scope='global' takes one ratio for the whole model and an integer round_to")
        removed = removal_for_keep(graph, global_keeps(graph, ratio, crit, round_to, max_ratio), crit)
        return cut_checked(model, graph, removed, example_inputs, compare=bool(approximate))
    ratios = _group_ratios(model, graph.groups, ratio)
    if isinstance(round_to, str):
        planned = planned_channels(model, example_inputs, ratio, ignore, round_to)
        channels = {g: k for g, (c, k) in planned.items() if k < c}
        return prune_to(model, example_inputs, channels, crit, ignore, approximate=approximate)
    removed = plan_removal(graph, ratios, crit, round_to)
    return cut_checked(model, graph, removed, example_inputs, compare=bool(approximate))


def global_channels(
    model: nn.Module,
    example_inputs: Any,
    ratio: float,
    criterion: str | Criterion = "l1",
    ignore: tuple[str, ...] | list[str] = (),
    round_to: int = 1,
    max_ratio: float = 0.9,
) -> dict[str, tuple[int, int]]:
    """``{group name: (channels, channels kept)}`` that ``prune_filters(scope="global")`` with
    these arguments would leave, without cutting anything (it scores the groups to decide)."""
    graph = build_graph(model, example_inputs, (ignore,) if isinstance(ignore, str) else tuple(ignore))
    keeps = global_keeps(graph, ratio, get_criterion(criterion), round_to, max_ratio)
    return {
        group_name(g): (g.n_channels, g.n_channels - g.n_prunable + keeps.get(g.index, g.n_prunable))
        for g in graph.groups
        if g.n_prunable > 0
    }


def group_name(group: ChannelGroup) -> str:
    """The name that selects ``group`` in a ratio or keep dict: its first output member."""
    return group.names[0] if group.names else f"group{group.index}"


def group_channels(
    model: nn.Module, example_inputs: Any, ignore: tuple[str, ...] | list[str] = ()
) -> dict[str, tuple[int, int]]:
    """``{group name: (channels, prunable channels)}`` for every group that can lose channels, in
    forward order. The names are the keys :func:`prune_to` and :func:`prune_filters` accept."""
    graph = build_graph(model, example_inputs, tuple(ignore))
    return {group_name(g): (g.n_channels, g.n_prunable) for g in graph.groups if g.n_prunable > 0}


def planned_channels(
    model: nn.Module,
    example_inputs: Any,
    ratio: Ratio,
    ignore: tuple[str, ...] | list[str] = (),
    round_to: int | str = 1,
) -> dict[str, tuple[int, int]]:
    """``{group name: (channels, channels kept)}`` that :func:`prune_filters` with these
    arguments would leave, without cutting anything."""
    check_round_to(round_to)
    if isinstance(round_to, str):
        rounding = ROUNDINGS[round_to]
        return rounding(model, example_inputs, planned_channels(model, example_inputs, ratio, ignore), ignore)
    graph = build_graph(model, example_inputs, tuple(ignore))
    ratios = _group_ratios(model, graph.groups, ratio)
    out = {}
    for g in graph.groups:
        if g.n_prunable == 0:
            continue
        frozen = g.n_channels - g.n_prunable
        r = ratios.get(g.index, 0.0)
        out[group_name(g)] = (
            g.n_channels,
            frozen + (kept_channels(g.n_prunable, r, round_to, frozen) if r > 0 else g.n_prunable),
        )
    return out


SCORINGS = ("independent", "greedy")
SCOPES = ("group", "global")


def prune_to(
    model: nn.Module,
    example_inputs: Any,
    channels: Mapping[str, int],
    criterion: str | Criterion = "l1",
    ignore: tuple[str, ...] | list[str] = (),
    scoring: str = "independent",
    approximate: tuple[str, ...] | list[str] = (),
) -> PruningRecord:
    """Cut the named groups down to ``channels[name]`` channels each (a group already at or
    below its count is left alone); return the record.

    scoring: ``independent`` scores every group on the model as it is (Li et al.'s
    independent strategy); ``greedy`` cuts the groups one at a time in forward order and
    scores each after the earlier cuts, so weights that read removed channels no longer count.
    approximate: as in :func:`prune_filters`.
    """
    if scoring not in SCORINGS:
        raise ValueError(f"scoring={scoring!r}: choose one of {', '.join(SCORINGS)}")
    crit = get_criterion(criterion)
    ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    approximate = check_approximate(approximate)
    if scoring == "greedy":
        record = PruningRecord()
        for name, count in channels.items():
            record = record + prune_to(model, example_inputs, {name: count}, crit, ignore, approximate=approximate)
        return record
    graph = build_graph(model, example_inputs, ignore, approximate)
    by_name = {n: g for g in graph.groups for n in g.names}
    keeps: dict[int, int] = {}
    for name, count in channels.items():
        g = by_name.get(name)
        if g is None:
            raise ValueError(
                f"channels names {name!r}, which is not a prunable group; groups: "
                f"{', '.join(group_name(x) for x in graph.groups if x.n_prunable > 0)}"
            )
        frozen = g.n_channels - g.n_prunable
        check_number(f"channels[{name!r}]", count, max(1, frozen), integer=True)
        keeps[g.index] = min(g.n_prunable, int(count) - frozen)
    removed = removal_for_keep(graph, keeps, crit)
    return cut_checked(model, graph, removed, example_inputs, compare=bool(approximate))


def group_members(
    model: nn.Module, example_inputs: Any, ignore: tuple[str, ...] | list[str] = ()
) -> dict[str, list[str]]:
    """``{group name: names of the modules/parameters whose output channels the group is}``
    (a conv, its BatchNorm, and every layer tied to them), for the prunable groups."""
    graph = build_graph(model, example_inputs, tuple(ignore))
    return {group_name(g): list(dict.fromkeys(g.names)) for g in graph.groups if g.n_prunable > 0}
