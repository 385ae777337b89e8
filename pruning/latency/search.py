"""Prune to a measured latency target: per-group channel counts from a latency table, then measured.

The allocation is a greedy over the table's grid (as NetAdapt and HALP do it): starting dense,
it repeatedly lowers the one group whose next grid step saves the most predicted milliseconds
per unit of predicted accuracy cost, until the predicted latency ratio reaches the target. That
allocation fixes the *shape* of the cut (which groups lose more); its *amount* is then set by
measurement: one scalar scales every group's removed channels alike (:func:`along`), and a
safeguarded secant on it (:func:`next_scale`) moves between models cut from copies and timed
against the dense model with :func:`compare_latency` until one lands within the tolerance. The
table only proposes; what is reported, and what decides that a target is out of reach, is always
a measured model.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from pruning.checks import check_number
from pruning.latency.comparison import LatencyComparison, compare_latency
from pruning.latency.costs import Cost, criterion_costs, score_costs
from pruning.latency.table import LatencyTable, latency_table
from pruning.structured.cut import prune_to
from pruning.structured.record import PruningRecord


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
            "models_timed": len(self.passes),
            "table_seconds": self.table_seconds,
            "search_seconds": self.search_seconds,
        }


class UnreachableTarget(ValueError):
    """A latency target below what the groups can reach; ``best`` is the lowest ratio measured
    (or, where nothing was timed, predicted) and ``models_timed`` how many models the search timed."""

    def __init__(self, best: float, message: str, models_timed: int = 0):
        super().__init__(message)
        self.best = best
        self.models_timed = models_timed


def check_target(target: Any) -> float:
    """``target`` as a float in (0, 1), or a ValueError naming it and the allowed range."""
    return float(
        check_number("target", target, 0, 1, low_open=True, high_open=True, suffix=" (a latency ratio, pruned / dense)")
    )


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

    goal = table.uncorrect(target)  # the target as a ratio of the layer sums (what the steps add up)
    low_base = table.base_ms({g: pts[0] for g, pts in allowed.items()}) / table.dense_ms
    low = table.correct(low_base)
    if low_base > goal:
        raise UnreachableTarget(
            low,
            f"target={target:.4g}: unreachable; the prunable groups reach at best a predicted latency ratio "
            f"of {low:.3f} (every group at its smallest allowed count); choose a target in ({low:.3f}, 1) "
            "or allow more pruning (max_ratio, a finer grid, larger scanned ratios)",
        )
    pred = table.base_ms(current)
    while pred > goal * table.dense_ms:
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
            if pred + added > goal * table.dense_ms:
                break
            level[g] += 1
            current[g] = trial[g]
            pred += added
    pred = table.base_ms(current)
    return {g: c for g, c in current.items() if c < table.groups[g][0]}, table.correct(pred / table.dense_ms)


def along(
    scale: float,
    anchor: Mapping[str, int],
    floor: Mapping[str, int],
    allowed: Mapping[str, list[int]],
    dense: Mapping[str, int],
) -> dict[str, int]:
    """The channel counts at ``scale`` on the path dense (0) -> ``anchor`` (1) -> ``floor`` (2):
    every group's removed channels scaled alike, each count the nearest one ``allowed`` (its
    grid). Every group shrinks as the scale grows, so the latency falls along the path."""
    out = {}
    for g, pts in allowed.items():
        a, n, f = anchor.get(g, dense[g]), dense[g], floor[g]
        want = n - scale * (n - a) if scale <= 1 else a - (scale - 1) * (a - f)
        c = min(pts, key=lambda p: (abs(p - want), -p))
        if c < n:
            out[g] = c
    return out


def next_scale(target: float, points: list[tuple[float, float]], top: float = 2.0) -> float:
    """The next scale to measure from the ``(scale, measured ratio)`` points so far (the dense
    model is ``(0, 1)``). The measured ratio falls as the scale grows: between the largest scale
    measured above the target and the smallest measured at or below it, the secant of the log
    ratio, kept inside the inner 80% of that bracket so it always shrinks (a safeguarded regula
    falsi); with no point below the target yet, the log ratio extrapolated from the dense model
    through the last point, at most ``top``."""
    above = [(s, m) for s, m in points if m > target]
    below = [(s, m) for s, m in points if m <= target]
    s_hi, m_hi = max(above)
    if below:
        s_lo, m_lo = min(below)
        if s_lo > s_hi:
            w = (math.log(m_hi) - math.log(target)) / max(math.log(m_hi) - math.log(m_lo), 1e-12)
            return s_hi + (s_lo - s_hi) * min(0.9, max(0.1, w))
    s, m = points[-1]
    if m >= 1.0 or s <= 0:
        return top
    return min(top, s * math.log(target) / math.log(m))


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
    passes: int = 6,
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
    The allocation (:func:`allocate`) is greedy over the table's grid (multiples of ``grid``),
    removing at most ``max_ratio`` of any group; ``table`` reuses a :class:`LatencyTable`
    (else one is made, cached in ``cache_dir``, timing only the shapes the search visits).
    The allocation for the target is cut from a copy and timed against the dense model
    (:func:`compare_latency`, threads ``threads``, at most ``max_time_s`` each); while the
    measured ratio misses the target by more than ``tolerance`` (relative), the removed
    channels are scaled up or down (:func:`along`, :func:`next_scale`) and the search measures
    again, at most ``passes`` models in all; the
    measured model closest to the target is cut (``hit`` says whether it landed;
    ``passes`` lists every model timed, ``search_seconds`` what it cost).
    :class:`UnreachableTarget` (a ValueError; the model is left as it was) is raised only when
    the model with every group at its smallest allowed count, measured, misses the target (a
    miss whose 95% interval still reaches the tolerance is measured again, twice as long).
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
        costs, limits = criterion_costs(table, criterion), {}
    else:
        costs, limits = score_costs(table, scores)
    allowed = allowed_counts(table, max_ratio, limits, list(costs))
    start = time.perf_counter()
    timed: dict[tuple, tuple[dict[str, int], float, LatencyComparison]] = {}

    def measure(channels: dict[str, int], predicted: float, again: bool = False) -> LatencyComparison:
        key = tuple(sorted(channels.items()))
        if key not in timed or again:
            trial = copy.deepcopy(model)
            if channels:
                prune_to(trial, example_inputs, channels, criterion, ignore)
            seconds = max_time_s * (2 if again else 1)
            cmp = compare_latency(model, trial, example_inputs, batch_size, max_time_s=seconds, threads=threads)
            timed[key] = (channels, predicted, cmp)
            say(f"model {len(timed)}: predicted {predicted:.3f}, measured {cmp.ratio:.3f} (target {target:.3f})")
        return timed[key][2]

    def lands(cmp: LatencyComparison) -> bool:
        return abs(cmp.ratio / target - 1.0) <= tolerance

    dense = {g: table.groups[g][0] for g in allowed}
    floor = {g: pts[0] for g, pts in allowed.items()}
    if table.predict_ratio(floor) > target:  # the table says out of reach: the path ends at the anchor
        anchor = floor
    else:
        anchor, _ = allocate(table, costs, allowed, target)
    smallest = along(2.0, anchor, floor, allowed, dense)
    points, scale = [(0.0, 1.0)], 1.0
    for _ in range(8 * max(1, passes)):  # choosing counts is cheap; timed models are capped by ``passes``
        if len(timed) >= max(1, passes) or any(lands(c) for _, _, c in timed.values()):
            break
        channels = along(scale, anchor, floor, allowed, dense)
        cmp = measure(channels, table.predict_ratio(channels, measure=False))
        points.append((scale, cmp.ratio))
        if channels == smallest and cmp.ratio > target * (1 + tolerance) >= cmp.ci_low:
            cmp = measure(channels, timed[tuple(sorted(channels.items()))][1], again=True)  # too close to call
            points[-1] = (scale, cmp.ratio)
        if channels == smallest and cmp.ratio > target * (1 + tolerance):
            table.save()
            raise UnreachableTarget(
                cmp.ratio,
                f"target={target:.4g}: unreachable; every prunable group at its smallest allowed count measured a "
                f"latency ratio of {cmp.ratio:.3f}; choose a target in ({cmp.ratio:.3f}, 1) or allow more "
                "pruning (max_ratio, a finer grid, larger scanned ratios)",
                models_timed=len(timed),
            )
        scale = next_scale(target, points)
    table.save()
    search_seconds = time.perf_counter() - start
    channels, predicted, cmp = min(timed.values(), key=lambda t: abs(t[2].ratio / target - 1.0))
    record = prune_to(model, example_inputs, channels, criterion, ignore) if channels else PruningRecord()
    return LatencyPruning(
        target=target,
        channels=channels,
        record=record,
        comparison=cmp,
        predicted_ratio=predicted,
        hit=lands(cmp),
        passes=[
            {"channels": dict(c), "predicted_ratio": pr, "measured_ratio": m.ratio, "ci": [m.ci_low, m.ci_high]}
            for c, pr, m in timed.values()
        ],
        table_seconds=table.build_seconds,
        search_seconds=search_seconds,
    )
