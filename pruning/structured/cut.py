"""Filter pruning that physically removes channels (Li et al. 2017 and friends).

``prune_filters`` traces the model once, builds the channel-dependency groups, scores
each group with a criterion, keeps ``floor(C * (1 - ratio))`` channels per group (at
least one, or a multiple of ``round_to``) and cuts every member of the group through
the layer handlers. The model's outputs are never cut. The cut model is run on the example
inputs before it is handed back; a cut that fails is undone (:func:`pruning.structured.surgery.cut_checked`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from pruning.checks import check_number
from pruning.criteria import Criterion, get_criterion
from pruning.graph.groups import ChannelGroup, build_graph
from pruning.graph.trace import check_approximate
from pruning.structured.ranking import GlobalRanking, global_keeps
from pruning.structured.record import PruningRecord
from pruning.structured.surgery import (
    cut_checked,
    group_name,
    kept_channels,
    plan_removal,
    removal_for_keep,
)

Ratio = float | Mapping[str, float]


def check_ratio(key: str, ratio: Any) -> float:
    """``ratio`` as a float in [0, 1), or a ValueError naming ``key`` (``ratio['features.0']``)."""
    return float(check_number(key, ratio, 0, 1, high_open=True))


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
    ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    return GlobalRanking(model, example_inputs, get_criterion(criterion), ignore).channels(ratio, round_to, max_ratio)


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
