"""The strategy protocol the pipeline calls and the parts every strategy shares.

The pipeline knows one protocol (:class:`Strategy`): ``validate`` static values, say
whether a sensitivity ``scan`` is wanted, ``plan`` the steps (see ``experiments.strategies.plan``),
and report ``parts`` (named columns of the results row), ``metrics`` (numbers only the strategy
knows), ``tables`` (per-layer data), ``storage_options`` and the ``structure_record``.
:class:`Retrain` and :class:`Scan` are the retraining and sensitivity-scan parts; ``freeze_spec``
reads a freeze policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

import pruning
from experiments.checks import ConfigError, check_choice, check_nonnegative_int, check_number, check_ratio
from experiments.strategies.plan import Runtime, Step
from experiments.training.context import BaselineRecipe
from experiments.training.module import LR_SCHEDULES

RETRAIN_MODES = ("finetune", "scratch_e", "scratch_b", "none")
RETRAIN_LR_SCHEDULES = (*LR_SCHEDULES, "rewind")
SELECT_CHOICES = ("last", "best_val")
BUDGETS = ("total", "per_step")
BASELINE_EPOCHS = "baseline"
"""``retrain.epochs: baseline``: as many epochs as the baseline trained (with ``baseline.epochs=auto``,
those its plateau rule stopped at), known only once it has trained."""


@dataclass
class Retrain:
    """How to retrain: a fresh optimizer for ``epochs`` epochs. ``budget`` says what a filter
    schedule with several steps does with them: ``total`` splits the ``epochs`` across its
    steps (equal total optimizer steps), ``per_step`` gives every step ``epochs`` (Li et al.
    and Han et al. retrain fully after each step; weight-pruning rounds always do).
    ``mode``: ``finetune`` the surviving weights,
    ``scratch_e`` / ``scratch_b`` re-initialise the pruned architecture and train it with the
    baseline's optimizer and lr schedule for the baseline's epochs (E) or those epochs times
    baseline MACs / pruned MACs, at most ``scratch_cap`` times (B, Liu et al. 2019; ``None``:
    uncapped, the baseline's MACs exactly), or
    ``none``. ``distill`` > 0 adds distillation from the dense baseline (Hinton et al. 2015);
    ``label_smoothing`` smooths the cross-entropy targets (Szegedy et al. 2016); ``select``
    keeps the ``last`` weights of the phase or those of its epoch with the best validation
    accuracy (``best_val``). ``lr_schedule=rewind`` is learning-rate rewinding (Renda et al.
    2020): fine-tune with the baseline's optimizer and its lr schedule replayed from
    ``rewind_epoch`` on (``None``: the baseline's epochs minus ``epochs``, so the replay ends
    where the baseline's schedule ended), ignoring ``optimizer``.
    ``epochs: baseline`` retrains for the epochs the baseline trained (:meth:`follow_baseline`
    sets them when the plan is made; ``follows_baseline`` then says so).
    """

    epochs: int | str = 1
    optimizer: Callable[..., torch.optim.Optimizer] | None = None
    lr_schedule: str = "constant"
    distill: float = 0.0
    temperature: float = 4.0
    mode: str = "finetune"
    scratch_cap: float | None = 2.0
    budget: str = "total"
    label_smoothing: float = 0.0
    select: str = "last"
    rewind_epoch: int | None = None
    follows_baseline: bool = field(default=False, init=False)

    def validate(self, key: str = "strategy.retrain") -> None:
        check_retrain_epochs(f"{key}.epochs", self.epochs)
        check_choice(f"{key}.lr_schedule", self.lr_schedule, RETRAIN_LR_SCHEDULES)
        if self.rewind_epoch is not None:
            check_nonnegative_int(f"{key}.rewind_epoch", self.rewind_epoch)
            if self.lr_schedule != "rewind":
                raise ConfigError(
                    f"{key}.rewind_epoch={self.rewind_epoch} is read only with {key}.lr_schedule=rewind "
                    f"(it is {self.lr_schedule!r}): set the schedule to rewind or the epoch to null"
                )
        check_choice(f"{key}.mode", self.mode, RETRAIN_MODES)
        check_number(f"{key}.distill", self.distill, 0, 1, suffix=" (0: no distillation)")
        check_number(f"{key}.temperature", self.temperature, 0, low_open=True)
        check_choice(f"{key}.select", self.select, SELECT_CHOICES)
        check_number(f"{key}.label_smoothing", self.label_smoothing, 0, 1, high_open=True, suffix=" (0: off)")
        check_choice(f"{key}.budget", self.budget, BUDGETS)
        if self.scratch_cap is not None:
            check_number(f"{key}.scratch_cap", self.scratch_cap, 1, suffix=", or null (uncapped)")
        trains = self.epochs == BASELINE_EPOCHS or self.epochs > 0
        if trains and self.mode == "finetune" and self.optimizer is None and self.lr_schedule != "rewind":
            raise ConfigError(f"{key}.optimizer is missing: give a _partial_ optimizer, e.g. torch.optim.SGD")

    def follow_baseline(self, baseline: BaselineRecipe | None, key: str = "strategy.retrain") -> None:
        """``epochs: baseline`` -> the baseline's epochs in ``baseline`` (the recipe as it trained;
        before it has, an ``auto`` baseline's cap, the most it may train, which the dry run checks)."""
        if self.epochs != BASELINE_EPOCHS and not self.follows_baseline:
            return
        if baseline is None:
            raise ConfigError(f"{key}.epochs=baseline repeats the baseline's epochs, but this run has no baseline")
        self.epochs, self.follows_baseline = int(baseline.epochs), True

    @property
    def epochs_given(self) -> int | str:
        """``epochs`` as configured: ``baseline`` when they follow the baseline's, else the number."""
        return BASELINE_EPOCHS if self.follows_baseline else self.epochs


def check_retrain_epochs(key: str, value: Any) -> int | str:
    """An integer >= 0 or ``baseline``; ``auto`` (``${baseline.epochs}`` of an ``auto`` baseline) is
    refused with the word to use, since the interpolation cannot know the epochs before training."""
    if value == BASELINE_EPOCHS:
        return value
    hint = ": write baseline for the epochs an auto baseline trains" if value == "auto" else ""
    return check_number(key, value, 0, integer=True, suffix=f" or {BASELINE_EPOCHS} (the baseline's epochs){hint}")


def follow_baseline(strategy: Any, baseline: BaselineRecipe | None) -> None:
    """Set every retraining part of ``strategy`` (``strategy.<name>``, a :class:`Retrain`) given
    ``epochs: baseline`` to the epochs of ``baseline``; a plan calls it first, so the dry run
    checks the plan with the baseline's configured epochs (an ``auto`` baseline's cap) and the
    run plans with those it trained."""
    for name, value in vars(strategy).items():
        if isinstance(value, Retrain):
            value.follow_baseline(baseline, f"strategy.{name}")


@dataclass
class Scan:
    """A sensitivity scan on the trained baseline (each group alone, no retraining), run
    when a ratio policy, a freeze policy or a layer order asks for one. ``criteria``: more
    criteria to scan the same way (Li et al. Fig. 2c: smallest L1 vs random vs largest), each
    stored in the run's ``sensitivity_criteria`` table with a ``criterion`` column; the
    strategy's own criterion drives the policies."""

    ratios: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    images: int = 1000
    batch_size: int = 250
    criteria: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if not self.ratios:
            raise ConfigError("strategy.scan.ratios is empty: give ratios in (0, 1), e.g. [0.25, 0.5, 0.75]")
        for r in self.ratios:
            if check_ratio("strategy.scan.ratios", r) == 0:
                raise ConfigError("strategy.scan.ratios contains 0: scan ratios must be in (0, 1)")
        for key in ("images", "batch_size"):
            if check_nonnegative_int(f"strategy.scan.{key}", getattr(self, key)) < 1:
                raise ConfigError(f"strategy.scan.{key}={getattr(self, key)}: must be an integer >= 1")
        if not isinstance(self.criteria, (list, tuple)):
            raise ConfigError(f"strategy.scan.criteria={self.criteria!r}: must be a list of criterion names")
        for name in self.criteria:
            check_choice("strategy.scan.criteria", name, pruning.criteria.criterion_names())
        if len(set(self.criteria)) != len(self.criteria):
            raise ConfigError(f"strategy.scan.criteria={list(self.criteria)}: names a criterion twice")


class Strategy:
    """What the pipeline calls. Defaults are no-ops, so a strategy overrides only its parts."""

    name: str = "strategy"
    scan: Scan | None = None

    def validate(self, model: nn.Module) -> None:
        """Static checks of the settings against the built model (before any training)."""

    def plan(self, model: nn.Module, rt: Runtime) -> list[Step]:
        raise NotImplementedError

    def sensitivity_scan(self, model: nn.Module, rt: Runtime) -> Any:
        """The scan the plan reads (``rt.scan``); asked for only when ``scan`` is set."""
        raise NotImplementedError

    def parts(self) -> dict[str, Any]:
        """The strategy's parts as named columns of the results row."""
        return {}

    def metrics(self) -> dict[str, float]:
        """Numbers only the strategy knows (e.g. a latency search's prediction), for the results row."""
        return {}

    def tables(self, model: nn.Module) -> dict[str, Any]:
        """Per-layer tables of the final model (JSON-able lists of rows)."""
        return {}

    def storage_options(self, model: nn.Module) -> dict[str, Any]:
        """Options of ``pruning.save_compressed`` for the run's compressed-size measurement."""
        return {"values": "fp32"}

    def structure_record(self) -> pruning.PruningRecord:
        """What was physically removed so far (replayable on a fresh dense model)."""
        return pruning.PruningRecord()


def output_layer_name(model: nn.Module) -> str:
    """Name of the last conv/linear module: the classifier, whose outputs are never pruned."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not names:
        raise ConfigError("the model has no Conv2d or Linear layer to prune")
    return names[-1]


def freeze_spec(freeze: Any) -> tuple[list[str], int]:
    """``(module names, k most sensitive)`` from ``null``, a list of names, or ``{most_sensitive: k}``."""
    if freeze is None or freeze == [] or freeze == "none":
        return [], 0
    if isinstance(freeze, str):
        return [freeze], 0
    if isinstance(freeze, Mapping):
        unknown = set(freeze) - {"most_sensitive"}
        if unknown:
            raise ConfigError(
                f"strategy.freeze has unknown keys {sorted(unknown)}: use a list of module names or "
                "{most_sensitive: k}"
            )
        k = freeze.get("most_sensitive")
        check_number("strategy.freeze.most_sensitive", k, 1, integer=True)
        return [], k
    if isinstance(freeze, (list, tuple)) and all(isinstance(n, str) for n in freeze):
        return list(freeze), 0
    raise ConfigError(f"strategy.freeze={freeze!r}: use null, a list of module names, or {{most_sensitive: k}}")


def optimizer_parts(optimizer: Any) -> tuple[str | None, float | None]:
    """``(class name, lr)`` of a (partial) optimizer factory, for the results row: arms that
    train at another lr or with another optimizer must say so next to their verdicts."""
    if optimizer is None:
        return None, None
    func = getattr(optimizer, "func", optimizer)
    keywords = getattr(optimizer, "keywords", None) or {}
    lr = keywords.get("lr")
    return getattr(func, "__name__", type(func).__name__), float(lr) if isinstance(lr, (int, float)) else None
