"""``strategy.scope=global`` for filter pruning: the kept channel counts come from one ranking of
every prunable channel (``pruning.structured.global_channels``) instead of one ratio per group.

``strategy.match=macs`` picks the global ratio that removes at least the MACs that ``ratio``
removes from every group (the smallest such ratio, by bisection on measured counts), so a global
arm and the uniform arm at the same ``ratio`` are compared at matched MACs.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

import pruning
from experiments.checks import ConfigError

MATCHES = (None, "macs")


def _macs_after(model: nn.Module, example: Any, planned: dict[str, tuple[int, int]], criterion: Any, ignore) -> int:
    trial = copy.deepcopy(model)
    counts = {g: k for g, (c, k) in planned.items() if k < c}
    if counts:
        pruning.prune_to(trial, example, counts, criterion, ignore)
    return pruning.count(trial, example).macs


def global_planned(
    model: nn.Module,
    example: Any,
    ratio: float,
    criterion: Any,
    ignore: tuple[str, ...] = (),
    round_to: int = 1,
    max_ratio: float = 0.9,
    match: str | None = None,
    steps: int = 14,
) -> dict[str, tuple[int, int]]:
    """``{group: (channels, kept)}`` of global pruning at ``ratio``, or, with ``match="macs"``, at
    the global ratio whose MACs first reach those of ``ratio`` applied to every group."""

    ranking = pruning.structured.GlobalRanking(model, example, criterion, tuple(ignore))  # one trace and scoring

    def plan(r: float) -> dict[str, tuple[int, int]]:
        return ranking.channels(r, round_to, max_ratio)

    if match is None:
        return plan(ratio)
    uniform = pruning.planned_channels(model, example, ratio, ignore, round_to)
    goal = _macs_after(model, example, uniform, criterion, ignore)
    low, high = 0.0, 0.99
    best = plan(high)
    if _macs_after(model, example, best, criterion, ignore) > goal:
        raise ConfigError(
            f"strategy.match=macs: global pruning up to ratio {high} with strategy.max_ratio={max_ratio} "
            f"cannot remove the MACs of strategy.ratio={ratio} in every group; raise strategy.max_ratio"
        )
    for _ in range(steps):  # invariant: plan(high) reaches the goal, plan(low) may not
        mid = (low + high) / 2
        trial = plan(mid)
        if _macs_after(model, example, trial, criterion, ignore) <= goal:
            high, best = mid, trial
        else:
            low = mid
    return best
