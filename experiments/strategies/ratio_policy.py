"""Ratio policies: turn a paper's description ("conv 1 and 8-13 at 50%", "first conv of
each block, 60/30/10% per stage, skipping layers 16, 18, ...") into {module name: ratio}.

Layers are numbered as in Li et al. 2017: convs in forward order from 1 (the stem).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from torch import nn

import pruning
from experiments.checks import ConfigError, check_number, check_ratio
from experiments.models.registry import conv_layers

log = logging.getLogger(__name__)


class RatioPolicy:
    """What the strategy and the results row read of a ratio policy, declared with defaults that a
    policy overrides: whether it needs a sensitivity scan (then it is called ``(model, example,
    scan)``, else ``(model)``), its name in the row, the targets it was given, its static checks
    and numbers only it knows after it ran."""

    needs_scan: bool = False
    policy_name: str = "policy"
    max_drop: float | None = None
    reduction: float | None = None
    resource: str | None = None
    match_uniform: float | None = None

    def validate(self) -> None:
        """Static checks of the policy's settings."""

    def metrics(self) -> dict[str, float]:
        """Numbers only the policy knows (e.g. a latency search's prediction), for the results row."""
        return {}


@dataclass
class ConvIndexRatios(RatioPolicy):
    """{conv layer number (1 = first conv): ratio}; other layers keep their channels."""

    ratios: Mapping[int, float]

    def __call__(self, model: nn.Module) -> dict[str, float]:
        convs = conv_layers(model)
        out = {}
        for index, ratio in self.ratios.items():
            if not 1 <= int(index) <= len(convs):
                raise ConfigError(
                    f"strategy.ratio.ratios names conv layer {index}; the model has convs 1..{len(convs)}"
                )
            out[convs[int(index) - 1]] = check_ratio(f"strategy.ratio.ratios.{index}", ratio)
        return out


@dataclass
class ResNetStageRatios(RatioPolicy):
    """Li et al.'s ResNet rule: prune only the first conv of each residual block, at one
    ratio per stage, skipping the listed (sensitive) layer numbers."""

    stage_ratios: list[float]
    skip: list[int] = field(default_factory=list)
    block_pattern: str = r"layer(\d+)\.\d+\.conv1$"

    def __call__(self, model: nn.Module) -> dict[str, float]:
        convs = conv_layers(model)
        pattern = re.compile(self.block_pattern)
        out = {}
        for number, name in enumerate(convs, start=1):
            match = pattern.search(name)
            if match is None or number in self.skip:
                continue
            stage = int(match.group(1)) - 1
            if stage >= len(self.stage_ratios):
                raise ConfigError(
                    f"strategy.ratio.stage_ratios has {len(self.stage_ratios)} entries but {name!r} is in stage {stage + 1}"
                )
            ratio = check_ratio(f"strategy.ratio.stage_ratios[{stage}]", self.stage_ratios[stage])
            if ratio > 0:
                out[name] = ratio
        if not out:
            raise ConfigError(f"strategy.ratio: no layer matched {self.block_pattern!r}; is this a ResNet?")
        return out


# -- ratios from a sensitivity scan ------------------------------------------------------
@dataclass
class ScanTable:
    """A sensitivity scan as the policies read it: the unpruned metric and rows with
    ``group``, ``ratio``, ``kept``, ``channels``, ``metric`` (higher is better)."""

    base: float
    rows: list[dict]
    placeholder: bool = False  # made up for the dry run, before the baseline exists

    def curves(self) -> dict[str, list[tuple[float, float]]]:
        """``{group: [(ratio, predicted drop), ...]}`` sorted by ratio; the drop is made
        non-decreasing in the ratio (pruning more never predicts less damage)."""
        by_group: dict[str, list[tuple[float, float]]] = {}
        for row in self.rows:
            by_group.setdefault(row["group"], []).append(
                (float(row["ratio"]), max(0.0, self.base - float(row["metric"])))
            )
        out = {}
        for group, points in by_group.items():
            points.sort()
            worst, mono = 0.0, []
            for ratio, drop in points:
                worst = max(worst, drop)
                mono.append((ratio, worst))
            out[group] = mono
        return out

    def sensitivity(self) -> dict[str, float]:
        """Mean predicted drop over the scanned ratios: the ranking 'most sensitive' uses."""
        return {g: sum(d for _, d in pts) / len(pts) for g, pts in self.curves().items()}


def as_scan(result: Any) -> ScanTable:
    """A :class:`ScanTable` from what ``pruning.sensitivity`` returns (or a ScanTable)."""
    if isinstance(result, ScanTable):
        return result
    base = getattr(result, "base_metric", None)
    rows = result.to_records() if hasattr(result, "to_records") else getattr(result, "rows", None)
    if base is None or rows is None:
        raise TypeError(f"cannot read a sensitivity scan from {type(result).__name__}")
    return ScanTable(float(base), [dict(r) for r in rows])


def placeholder_scan(groups: dict[str, tuple[int, int]], ratios: list[float]) -> ScanTable:
    """A scan that predicts no damage anywhere: lets the dry run plan a scan-driven strategy
    before the baseline exists (shapes and feasibility are what it checks)."""
    return ScanTable(
        1.0,
        [
            {"group": g, "ratio": r, "kept": 0, "channels": c, "metric": 1.0}
            for g, (c, _) in groups.items()
            for r in ratios
        ],
        placeholder=True,
    )


class ScanPolicy(RatioPolicy):
    """A ratio policy that needs a sensitivity scan: ``policy(model, example, scan)``."""

    needs_scan = True


@dataclass
class SensitivityMaxDrop(ScanPolicy):
    """Per group, the largest scanned ratio whose accuracy drop without retraining stays at
    or under ``max_drop`` (at that ratio and every smaller one); 0 if none does."""

    max_drop: float = 0.01
    policy_name = "max_drop"

    def validate(self) -> None:
        check_number("strategy.ratio.max_drop", self.max_drop, 0, 1, high_open=True, suffix=" (accuracy, not percent)")

    def __call__(self, model: nn.Module, example: Any, scan: ScanTable) -> dict[str, float]:
        out = {}
        for group, points in scan.curves().items():
            ok = [r for r, d in points if d <= self.max_drop + 1e-12]
            out[group] = max(ok) if ok and ok[0] == points[0][0] else 0.0
        return out


@dataclass
class SensitivityTarget(ScanPolicy):
    """The per-group ratios (among the scanned ones) that remove at least ``reduction`` of
    the model's MACs (or params) with the least summed predicted accuracy drop: a greedy
    allocation by predicted drop per MAC removed, checked by counting the pruned model.
    ``match_uniform`` instead of ``reduction``: remove what one ratio in every group removes
    (the fair opponent of a uniform-ratio run)."""

    reduction: float | None = None
    resource: str = "macs"
    match_uniform: float | None = None

    @property
    def policy_name(self) -> str:
        return f"target_{self.resource}"

    def validate(self) -> None:
        if (self.reduction is None) == (self.match_uniform is None):
            raise ConfigError(
                "strategy.ratio: set exactly one of reduction (a fraction of the MACs/params) and "
                "match_uniform (a uniform ratio whose reduction to match)"
            )
        if self.resource not in ("macs", "params"):
            raise ConfigError(f"strategy.ratio.resource={self.resource!r}: allowed values are 'macs', 'params'")
        if self.match_uniform is not None:
            check_ratio("strategy.ratio.match_uniform", self.match_uniform)
            return
        check_number("strategy.ratio.reduction", self.reduction, 0, 1, low_open=True, high_open=True)

    def _removed(self, model: nn.Module, example: Any, ratios: dict[str, float], full: float) -> float:
        """Fraction of ``full`` that pruning the groups at ``ratios`` removes (counted exactly)."""
        import copy

        active = {g: r for g, r in ratios.items() if r > 0}
        if not active:
            return 0.0
        trial = copy.deepcopy(model)
        pruning.prune_filters(trial, example, active)
        return 1.0 - getattr(pruning.count(trial, example), self.resource) / full

    def _single(self, model: nn.Module, example: Any, scan: ScanTable, full: float) -> dict[tuple[str, float], float]:
        """What each (group, ratio) removes alone: from the scan's rows where it counted it, else counted here."""
        key = f"{self.resource}_removed"
        out = {(row["group"], float(row["ratio"])): row[key] / full for row in scan.rows if key in row}
        for group, points in scan.curves().items():
            for ratio, _ in points:
                if (group, ratio) not in out:
                    out[(group, ratio)] = self._removed(model, example, {group: ratio}, full)
        return out

    def __call__(self, model: nn.Module, example: Any, scan: ScanTable) -> dict[str, float]:
        curves = scan.curves()
        full = getattr(pruning.count(model, example), self.resource)
        wanted = self.reduction
        if self.match_uniform is not None:
            wanted = self._removed(model, example, {g: float(self.match_uniform) for g in curves}, full)
        most = self._removed(model, example, {g: pts[-1][0] for g, pts in curves.items()}, full)
        if most + 1e-9 < wanted:
            raise ConfigError(
                f"strategy.ratio.reduction={wanted}: the scanned groups can remove at most {most:.3f} of the "
                f"{self.resource} (every group at its largest scanned ratio); lower the target or scan larger ratios"
            )
        if scan.placeholder:  # the dry run checks feasibility only; the real scan allocates
            return {g: pts[-1][0] for g, pts in curves.items()}
        single = self._single(model, example, scan, full)
        level = {g: -1 for g in curves}  # index into curves[g]; -1 = unpruned
        target = wanted
        ratios = {g: 0.0 for g in curves}
        for _ in range(50):
            while sum(single[(g, curves[g][i][0])] for g, i in level.items() if i >= 0) < target:
                best = None
                for g, i in level.items():
                    if i + 1 >= len(curves[g]):
                        continue
                    r, d = curves[g][i + 1]
                    gain = single[(g, r)] - (single[(g, curves[g][i][0])] if i >= 0 else 0.0)
                    cost = d - (curves[g][i][1] if i >= 0 else 0.0)
                    key = (cost / gain if gain > 0 else float("inf"), -gain, g)
                    if best is None or key < best[0]:
                        best = (key, g)
                if best is None:
                    break
                level[best[1]] += 1
            ratios = {g: (curves[g][i][0] if i >= 0 else 0.0) for g, i in level.items()}
            exact = self._removed(model, example, ratios, full)
            if exact + 1e-9 >= wanted or all(i + 1 >= len(curves[g]) for g, i in level.items()):
                return ratios
            target += wanted - exact  # coupled groups overlap: ask the estimate for more
        return ratios


# -- ratios that reach a measured latency --------------------------------------------------
DRY_RUN_SLACK = 2 / 3
"""The dry run refuses a target below this share of its predicted floor (off by more than any timing
noise); a target between that and the floor is left to the real search after the baseline."""


@dataclass
class LatencyTarget(ScanPolicy):
    """Per-group channel counts whose *measured* latency is ``target`` x the dense model's at
    ``batch_size`` (``pruning.prune_for_latency``): a greedy over a latency table on a grid of
    ``grid`` channels, costed by the scan's predicted accuracy drop, then timed against the dense
    model and corrected. The run's threads time it; ``cache_dir`` keeps the table's times."""

    target: float = 0.5
    batch_size: int = 1
    grid: int = 8
    max_ratio: float = 0.9
    tolerance: float = 0.05
    passes: int = 6
    max_time_s: float = 20.0
    cache_dir: str | None = None
    policy_name = "latency_target"

    def validate(self) -> None:
        check_number(
            "strategy.ratio.target",
            self.target,
            0,
            1,
            low_open=True,
            high_open=True,
            suffix=" (a latency ratio, pruned / dense)",
        )
        for key in ("batch_size", "grid", "passes"):
            check_number(f"strategy.ratio.{key}", getattr(self, key), 1, integer=True)
        check_number("strategy.ratio.max_ratio", self.max_ratio, 0, 1, low_open=True, high_open=True)
        check_number(
            "strategy.ratio.tolerance",
            self.tolerance,
            0,
            1,
            low_open=True,
            high_open=True,
            suffix=" (relative to target)",
        )

    def __call__(self, model: nn.Module, example: Any, scan: ScanTable) -> dict[str, float]:
        import copy

        dry = scan.placeholder  # the dry run checks reachability with one quick pass
        trial = copy.deepcopy(model)
        try:
            self.result = pruning.prune_for_latency(
                trial,
                example,
                self.target,
                self.batch_size,
                scan.curves(),
                grid=self.grid,
                tolerance=self.tolerance,
                passes=1 if dry else self.passes,
                max_ratio=self.max_ratio,
                cache_dir=self.cache_dir,
                max_time_s=2.0 if dry else self.max_time_s,
            )
        except ValueError as e:
            if dry and isinstance(e, pruning.latency.UnreachableTarget) and self.target >= DRY_RUN_SLACK * e.best:
                # one quick pass on the untrained copy: its timings may be off on a busy machine, so a
                # target near the predicted floor is decided by the real search after the baseline
                log.warning("strategy.ratio.target=%s: the dry run predicts %s; the run checks again", self.target, e)
                return {g: self.max_ratio for g in pruning.group_channels(model, example)}
            why = str(e).split(": ", 1)[1] if str(e).startswith("target=") else str(e)
            raise ConfigError(f"strategy.ratio.target={self.target}: {why}") from e
        groups = pruning.group_channels(model, example)
        out = {}
        for g, (n, prunable) in groups.items():  # ratios of the prunable channels: planned_channels keeps these counts
            kept = self.result.channels.get(g, n)
            out[g] = 1.0 - (kept - (n - prunable)) / prunable if prunable else 0.0
        return out

    def metrics(self) -> dict[str, float]:
        """What the search predicted and measured, for the results row (after the policy ran)."""
        r = getattr(self, "result", None)
        if r is None:
            return {}
        b = self.batch_size
        return {
            "latency/target": r.target,
            f"latency/b{b}/predicted_ratio": r.predicted_ratio,
            f"latency/b{b}/search_measured_ratio": r.comparison.ratio,
            "latency/search_passes": len(r.passes),  # models the search cut and timed
            "latency/table_s": r.table_seconds,
            "latency/search_s": r.search_seconds,
        }
