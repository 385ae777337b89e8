"""Sparing sensitive groups: which groups a scan ranks most sensitive, and the ratio that
prunes the rest hard enough to remove what a uniform ratio removes from every group.

Li et al. 2017 do not prune the layers their scan finds sensitive and prune the others
more. A fair comparison with the uniform arm removes the same MACs: the other groups get
one common ratio, the one (among the ratios where some group's kept count changes) whose
pruned model's MACs, counted exactly, come closest to the uniform ratio's. Kept counts are
whole channels, so the match is within about half a channel of the costliest group, on
either side. With ``at_least`` (``strategy.match=macs``) the spared model is never the larger
one: from the largest common ratio that removes fewer MACs, single channels are taken and given
back (per group, no group keeping more than the uniform ratio leaves it) until it removes at
least the uniform ratio's MACs with little excess.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

from torch import nn

import pruning
from experiments.checks import ConfigError
from experiments.strategies.ratio_policy import ScanTable

MAX_CHOICES = 100
"""The dry run checks every choice of spared groups when there are at most this many."""


def most_sensitive(scan: ScanTable, k: int) -> list[str]:
    """The ``k`` groups with the largest mean predicted drop (ties: forward order)."""
    sensitivity = scan.sensitivity()
    order = list(sensitivity)
    return sorted(order, key=lambda g: (-sensitivity[g], order.index(g)))[:k]


def macs_removed(
    model: nn.Module, example: Any, ratio: float | dict[str, float], ignore: tuple[str, ...] = (), round_to: int = 1
) -> int:
    """MACs that pruning ``model`` at ``ratio`` (a float, or ``{group: ratio}``) removes."""
    if isinstance(ratio, dict):
        ratio = {g: r for g, r in ratio.items() if r > 0}
        if not ratio:
            return 0
    trial = copy.deepcopy(model)
    pruning.prune_filters(trial, example, ratio, ignore=ignore, round_to=round_to)
    return pruning.count(model, example).macs - pruning.count(trial, example).macs


def spare_most_sensitive(
    model: nn.Module,
    example: Any,
    scan: ScanTable,
    ratio: float,
    k: int,
    ignore: tuple[str, ...] = (),
    round_to: int = 1,
    at_least: bool = False,
) -> tuple[list[str], dict[str, float]]:
    """``(spared groups, {group: ratio})``: the ``k`` most sensitive groups at 0, every other
    group at the common ratio whose removed MACs come closest to those of ``ratio`` everywhere
    (``at_least``: per-group kept counts near the common ratio that remove at least those MACs and little more).

    With a placeholder scan (the dry run, before the baseline exists) every choice of ``k``
    groups the real scan could make is checked for feasibility (up to ``MAX_CHOICES`` of
    them; beyond, the groups whose pruning alone removes the most MACs), so a config that
    passes the dry run does not fail after the baseline has trained."""
    groups = pruning.group_channels(model, example, ignore)
    if k >= len(groups):
        raise ConfigError(
            f"strategy.skip_sensitive={k}: the model has {len(groups)} prunable groups; spare fewer than that"
        )
    target = macs_removed(model, example, ratio, ignore, round_to)
    if scan.placeholder:
        if math.comb(len(groups), k) <= MAX_CHOICES:
            choices = [list(c) for c in itertools.combinations(groups, k)]
        else:
            single = {g: macs_removed(model, example, {g: ratio}, ignore, round_to) for g in groups}
            choices = [sorted(groups, key=lambda g: -single[g])[:k]]
        for choice in choices:
            _candidates(model, example, groups, choice, ratio, target, k, ignore, round_to)
        spared = choices[0]
    else:
        spared = most_sensitive(scan, k)
    rest, candidates = _candidates(model, example, groups, spared, ratio, target, k, ignore, round_to)

    def removed(r: float) -> int:
        return macs_removed(model, example, {g: r for g in rest}, ignore, round_to)

    lo, hi = 0, len(candidates) - 1  # the smallest candidate that removes enough (removed() is monotone)
    while lo < hi:
        mid = (lo + hi) // 2
        if removed(candidates[mid]) >= target:
            hi = mid
        else:
            lo = mid + 1
    if at_least:
        if removed(candidates[lo]) > target:  # below it, the common ratio removes too little: top up by channels
            base = candidates[lo - 1] if lo > 0 else ratio
            ratios = _at_least(model, example, groups, rest, base, ratio, target, ignore, round_to)
            if ratios is not None:
                return spared, {**{g: 0.0 for g in spared}, **ratios}
    elif lo > 0 and target - removed(candidates[lo - 1]) < removed(candidates[lo]) - target:
        lo -= 1  # the candidate just below removes a little less, but comes closer
    return spared, {**{g: 0.0 for g in spared}, **{g: candidates[lo] for g in rest}}


def _kept(channels: int, ratio: float) -> int:
    return max(1, math.floor(round(channels * (1 - ratio), 9)))


def _at_least(
    model: nn.Module,
    example: Any,
    groups: dict[str, tuple[int, int]],
    rest: list[str],
    base: float,
    ratio: float,
    target: int,
    ignore: tuple[str, ...],
    round_to: int,
) -> dict[str, float] | None:
    """``{group: ratio}`` of ``rest`` that removes at least ``target`` MACs and little more: from common ratio
    ``base``, one channel more at a time from the group that reaches ``target`` with the least excess (while none
    does: the group whose channel removes most); then per group, costliest channels first, as many given back as
    leave the model removing ``target`` (no group keeps more than ``ratio`` leaves it). A kept-count step of a common
    ratio can remove several percent of the MACs (a channel of an early, full-resolution conv), a channel of a
    late group far fewer. None when no group can lose another channel that removes MACs."""
    ceiling = {g: _kept(groups[g][0], ratio) for g in rest}
    kept = {g: min(ceiling[g], _kept(groups[g][0], base)) for g in rest}

    def removed(counts: dict[str, int]) -> int:
        return macs_removed(model, example, _ratios(groups, counts), ignore, round_to)

    now = removed(kept)
    while now < target:
        trials = {g: removed({**kept, g: kept[g] - 1}) for g in rest if kept[g] > 1}
        trials = {g: m for g, m in trials.items() if m > now}
        if not trials:
            return None
        enough = {g: m for g, m in trials.items() if m >= target}
        g = min(enough, key=enough.__getitem__) if enough else max(trials, key=trials.__getitem__)
        kept[g], now = kept[g] - 1, trials[g]
    single = {g: now - removed({**kept, g: kept[g] + 1}) for g in rest if kept[g] < ceiling[g]}
    for g in sorted(single, key=lambda g: -single[g]):  # costliest channels first, as many as still remove enough
        lo, hi = 0, ceiling[g] - kept[g]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if removed({**kept, g: kept[g] + mid}) >= target:
                lo = mid
            else:
                hi = mid - 1
        kept[g] += lo
    return _ratios(groups, kept)


def _ratios(groups: dict[str, tuple[int, int]], kept: dict[str, int]) -> dict[str, float]:
    """The ratio per group that keeps exactly ``kept`` of its channels (``floor(n * (1 - r))``)."""
    return {g: 1 - (k + 0.5) / groups[g][0] for g, k in kept.items()}


def _candidates(
    model: nn.Module,
    example: Any,
    groups: dict[str, tuple[int, int]],
    spared: list[str],
    ratio: float,
    target: int,
    k: int,
    ignore: tuple[str, ...],
    round_to: int,
) -> tuple[list[str], list[float]]:
    """The unspared groups and the common ratios worth trying for them (where some group's
    kept count changes), after checking that the largest removes ``target`` MACs."""
    rest = [g for g in groups if g not in spared]
    candidates = sorted(
        {r for g in rest for kept in range(1, groups[g][0]) if (r := 1 - (kept + 0.5) / groups[g][0]) >= ratio}
    )
    most = macs_removed(model, example, {g: candidates[-1] for g in rest}, ignore, round_to) if candidates else 0
    if most < target:
        raise ConfigError(
            f"strategy.skip_sensitive={k} with strategy.ratio={ratio}: if the scan ranks {', '.join(spared)} most "
            f"sensitive, the other groups cannot remove the {target} MACs the uniform ratio removes (at most "
            f"{most}); spare fewer groups or lower the ratio"
        )
    return rest, candidates
