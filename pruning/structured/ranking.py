"""Global filter pruning: one ranking of every prunable channel of the model, so that the
criterion decides *where* channels go as well as *which*.

Scores are not comparable across groups as they come (an L1 norm grows with a filter's fan-in),
so each group's scores are divided by their mean absolute value over the group's prunable
channels first (Torch-Pruning's default ``mean`` normalisation for global pruning). The lowest
``ratio`` of all prunable channels are then removed, no group losing more than ``max_ratio`` of
its prunable channels and every group keeping at least one channel.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pruning.checks import check_number
from pruning.criteria import Criterion
from pruning.graph.groups import ChannelGraph, ChannelGroup, build_graph
from pruning.structured.surgery import group_name, group_scores


def normalized_scores(graph: ChannelGraph, criterion: Criterion) -> dict[int, torch.Tensor]:
    """``{group index: scores of its prunable channels / their mean |score|}`` for every group the
    criterion scores (a criterion that returns None for a group leaves it out)."""
    groups = [g for g in graph.groups if g.n_prunable > 0]
    prepare = getattr(criterion, "prepare", None)
    if prepare is not None and groups:
        prepare(graph.model, groups)
    out = {}
    for g in groups:
        s = group_scores(criterion, g)
        if s is None:
            continue
        s = s[~g.frozen] if g.n_prunable < g.n_channels else s
        scale = float(s.abs().mean())
        out[g.index] = s / scale if scale > 0 else s
    return out


def _fewest_kept(group: ChannelGroup, max_ratio: float) -> int:
    """The fewest prunable channels ``group`` may keep: ``1 - max_ratio`` of them, and at least
    one channel in the whole group."""
    floor = math.ceil(round(group.n_prunable * (1.0 - max_ratio), 9))
    return min(group.n_prunable, max(floor, 1 - (group.n_channels - group.n_prunable), 0))


def _round_up(group: ChannelGroup, keep: int, round_to: int) -> int:
    """``keep`` prunable channels raised so that the group's total is a multiple of ``round_to``."""
    if round_to <= 1 or keep >= group.n_prunable:
        return keep
    frozen = group.n_channels - group.n_prunable
    total = -(-(frozen + keep) // round_to) * round_to
    return min(group.n_prunable, max(keep, total - frozen))


def global_keeps(
    graph: ChannelGraph, ratio: float, criterion: Criterion, round_to: int = 1, max_ratio: float = 0.9
) -> dict[int, int]:
    """``{group index: prunable channels kept}`` after removing the lowest-ranked ``ratio`` of
    all prunable channels of the scored groups (see the module docstring)."""
    return keeps_from_scores(graph, normalized_scores(graph, criterion), ratio, round_to, max_ratio)


def keeps_from_scores(
    graph: ChannelGraph, scores: dict[int, torch.Tensor], ratio: float, round_to: int = 1, max_ratio: float = 0.9
) -> dict[int, int]:
    """:func:`global_keeps` from scores already normalised (:func:`normalized_scores`), so that one
    scoring serves every ratio tried."""
    check_number("ratio", ratio, 0, 1, high_open=True)
    check_number("max_ratio", max_ratio, 0, 1, low_open=True, high_open=True)
    check_number("round_to", round_to, 1, integer=True)
    by_index = {g.index: g for g in graph.groups}
    total = sum(by_index[i].n_prunable for i in scores)
    budget = math.floor(round(total * ratio, 9))
    keeps = {i: by_index[i].n_prunable for i in scores}
    fewest = {i: _fewest_kept(by_index[i], max_ratio) for i in scores}
    if budget == 0 or not scores:
        return keeps
    flat = torch.cat([s for s in scores.values()])
    owner = torch.cat([torch.full((len(s),), i, dtype=torch.long) for i, s in scores.items()])
    for j in torch.argsort(flat, stable=True).tolist():
        i = int(owner[j])
        if keeps[i] > fewest[i]:
            keeps[i] -= 1
            budget -= 1
            if budget == 0:
                break
    return {i: _round_up(by_index[i], k, round_to) for i, k in keeps.items()}


class GlobalRanking:
    """A model's channels traced and scored once; :meth:`channels` gives the plan of any global
    ratio from that one ranking (a search over ratios needs no further trace or scoring)."""

    def __init__(self, model: nn.Module, example_inputs: Any, criterion: Criterion, ignore: tuple[str, ...] = ()):
        self.graph = build_graph(model, example_inputs, tuple(ignore))
        self.scores = normalized_scores(self.graph, criterion)

    def channels(self, ratio: float, round_to: int = 1, max_ratio: float = 0.9) -> dict[str, tuple[int, int]]:
        """``{group name: (channels, channels kept)}`` of global pruning at ``ratio``."""
        keeps = keeps_from_scores(self.graph, self.scores, ratio, round_to, max_ratio)
        return {
            group_name(g): (g.n_channels, g.n_channels - g.n_prunable + keeps.get(g.index, g.n_prunable))
            for g in self.graph.groups
            if g.n_prunable > 0
        }
