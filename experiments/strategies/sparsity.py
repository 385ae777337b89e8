"""Sparsity training as a strategy part: train the baseline towards removable channels, then cut.

:class:`SparsityPruning` is filter pruning (:class:`~experiments.strategies.filters.FilterPruning`,
every part of it: criterion, ratio, schedule, retrain mode) with one more part, ``sparsity``,
whose steps come *before* the cut:

* :class:`BatchNormL1`: network slimming (Liu et al. 2017): L1 on the BatchNorm scales,
  then prune by ``bn_gamma``, per group or with one threshold over all groups (``scope``);
* :class:`GroupNormSparsity`: DepGraph-style group sparsity (Fang et al. 2023): the group
  lasso over each group's coupled parameters (every member, not only the conv), its
  coefficient ramped up from 0, then prune by ``group_norm``;
* :class:`SoftFilterPruning`: soft filter pruning (He et al. 2018): the lowest-norm filters of
  each group are zeroed at the start and at the end of every epoch but keep training (they
  can recover), then the zeroed ones are cut (``l2``, the same counts).

The papers sparsity-train from scratch (or from a pretrained model for SFP). Here the
baseline is trained once per seed and shared by every arm of a study (cached), so the
sparsity training is a ``Train`` step *after* the baseline: ``sparsity.epochs`` more
epochs of training with the term, then the cut and ``retrain.epochs`` of fine-tuning.
Its epochs count in the row's retraining budget (``epochs_budget``, ``retrain/epochs``), so
an arm that sparsity-trains for 1 epoch and fine-tunes for 1 spends what ``l1_oneshot``
spends fine-tuning for 2. The pipeline is unchanged: these are planned steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

import pruning
from experiments.checks import ConfigError, check_choice, check_number
from experiments.strategies.filters import FilterPruning
from experiments.strategies.parts import Retrain
from experiments.strategies.plan import Measure, Prune, Runtime, Step, Train

SCOPES = ("group", "global")
Hooks = tuple[Callable[[nn.Module], torch.Tensor] | None, list[Callable[[nn.Module], None]]]
PrunedGroups = Callable[[nn.Module, Runtime], list[tuple[pruning.graph.ChannelGroup, int]]]  # each with its kept


@dataclass
class SparsityTraining:
    """What every sparsity part shares: ``epochs`` of training with ``optimizer`` (a partial)
    and ``lr_schedule``, starting from the trained baseline. A method overrides the hooks it
    needs (``hooks``, ``needs_norm``, ``check``, ``steps_before``, ``strength``, ``parts``);
    :class:`SparsityPruning` calls only these."""

    epochs: int = 1
    optimizer: Any = None
    lr_schedule: str = "cosine"
    name: ClassVar[str] = "sparsity"
    needs_norm: ClassVar[bool] = False  # it penalises normalisation scales: a pruned group must have one

    def validate(self) -> None:
        self.training().validate("strategy.sparsity")

    def check(self, criterion: Any, scope: str) -> None:
        """Reject the strategy's ``criterion`` or ``scope`` if the method cannot work with it."""

    def steps_before(self, groups: PrunedGroups, criterion: Any) -> list[Step]:
        """Steps the method adds before its training (after the ``share_before`` measurement)."""
        return []

    def training(self) -> Retrain:
        """The training settings as the ``Train`` step reads them (no distillation, last weights)."""
        return Retrain(epochs=self.epochs, optimizer=self.optimizer, lr_schedule=self.lr_schedule)

    def strength(self) -> float | None:
        """The coefficient of the term (the results row's ``sparsity_strength``)."""
        return None

    def parts(self) -> dict[str, Any]:
        """The method's columns of the results row."""
        return {
            "sparsity": self.name,
            "sparsity_strength": self.strength(),
            "sparsity_epochs": self.epochs,
            "sparsity_ramp": None,
        }

    def hooks(
        self, groups: list[pruning.graph.ChannelGroup], keep: dict[int, int], rt: Runtime, criterion: Any
    ) -> Hooks:
        """``(penalty, after_step hooks)`` for the training loop; ``groups`` are the groups the
        strategy prunes, ``keep`` their prunable channels kept."""
        raise NotImplementedError


@dataclass
class BatchNormL1(SparsityTraining):
    """Network slimming: ``l1 * sum |gamma|`` over the normalisation scales of the pruned
    groups added to the loss (Liu et al. use 1e-4 on CIFAR VGG for 160 epochs from scratch)."""

    l1: float = 1e-4
    name = "bn_l1"
    needs_norm = True

    def validate(self) -> None:
        check_number("strategy.sparsity.l1", self.l1, 0)
        super().validate()

    def strength(self) -> float:
        return float(self.l1)

    def hooks(
        self, groups: list[pruning.graph.ChannelGroup], keep: dict[int, int], rt: Runtime, criterion: Any
    ) -> Hooks:
        gammas = pruning.structured.norm_scales(groups)
        coefficient = float(self.l1)
        if coefficient == 0 or not gammas:
            return None, []
        return (lambda model: coefficient * pruning.structured.l1_penalty(gammas)), []


@dataclass
class GroupNormSparsity(SparsityTraining):
    """Group lasso over each pruned group's coupled parameters (``pruning.structured.GroupLasso``), its
    coefficient rising linearly from 0 to ``reg`` over the first ``ramp`` fraction of the
    sparsity training (0: ``reg`` from the first step), then constant."""

    reg: float = 1e-4
    ramp: float = 1.0
    bias: bool = True
    name = "group_lasso"

    def validate(self) -> None:
        check_number("strategy.sparsity.reg", self.reg, 0)
        check_number("strategy.sparsity.ramp", self.ramp, 0, 1)
        if not isinstance(self.bias, bool):
            raise ConfigError(f"strategy.sparsity.bias={self.bias!r}: must be true or false")
        super().validate()

    def strength(self) -> float:
        return float(self.reg)

    def parts(self) -> dict[str, Any]:
        return {**super().parts(), "sparsity_ramp": self.ramp}

    def coefficient(self, step: int, total: int) -> float:
        """The coefficient at optimizer step ``step`` (0-based) of ``total``."""
        ramp = self.ramp * total
        return float(self.reg) * (min(1.0, step / ramp) if ramp > 0 else 1.0)

    def hooks(
        self, groups: list[pruning.graph.ChannelGroup], keep: dict[int, int], rt: Runtime, criterion: Any
    ) -> Hooks:
        if self.reg == 0:
            return None, []
        lasso = pruning.structured.GroupLasso(groups, bias=self.bias)
        total = self.epochs * rt.steps_per_epoch()
        step = 0

        def penalty(model: nn.Module) -> torch.Tensor:
            return self.coefficient(step, total) * lasso()

        def advance(model: nn.Module) -> None:
            nonlocal step
            step += 1

        return penalty, [advance]


@dataclass
class SoftFilterPruning(SparsityTraining):
    """He et al.'s soft filter pruning: the filters the strategy's norm criterion ranks lowest,
    as many per group as the cut will remove, are zeroed before the first epoch and at the end
    of every epoch; their gradients are not masked, so they may grow back and others may be
    zeroed instead. The cut then removes the filters zeroed last."""

    name = "soft_filter"
    criteria: ClassVar[tuple[str, ...]] = ("l1", "l2")  # only a filter norm makes the cut remove the zeroed ones

    def check(self, criterion: Any, scope: str) -> None:
        if criterion not in self.criteria:
            raise ConfigError(
                f"strategy.criterion={criterion!r} with soft filter pruning: the cut must remove "
                f"the zeroed filters, which only a filter norm guarantees; allowed values are {self.criteria}"
            )
        if scope != "group":
            raise ConfigError("strategy.scope=global with soft filter pruning: it zeroes per group, use scope=group")

    def steps_before(self, groups: PrunedGroups, criterion: Any) -> list[Step]:
        """Zero the filters once before the first epoch."""

        def apply(model: nn.Module, rt: Runtime) -> dict[str, Any]:
            pruned = groups(model, rt)
            zeroed = pruning.structured.soft_prune_([g for g, _ in pruned], {g.index: k for g, k in pruned}, criterion)
            names = {g.index: pruning.structured.group_name(g) for g, _ in pruned}
            return {"kind": "soft", "zeroed": {names[i]: c.tolist() for i, c in zeroed.items()}}

        return [Prune("soft_prune", apply)]

    def hooks(
        self, groups: list[pruning.graph.ChannelGroup], keep: dict[int, int], rt: Runtime, criterion: Any
    ) -> Hooks:
        per_epoch = max(1, rt.steps_per_epoch())
        step = 0

        def at_epoch_end(model: nn.Module) -> None:
            nonlocal step
            step += 1
            if step % per_epoch == 0:
                pruning.structured.soft_prune_(groups, keep, criterion)

        return None, [at_epoch_end]


@dataclass
class RemovedShare(Step):
    """How much of the criterion's score the channels the cut will remove hold, before and
    after the sparsity training (the run's ``sparsity`` table; the mean over groups is the
    ``sparse`` phase's ``removed_share_before`` / ``removed_share``). Skipped in the dry run."""

    label: str
    strategy: SparsityPruning
    targets: dict[str, int]
    criterion: Any

    def run(self, model: nn.Module, rt: Runtime) -> None:
        if rt.dry:
            return
        when = "before" if self.label.endswith("before") else "after"
        shares = self.strategy.removed_share(model, rt, self.targets, self.criterion)
        self.strategy.shares[when] = shares
        if when == "after" and "sparse" in rt.phases:
            mean = lambda d: sum(d.values()) / len(d) if d else None  # noqa: E731
            rt.phases["sparse"].metrics["removed_share"] = mean(shares)
            rt.phases["sparse"].metrics["removed_share_before"] = mean(self.strategy.shares.get("before", {}))


@dataclass
class SparsityPruning(FilterPruning):
    """Filter pruning after sparsity training (the module docstring has the methods).

    ``scope``: ``group`` keeps in every group what the ratio keeps (the architecture of
    ``l1_oneshot`` at the same ratio); ``global`` removes the same total number of channels
    but chooses them by one ranking over all groups (Liu et al.'s single gamma threshold), so
    the architecture, and the MACs, differ. Every group keeps at least one channel.
    """

    name: str = "sparsity"
    sparsity: Any = None
    scope: str = "group"
    shares: dict[str, dict[str, float]] = field(default_factory=dict, init=False, repr=False)
    global_kept: dict[str, int] | None = field(default=None, init=False, repr=False)

    def validate(self, model: nn.Module) -> None:
        super().validate(model)
        if self.sparsity is None or not isinstance(self.sparsity, SparsityTraining):
            raise ConfigError(
                f"strategy.sparsity={self.sparsity!r}: give a sparsity part (_target_: "
                "experiments.strategies.sparsity.BatchNormL1, GroupNormSparsity or SoftFilterPruning)"
            )
        self.sparsity.validate()
        check_choice("strategy.scope", self.scope, SCOPES)
        if self.scope == "global" and self.schedule != "oneshot":
            raise ConfigError(
                f"strategy.scope=global with strategy.schedule={self.schedule}: a global ranking "
                "plans one cut, use strategy.schedule=oneshot"
            )
        self.sparsity.check(self.criterion, self.scope)

    # -- planning ---------------------------------------------------------------------------
    def plan(self, model: nn.Module, rt: Runtime) -> list[Step]:
        steps = super().plan(model, rt)
        criterion = self.make_criterion(rt)
        targets = dict(self.planned.targets)
        pruned = self._groups(model, rt, targets)
        if self.sparsity.needs_norm and not any(m.role == "norm" for g, _ in pruned for m in g.members):
            raise ConfigError(
                f"strategy={self.name}: no pruned group of this model has a BatchNorm/LayerNorm scale "
                "to penalise and rank (bn_gamma); use a model with BatchNorm or strategy=group_norm"
            )
        if self.scope == "global":
            steps = [Prune(s.label, self._global_prune(criterion)) if isinstance(s, Prune) else s for s in steps]
        self.global_kept = None

        def hooks() -> Hooks:
            groups = self._groups(model, rt, targets)  # traced again: the weights are the trained ones
            return self.sparsity.hooks([g for g, _ in groups], {g.index: k for g, k in groups}, rt, criterion)

        self.shares = {}
        before: list[Step] = [RemovedShare("sparsity/share_before", self, targets, criterion)]
        before += self.sparsity.steps_before(lambda m, r: self._groups(m, r, targets), criterion)
        before.append(Train("sparsity", self.sparsity.training(), epochs=self.sparsity.epochs, hooks=hooks))
        before.append(Measure("sparse", full=False))
        before.append(RemovedShare("sparsity/share_after", self, targets, criterion))
        return before + steps

    def plan_channels(self, model: nn.Module, rt: Runtime, ratio: Any) -> dict[str, tuple[int, int]]:
        """Per group, whatever the scope: a global scope re-ranks the trained scores at the cut."""
        return pruning.planned_channels(model, rt.example, ratio, self.ignore, self.round_to)

    def _groups(
        self, model: nn.Module, rt: Runtime, targets: dict[str, int]
    ) -> list[tuple[pruning.graph.ChannelGroup, int]]:
        """The groups the plan prunes, each with its prunable channels kept."""
        graph = pruning.graph.build_graph(model, rt.example, tuple(self.ignore))
        out = []
        for g in graph.groups:
            name = pruning.structured.group_name(g)
            if name in targets:
                out.append((g, targets[name] - (g.n_channels - g.n_prunable)))
        return out

    def _global_prune(self, criterion: Any) -> Callable[[nn.Module, Runtime], dict[str, Any]]:
        def apply(model: nn.Module, rt: Runtime) -> dict[str, Any]:
            counts = global_counts(model, rt.example, self.planned.targets, criterion, self.ignore)
            self.global_kept = counts
            record = pruning.prune_to(model, rt.example, counts, criterion, self.ignore, self.scoring)
            self.record = self.record + record
            return {"kind": "filter", "scope": "global", **record.to_dict()}

        return apply

    def removed_share(self, model: nn.Module, rt: Runtime, targets: dict[str, int], criterion: Any) -> dict[str, float]:
        """Per pruned group: the share of its prunable channels' scores held by the channels a
        per-group cut to ``targets`` removes. Sparsity training that works drives it to 0."""
        out = {}
        for g, keep in self._groups(model, rt, targets):
            scores = criterion(g)
            gone = pruning.structured.regularizers.lowest_channels(g, keep, criterion)
            if scores is None or gone is None:
                continue
            scores = torch.as_tensor(scores).detach().to("cpu", torch.float64).abs()
            total = float(scores[~g.frozen].sum())
            out[pruning.structured.group_name(g)] = float(scores[gone].sum()) / total if total > 0 else 0.0
        return out

    # -- what the run stores ------------------------------------------------------------------
    def parts(self) -> dict[str, Any]:
        out = super().parts()
        if isinstance(out.get("epochs_budget"), int):  # not when it names the baseline's epochs
            out["epochs_budget"] += self.sparsity.epochs
        out.update(self.sparsity.parts(), scope=self.scope)
        return out

    def tables(self, model: nn.Module) -> dict[str, Any]:
        out = super().tables(model)
        before, after = self.shares.get("before", {}), self.shares.get("after", {})
        if before or after:
            out["sparsity"] = [
                {"group": g, "removed_share_before": before.get(g), "removed_share_after": after.get(g)}
                for g in dict.fromkeys([*before, *after])
            ]
        if self.scope == "global":
            out["ratios"] = {g: 1 - k / self.planned.channels[g] for g, k in (self.global_kept or {}).items()}
        return out


def global_counts(
    model: nn.Module, example: torch.Tensor, targets: dict[str, int], criterion: Any, ignore: Any = ()
) -> dict[str, int]:
    """Channels to keep per group when the channels that ``targets`` removes in all are chosen
    by one ranking of ``criterion``'s scores over every group (the smallest go first; ties in
    graph order). Every group keeps at least one channel (and its frozen ones); groups the
    criterion cannot score keep their ``targets`` count."""
    graph = pruning.graph.build_graph(model, example, tuple(ignore))
    pool, owners, counts = [], [], {}
    removed_total = 0
    for g in graph.groups:
        name = pruning.structured.group_name(g)
        if name not in targets:
            continue
        counts[name] = targets[name]
        scores = criterion(g)
        if scores is None:
            continue
        removed_total += g.n_channels - targets[name]
        candidates = (~g.frozen).nonzero().flatten()
        pool.append(torch.as_tensor(scores).detach().to("cpu", torch.float64).flatten()[candidates])
        owners += [name] * len(candidates)
    if not pool:
        return counts
    order = torch.argsort(torch.cat(pool), stable=True)[:removed_total].tolist()
    gone: dict[str, int] = {}
    for i in order:
        gone[owners[i]] = gone.get(owners[i], 0) + 1
    channels = {pruning.structured.group_name(g): g for g in graph.groups}
    for name in gone:
        g = channels[name]
        frozen = g.n_channels - g.n_prunable
        counts[name] = max(1, frozen, g.n_channels - gone[name])
    for name in counts:
        if name in gone:
            continue
        # a scored group none of whose channels ranks among the smallest keeps them all
        if any(o == name for o in owners):
            counts[name] = channels[name].n_channels
    return counts
