"""The settings of a filter-pruning strategy and their static checks against the built model.

:class:`FilterSettings` holds the parts (``experiments.strategies.filters.FilterPruning`` plans
from them); what needs no data is checked here, each error naming the key and what to do; the
dry run of the plan (``experiments.strategies.plan.dry_run``) checks the rest by cutting for real.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

from torch import nn

import pruning
from experiments.checks import ConfigError, check_choice, check_nonnegative_int, check_number, check_ratio
from experiments.strategies.parts import Retrain, Scan, Strategy, freeze_spec, output_layer_name
from experiments.strategies.ratio_policy import RatioPolicy

SCHEDULES = ("oneshot", "iterative", "layerwise")
ORDERS = ("forward", "backward", "least_sensitive_first")
FREEZE_BN = ("fixed", "update")


@dataclass
class FilterSettings(Strategy):
    """The parts of structured (filter) pruning: score, remove channels physically, retrain.

    ``ratio``: a float for every prunable layer, ``{layer: ratio}``, a ratio policy
    (``model -> {layer: ratio}``, see ``experiments.strategies.ratio_policy``) or a scan policy
    (``SensitivityMaxDrop``, ``SensitivityTarget``). ``schedule`` reaches the planned kept
    counts at once, in ``rounds`` geometric steps over all groups, or one group at a time in
    ``order``; ``retrain.budget`` says whether ``retrain.epochs`` is split across the steps
    (``total``) or given to each (``per_step``). ``recalibrate_bn`` > 0 re-estimates
    BatchNorm statistics on that many training batches after each prune step.
    ``skip_sensitive`` = k leaves the k groups the scan ranks most sensitive unpruned and
    prunes the others at the one ratio whose removed MACs come closest to those of ``ratio``
    everywhere (``match=macs``: at least as many, topped up by single channels).
    ``freeze_bn``: the BatchNorm statistics of frozen layers stay ``fixed`` or ``update``.
    ``scope``: ``group`` (one ratio per group) or ``global`` (``ratio`` of all prunable channels,
    ranked together by per-group normalised scores, no group losing more than ``max_ratio``;
    ``match=macs``: the global ratio that removes the MACs of ``ratio`` in every group).
    """

    name: str = "filter"
    criterion: Any = "l1"
    ratio: Any = 0.5
    ignore: tuple[str, ...] = ()
    round_to: int | str = 1  # or "auto": per group the channel multiple a latency table times fastest
    schedule: str = "oneshot"
    rounds: int = 1
    order: str = "forward"
    scoring: str = "independent"
    freeze: Any = None
    freeze_bn: str = "fixed"
    skip_sensitive: int = 0
    recalibrate_bn: int = 0
    scan: Scan | None = None
    calibration_batches: int = 4
    scope: str = "group"
    max_ratio: float = 0.9
    match: str | None = None
    retrain: Retrain = field(default_factory=Retrain)

    def validate(self, model: nn.Module) -> None:
        check_filter_pruning(self, model)

    def ratio_policy(self) -> RatioPolicy:
        """The ratio's declared policy hooks; a float, a mapping or a plain callable has the defaults."""
        return self.ratio if isinstance(self.ratio, RatioPolicy) else RatioPolicy()


def layer_ratios(model: nn.Module, ratio: Any, ignore: tuple[str, ...] = ()) -> dict[str, float]:
    """``{layer: ratio}`` of a float (every prunable layer) or a mapping (its layers, which must
    be prunable: a conv or linear that is not the output layer nor in ``ignore``)."""
    last = output_layer_name(model)
    prunable = [
        n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n != last and n not in ignore
    ]
    if isinstance(ratio, Mapping):
        out = {}
        for layer, r in ratio.items():
            if layer not in prunable:
                raise ConfigError(
                    f"strategy.ratio names layer {layer!r}, which is not a prunable layer; "
                    f"prunable layers: {', '.join(prunable)}"
                )
            out[layer] = check_ratio(f"strategy.ratio.{layer}", r)
        return out
    r = check_ratio("strategy.ratio", ratio)
    return {n: r for n in prunable}


def check_filter_pruning(s: FilterSettings, model: nn.Module) -> None:
    """Reject bad or contradictory parts of ``s`` (schedule, rounds, round_to, criterion, retrain,
    freeze, recalibration, skip, scan, ignore, ratios) for ``model``."""
    check_choice("strategy.schedule", s.schedule, SCHEDULES)
    check_choice("strategy.order", s.order, ORDERS)
    check_choice("strategy.scoring", s.scoring, pruning.structured.SCORINGS)
    check_choice("strategy.scope", s.scope, pruning.structured.SCOPES)
    check_number("strategy.max_ratio", s.max_ratio, 0, 1, low_open=True, high_open=True)
    check_choice("strategy.match", s.match, (None, "macs"))
    if s.match is not None and s.scope != "global" and not s.skip_sensitive:
        raise ConfigError(
            f"strategy.match={s.match} matches a global ranking or the groups strategy.skip_sensitive leaves to the "
            "uniform ratio: needs strategy.scope=global or strategy.skip_sensitive > 0"
        )
    if s.scope == "global" and (
        isinstance(s.ratio, bool) or not isinstance(s.ratio, numbers.Real) or s.skip_sensitive or s.round_to == "auto"
    ):
        raise ConfigError(
            f"strategy.scope=global takes one float strategy.ratio (not {s.ratio!r}), an integer strategy.round_to "
            "and no strategy.skip_sensitive"
        )
    check_number("strategy.rounds", s.rounds, 1, integer=True)
    if s.schedule != "iterative" and s.rounds > 1:
        raise ConfigError(
            f"strategy.rounds={s.rounds} with strategy.schedule={s.schedule}: rounds > 1 "
            "needs schedule=iterative (layerwise prunes each group once, in strategy.order)"
        )
    if s.round_to != "auto":
        check_number("strategy.round_to", s.round_to, 1, integer=True, suffix=" or 'auto'")
    if check_nonnegative_int("strategy.calibration_batches", s.calibration_batches) < 1:
        raise ConfigError("strategy.calibration_batches=0: data-driven criteria need at least 1 batch")
    s.retrain.validate()
    if isinstance(s.criterion, str):
        check_choice("strategy.criterion", s.criterion, pruning.criteria.criterion_names())
    if s.retrain.mode.startswith("scratch") and s.schedule != "oneshot":
        raise ConfigError(
            f"strategy.retrain.mode={s.retrain.mode} trains the pruned architecture from scratch "
            f"once: use strategy.schedule=oneshot (not {s.schedule})"
        )
    names, k = freeze_spec(s.freeze)
    if (names or k) and s.retrain.mode != "finetune":
        raise ConfigError(
            f"strategy.freeze with strategy.retrain.mode={s.retrain.mode}: freezing applies to fine-tuning only"
        )
    check_choice("strategy.freeze_bn", s.freeze_bn, FREEZE_BN)
    if s.freeze_bn != "fixed" and not (names or k):
        raise ConfigError(f"strategy.freeze_bn={s.freeze_bn} needs strategy.freeze (nothing is frozen)")
    if check_nonnegative_int("strategy.recalibrate_bn", s.recalibrate_bn) and not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        raise ConfigError(
            f"strategy.recalibrate_bn={s.recalibrate_bn}: the model has no BatchNorm layer to recalibrate; use 0"
        )
    if check_nonnegative_int("strategy.skip_sensitive", s.skip_sensitive) and (
        isinstance(s.ratio, bool) or not isinstance(s.ratio, numbers.Real)
    ):
        raise ConfigError(
            f"strategy.skip_sensitive={s.skip_sensitive} needs one strategy.ratio for every group "
            f"(a float, the uniform arm it matches), not {s.ratio!r}"
        )
    if s.skip_sensitive and not isinstance(s.round_to, int):
        raise ConfigError(
            f"strategy.skip_sensitive={s.skip_sensitive} with strategy.round_to={s.round_to!r}: the MAC "
            "matching needs an integer round_to"
        )
    wants = [
        w
        for w, need in (
            ("strategy.skip_sensitive", s.skip_sensitive > 0),
            ("strategy.freeze.most_sensitive", k > 0),
            ("strategy.ratio", s.ratio_policy().needs_scan),
            (
                "strategy.order=least_sensitive_first",
                s.order == "least_sensitive_first" and s.schedule == "layerwise",
            ),
        )
        if need
    ]
    if wants and s.scan is None:
        raise ConfigError(
            f"{wants[0]} needs a sensitivity scan: set strategy.scan (e.g. strategy=l1_sensitivity has one) or drop it"
        )
    if s.scan is not None:
        s.scan.validate()
    s.ratio_policy().validate()
    modules = dict(model.named_modules())
    for name in s.ignore:
        if name not in modules:
            raise ConfigError(f"strategy.ignore names {name!r}, which is not a module of the model")
    if not callable(s.ratio):
        for layer, ratio in layer_ratios(model, s.ratio, s.ignore).items():
            module = modules[layer]
            channels = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
            if math.floor(channels * (1 - ratio)) < 1:
                raise ConfigError(
                    f"strategy.ratio={ratio} would leave layer {layer!r} with 0 of its {channels} channels "
                    f"(kept = floor({channels} * (1 - {ratio}))); use a ratio below {1 - 1 / channels:.4f}"
                )
