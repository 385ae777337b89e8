"""Prune to a measured latency target: per-group channel counts from a latency table, then verified.

The search is a greedy over the table's grid (as NetAdapt and HALP do it): starting dense, it
repeatedly lowers the one group whose next grid step saves the most predicted milliseconds
per unit of predicted accuracy cost, until the predicted latency ratio reaches the target.
The cut model is then timed against the dense one with :func:`compare_latency`; a miss of
more than ``tolerance`` is corrected by searching again for the target rescaled by the
observed prediction error (the table's error is mostly a common factor, so one correction
usually lands).
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pruning.checks import check_number
from pruning.criteria import get_criterion
from pruning.latency.comparison import LatencyComparison, compare_latency
from pruning.latency.table import LatencyTable, latency_table
from pruning.structured.cut import prune_to
from pruning.structured.record import PruningRecord

Cost = Callable[[int], float]


@dataclass
class LatencyPruning:
    """What :func:`prune_for_latency` did: the counts it cut to, the measured comparison
    (``comparison.ratio`` = pruned / dense latency), the prediction, and every pass tried."""

    target: float
    channels: dict[str, int]
    record: PruningRecord
    comparison: LatencyComparison
    predicted_ratio: float
    hit: bool
    passes: list[dict] = field(default_factory=list)
    table_seconds: float = 0.0
    search_seconds: float = 0.0

    @property
    def measured_ratio(self) -> float:
        return self.comparison.ratio

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary (the record is left out: save it with ``pruning.save_pruned``)."""
        return {
            "target": self.target,
            "measured_ratio": self.comparison.ratio,
            "predicted_ratio": self.predicted_ratio,
            "error": self.comparison.ratio / self.target - 1.0,
            "hit": self.hit,
            "channels": dict(self.channels),
            "comparison": self.comparison.as_dict(),
            "passes": list(self.passes),
            "table_seconds": self.table_seconds,
            "search_seconds": self.search_seconds,
        }


class UnreachableTarget(ValueError):
    """A latency target below what the groups can reach; ``best`` is the lowest predicted ratio."""

    def __init__(self, best: float, message: str):
        super().__init__(message)
        self.best = best


def check_target(target: Any) -> float:
    """``target`` as a float in (0, 1), or a ValueError naming it and the allowed range."""
    return float(
        check_number("target", target, 0, 1, low_open=True, high_open=True, suffix=" (a latency ratio, pruned / dense)")
    )


def _criterion_costs(table: LatencyTable, criterion: Any) -> dict[str, Cost]:
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


def _curve_cost(points: list[tuple[float, float]], n_prunable: int, frozen: int) -> Cost:
    """Cost of keeping ``c`` channels: the scan's drop, interpolated linearly in the ratio."""
    pts = sorted([(0.0, 0.0)] + [(float(r), float(d)) for r, d in points if float(r) > 0])

    def cost(c: int) -> float:
        r = (n_prunable - (c - frozen)) / n_prunable
        for (r0, d0), (r1, d1) in zip(pts, pts[1:]):
            if r <= r1 + 1e-12:
                return d0 + (d1 - d0) * (r - r0) / (r1 - r0) if r1 > r0 else d1
        return math.inf

    return cost


def _score_costs(table: LatencyTable, scores: Any) -> tuple[dict[str, Cost], dict[str, float]]:
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
            costs[name] = _curve_cost(points, g.n_prunable, frozen)
            limits[name] = max((r for r, _ in points), default=0.0)
    return costs, limits


def allowed_counts(table: LatencyTable, max_ratio: float, limits: Mapping[str, float], groups: list[str]) -> dict:
    """Per group, the grid counts the search may use (removing at most ``max_ratio`` of the
    prunable channels, and no more than its scan covered)."""
    out = {}
    for g in groups:
        n, frozen = table.groups[g]
        cap = min(max_ratio, limits.get(g, 1.0))
        ok = [c for c in table.grid[g] if (n - c) <= cap * (n - frozen) + 1e-9]
        out[g] = ok or [n]
    return out


def allocate(
    table: LatencyTable, costs: Mapping[str, Cost], allowed: Mapping[str, list[int]], target: float
) -> tuple[dict[str, int], float]:
    """Greedy: lower the group with the most predicted ms saved per unit of cost by one grid step
    until the predicted ratio is at most ``target``, then give back the steps (costliest group
    first) that the target does not need. Returns the counts and the predicted ratio; a
    ValueError if even every group at its smallest allowed count predicts more."""
    current = {g: pts[-1] for g, pts in allowed.items()}
    level = {g: len(pts) - 1 for g, pts in allowed.items()}
    layers = {g: table.affected(g) for g in allowed}

    def local(g: str, channels: Mapping[str, int]) -> float:
        return sum(table.layer_ms(layer, channels) for layer in layers[g]) + table.rest_per_volume * table.volume(
            channels, layers[g]
        )

    low = table.predict({g: pts[0] for g, pts in allowed.items()}) / table.dense_ms
    if low > target:
        raise UnreachableTarget(
            low,
            f"target={target:.4g}: unreachable; the prunable groups reach at best a predicted latency ratio "
            f"of {low:.3f} (every group at its smallest allowed count); choose a target in ({low:.3f}, 1) "
            "or allow more pruning (max_ratio, a finer grid, larger scanned ratios)",
        )
    pred = table.predict(current)
    while pred > target * table.dense_ms:
        best = None
        for g, i in level.items():
            if i == 0:
                continue
            trial = dict(current)
            trial[g] = allowed[g][i - 1]
            saved = local(g, current) - local(g, trial)
            dcost = costs[g](trial[g]) - costs[g](current[g])
            if math.isinf(dcost):
                continue
            key = (saved > 0, saved / max(dcost, 1e-9) if saved > 0 else saved, saved)
            if best is None or key > best[0]:
                best = (key, g, saved)
        if best is None:  # every group at its floor: the prediction says reachable, the sum of steps not
            break
        _, g, saved = best
        level[g] -= 1
        current[g] = allowed[g][level[g]]
        pred -= saved
    # the last step may overshoot: give back steps, most costly first, while the target still holds
    for g in sorted(level, key=lambda g: -costs[g](current[g])):
        while level[g] + 1 < len(allowed[g]):
            trial = dict(current)
            trial[g] = allowed[g][level[g] + 1]
            added = local(g, trial) - local(g, current)
            if pred + added > target * table.dense_ms:
                break
            level[g] += 1
            current[g] = trial[g]
            pred += added
    pred = table.predict(current)
    return {g: c for g, c in current.items() if c < table.groups[g][0]}, pred / table.dense_ms


def next_goal(target: float, tried: list[tuple[float, float]]) -> float:
    """The predicted ratio to search for next, from the ``(predicted, measured)`` passes so far:
    after one, the target rescaled by the observed error (``target x predicted / measured``);
    after more, the secant through the two passes closest to the target (the error changes
    with the amount pruned), falling back to the rescaling when they do not bracket sensibly."""
    pred, meas = tried[-1]
    goal = target * pred / meas
    if len(tried) >= 2:
        (p1, m1), (p2, m2) = sorted(tried, key=lambda t: abs(t[1] - target))[:2]
        if abs(m2 - m1) > 1e-6 and (p2 - p1) / (m2 - m1) > 0:
            goal = p1 + (target - m1) * (p2 - p1) / (m2 - m1)
    return min(0.999, max(1e-3, goal))


def prune_for_latency(
    model: nn.Module,
    example_inputs: Any,
    target: float,
    batch_size: int = 1,
    scores: Any = None,
    *,
    criterion: Any = "l1",
    grid: int = 8,
    tolerance: float = 0.05,
    passes: int = 4,
    max_ratio: float = 0.9,
    ignore: tuple[str, ...] | list[str] = (),
    cache_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    table: LatencyTable | None = None,
    max_time_s: float = 20.0,
    progress: Callable[[str], None] | None = None,
) -> LatencyPruning:
    """Prune ``model`` in place so that its measured latency is ``target`` x the dense latency.

    target: latency ratio pruned / dense at ``batch_size``, in (0, 1).
    scores: what a group's channels are worth. None: ``criterion``'s per-channel scores
        normalised per group, so removing a group's weakest channels is cheap and a group's
        whole mass costs 1 (the L1 norm by default); a sensitivity table (``pruning.sensitivity``'s
        result or ``{group: [(ratio, accuracy drop), ...]}``: the predicted accuracy drop,
        interpolated; groups left out are not pruned, and none past its largest scanned ratio);
        or ``{group: per-channel scores}``.
    The search (:func:`allocate`) is greedy over the table's grid (multiples of ``grid``),
    removing at most ``max_ratio`` of any group; ``table`` reuses a :class:`LatencyTable`
    (else one is made, cached in ``cache_dir``, timing only the shapes the search visits). The result is cut from a copy and timed
    against the dense model (:func:`compare_latency`, threads ``threads``); if the measured
    ratio misses the target by more than ``tolerance`` (relative), the search runs again for a
    corrected goal (:func:`next_goal`), up to ``passes`` passes; the closest pass is cut.
    An unreachable target raises a ValueError saying the best reachable ratio (the model is
    left as it was).
    """
    target = check_target(target)
    if not 0 < max_ratio < 1:
        raise ValueError(f"max_ratio={max_ratio!r}: the most of a group the search may remove, in (0, 1)")
    say = progress or (lambda msg: None)
    if table is None:
        table = latency_table(
            model,
            example_inputs,
            batch_size,
            grid,
            cache_dir,
            threads=threads,
            ignore=ignore,
            criterion=criterion,
            calibrate_s=min(10.0, max_time_s),
            build=False,  # the search times the shapes it visits
        )
    if table.batch_size != batch_size:
        raise ValueError(f"batch_size={batch_size} but the table was timed at batch {table.batch_size}")
    if scores is None:
        costs, limits = _criterion_costs(table, criterion), {}
    else:
        costs, limits = _score_costs(table, scores)
    allowed = allowed_counts(table, max_ratio, limits, list(costs))
    tried: list[tuple[dict[str, int], float, LatencyComparison]] = []
    goal = target
    start = time.perf_counter()
    for p in range(max(1, passes)):
        try:
            channels, predicted = allocate(table, costs, allowed, goal)
        except ValueError:
            if not tried:
                raise
            break  # the corrected goal is out of reach: keep the closest pass so far
        trial = copy.deepcopy(model)
        if channels:
            prune_to(trial, example_inputs, channels, criterion, ignore)
        cmp = compare_latency(model, trial, example_inputs, batch_size, max_time_s=max_time_s, threads=threads)
        tried.append((channels, predicted, cmp))
        say(f"pass {p + 1}: predicted {predicted:.3f}, measured {cmp.ratio:.3f} (target {target:.3f})")
        if abs(cmp.ratio / target - 1.0) <= tolerance:
            break
        goal = next_goal(target, [(pr, m.ratio) for _, pr, m in tried])
    table.save()
    search_seconds = time.perf_counter() - start
    channels, predicted, cmp = min(tried, key=lambda t: abs(t[2].ratio / target - 1.0))
    record = prune_to(model, example_inputs, channels, criterion, ignore) if channels else PruningRecord()
    return LatencyPruning(
        target=target,
        channels=channels,
        record=record,
        comparison=cmp,
        predicted_ratio=predicted,
        hit=abs(cmp.ratio / target - 1.0) <= tolerance,
        passes=[
            {"channels": dict(c), "predicted_ratio": pr, "measured_ratio": m.ratio, "ci": [m.ci_low, m.ci_high]}
            for c, pr, m in tried
        ],
        table_seconds=table.build_seconds,
        search_seconds=search_seconds,
    )
