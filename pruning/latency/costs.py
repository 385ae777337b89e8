"""What a group's channels are worth to the latency search: per group, the cost of keeping
``c`` channels, from a criterion's per-channel scores or from a sensitivity scan's accuracy drops."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch

from pruning.criteria import get_criterion
from pruning.latency.table import LatencyTable

Cost = Callable[[int], float]


def criterion_costs(table: LatencyTable, criterion: Any) -> dict[str, Cost]:
    """Per group, the share of its criterion score (L1 norm by default) that keeping ``c``
    channels removes: the smallest scores go first, as the cut removes them. Scores are
    normalised per group because raw norms are not comparable across layers (fan-in, BN
    scaling); a group whose criterion gives no scores costs the fraction it loses."""
    crit = get_criterion(criterion)
    prepare = getattr(crit, "prepare", None)
    if prepare is not None:
        prepare(table.model, list(table.channel_groups.values()))
    costs = {}
    for name, g in table.channel_groups.items():
        frozen = int(g.frozen.sum())
        s = crit(g)
        if s is None:
            prunable = g.n_prunable
            costs[name] = lambda c, n=g.n_channels, p=prunable: (n - c) / p
            continue
        s = torch.as_tensor(s).detach().to("cpu", torch.float64).flatten()[~g.frozen]
        s = torch.sort(s - min(0.0, float(s.min()))).values
        total = float(s.sum())
        cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(s, 0)])
        if total <= 0:
            cum = torch.arange(len(s) + 1, dtype=torch.float64)
            total = float(len(s))
        costs[name] = lambda c, cum=cum, total=total, n=g.n_prunable, f=frozen: float(cum[n - (c - f)]) / total
    return costs


def curve_cost(points: list[tuple[float, float]], n_prunable: int, frozen: int) -> Cost:
    """Cost of keeping ``c`` channels: the scan's drop, interpolated linearly in the ratio."""
    pts = sorted([(0.0, 0.0)] + [(float(r), float(d)) for r, d in points if float(r) > 0])

    def cost(c: int) -> float:
        r = (n_prunable - (c - frozen)) / n_prunable
        for (r0, d0), (r1, d1) in zip(pts, pts[1:]):
            if r <= r1 + 1e-12:
                return d0 + (d1 - d0) * (r - r0) / (r1 - r0) if r1 > r0 else d1
        return math.inf

    return cost


def score_costs(table: LatencyTable, scores: Any) -> tuple[dict[str, Cost], dict[str, float]]:
    """Costs from ``scores``: a sensitivity table (anything with ``curves()``) or a mapping of
    group -> ``[(ratio, accuracy drop), ...]`` or group -> per-channel scores. Returns the
    costs and, for scanned groups, the largest ratio scanned (the search stops there)."""
    if hasattr(scores, "curves"):
        scores = scores.curves()
    if not isinstance(scores, Mapping):
        raise TypeError(f"scores must be a sensitivity table or a mapping of group -> curve or scores, got {scores!r}")
    costs: dict[str, Cost] = {}
    limits: dict[str, float] = {}
    for name, value in scores.items():
        if name not in table.groups:
            raise ValueError(f"scores names {name!r}, which is not a prunable group; groups: {', '.join(table.groups)}")
        n, frozen = table.groups[name]
        g = table.channel_groups[name]
        if torch.is_tensor(value) or (value and isinstance(next(iter(value)), numbers.Real)):
            s = torch.as_tensor(value, dtype=torch.float64).flatten()
            if s.numel() != n:
                raise ValueError(f"scores[{name!r}] has {s.numel()} entries; the group has {n} channels")
            s = torch.sort(s[~g.frozen] - min(0.0, float(s.min()))).values
            cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(s, 0)])
            total = max(float(s.sum()), 1e-12)
            costs[name] = lambda c, cum=cum, total=total, p=g.n_prunable, f=frozen: float(cum[p - (c - f)]) / total
        else:
            points = [(float(r), float(d)) for r, d in value]
            costs[name] = curve_cost(points, g.n_prunable, frozen)
            limits[name] = max((r for r, _ in points), default=0.0)
    return costs, limits
