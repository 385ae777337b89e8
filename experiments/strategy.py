"""Strategies: a composition of small parts (criterion, ratio policy, schedule, retrain mode).

The pipeline asks a strategy three things: ``validate`` it against the built model before
any training, run ``rounds`` prune steps (``prune(model, round)``), and between them
retrain with ``retrain`` (epochs, optimizer, hooks). No class per combination: a new
criterion or schedule is a config value, not a subclass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

import pruning
from experiments.module import LR_SCHEDULES
from experiments.validation import ConfigError, check_choice, check_nonnegative_int, check_ratio


@dataclass
class Retrain:
    """How to retrain after each prune step: a fresh optimizer for ``epochs`` epochs.

    ``distill`` > 0 adds knowledge distillation from the dense baseline (Hinton et al.
    2015): that weight on the teacher's softened outputs at ``temperature``, 1 - distill
    on the labels.
    """

    epochs: int = 1
    optimizer: Callable[..., torch.optim.Optimizer] | None = None
    lr_schedule: str = "constant"
    distill: float = 0.0
    temperature: float = 4.0

    def validate(self, key: str = "strategy.retrain") -> None:
        check_nonnegative_int(f"{key}.epochs", self.epochs)
        check_choice(f"{key}.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if isinstance(self.distill, bool) or not isinstance(self.distill, (int, float)) or not 0 <= self.distill <= 1:
            raise ConfigError(f"{key}.distill={self.distill!r}: must be a number in [0, 1] (0: no distillation)")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            raise ConfigError(f"{key}.temperature={self.temperature!r}: must be a number > 0")
        if self.epochs > 0 and self.optimizer is None:
            raise ConfigError(f"{key}.optimizer is missing: give a _partial_ optimizer, e.g. torch.optim.SGD")


def output_layer_name(model: nn.Module) -> str:
    """Name of the last conv/linear module: the classifier, whose outputs are never pruned."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not names:
        raise ConfigError("the model has no Conv2d or Linear layer to prune")
    return names[-1]


def step_ratio(final_ratio: float, round_index: int, rounds: int) -> float:
    """Fraction of the *remaining* channels to remove at each of ``rounds`` equal steps,
    so that after all rounds ``final_ratio`` of the original channels are gone."""
    del round_index  # equal geometric steps; kept for the schedule signature
    return 1.0 - (1.0 - final_ratio) ** (1.0 / rounds)


class Strategy:
    """What the pipeline calls; defaults are no-ops so a strategy overrides only its parts."""

    name: str
    rounds: int
    retrain: Retrain

    def validate(self, model: nn.Module) -> None:
        raise NotImplementedError

    def prune(self, model: nn.Module, example_inputs: torch.Tensor, round_index: int) -> dict[str, Any]:
        raise NotImplementedError

    def retrain_hooks(self) -> tuple[Callable | None, list[Callable]]:
        """(penalty added to the loss, hooks after each optimizer step) while retraining."""
        return None, []

    def freeze_layers(self, model: nn.Module) -> None:
        """Called before each retraining; set ``requires_grad`` of frozen parameters."""

    def unfreeze(self, model: nn.Module) -> None:
        for p in model.parameters():
            p.requires_grad_(True)

    def storage_options(self, model: nn.Module) -> dict[str, Any]:
        """Options of ``pruning.save_compressed`` for the run's compressed-size measurement."""
        return {"values": "fp32"}

    def structure_record(self) -> pruning.PruningRecord:
        """What was physically removed so far (replayable on a fresh dense model)."""
        return pruning.PruningRecord()


@dataclass
class FilterPruning(Strategy):
    """Structured (filter) pruning: score, remove channels physically, retrain.

    ``ratio``: a float for every prunable layer, {layer_name: ratio}, or a ratio policy
    (a callable ``model -> {layer_name: ratio}``, see ``experiments.ratio_policy``),
    resolved once on the dense model. ``rounds`` > 1 prunes iteratively in equal
    geometric steps with retraining in between.
    """

    name: str = "filter"
    criterion: Any = "l1"
    ratio: float | Mapping[str, float] = 0.5
    ignore: tuple[str, ...] = ()
    round_to: int = 1
    rounds: int = 1
    retrain: Retrain = field(default_factory=Retrain)
    record: pruning.PruningRecord = field(default_factory=pruning.PruningRecord, init=False, repr=False)

    def validate(self, model: nn.Module) -> None:
        """Reject bad values before training: ratios, rounds, unknown layers, empty layers."""
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"strategy.rounds={self.rounds!r}: must be an integer >= 1")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"strategy.round_to={self.round_to!r}: must be an integer >= 1")
        self.retrain.validate()
        if isinstance(self.criterion, str):
            check_choice("strategy.criterion", self.criterion, pruning.criterion_names())
        if callable(self.ratio):
            self.ratio = self.ratio(model)
        modules = dict(model.named_modules())
        for name in self.ignore:
            if name not in modules:
                raise ConfigError(f"strategy.ignore names {name!r}, which is not a module of the model")
        ratios = self._ratios_by_layer(model)
        for layer, ratio in ratios.items():
            module = modules[layer]
            channels = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
            kept = math.floor(channels * (1 - ratio))
            if kept < 1:
                raise ConfigError(
                    f"strategy.ratio={ratio} would leave layer {layer!r} with 0 of its {channels} channels "
                    f"(kept = floor({channels} * (1 - {ratio}))); use a ratio below {1 - 1 / channels:.4f}"
                )

    def _ratios_by_layer(self, model: nn.Module) -> dict[str, float]:
        last = output_layer_name(model)
        prunable = [
            n for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and n != last and n not in self.ignore
        ]
        if isinstance(self.ratio, Mapping):
            out = {}
            for layer, ratio in self.ratio.items():
                if layer not in prunable:
                    raise ConfigError(
                        f"strategy.ratio names layer {layer!r}, which is not a prunable layer; "
                        f"prunable layers: {', '.join(prunable)}"
                    )
                out[layer] = check_ratio(f"strategy.ratio.{layer}", ratio)
            return out
        ratio = check_ratio("strategy.ratio", self.ratio)
        return {n: ratio for n in prunable}

    def prune(self, model: nn.Module, example_inputs: torch.Tensor, round_index: int) -> dict[str, Any]:
        """One prune step in place; returns the JSON record of what was removed."""
        if isinstance(self.ratio, Mapping):
            ratio: Any = {k: step_ratio(float(v), round_index, self.rounds) for k, v in self.ratio.items()}
        else:
            ratio = step_ratio(float(self.ratio), round_index, self.rounds)
        record = pruning.prune_filters(
            model, example_inputs, ratio, criterion=self.criterion, ignore=tuple(self.ignore), round_to=self.round_to
        )
        self.record = self.record + record
        return record.to_dict()

    def structure_record(self) -> pruning.PruningRecord:
        return self.record
