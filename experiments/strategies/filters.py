"""Strategies: compositions of small parts that *plan* the steps of a run.

Filter pruning (the protocol is ``experiments.strategies.parts.Strategy``) composes a criterion, a
ratio (float, per layer, a paper policy or a scan-driven policy), a schedule (one-shot,
iterative, layer-wise: all planned from the same kept counts, so they reach the identical
architecture), cross-layer scoring (independent or greedy), a retrain mode (fine-tune,
Scratch-E, Scratch-B, none) and budget (split or per step), a freeze policy, BatchNorm
recalibration after pruning and sparing the most sensitive groups (``skip``). A new part is
a config value, not a class.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import nn

import pruning
from experiments.checks import ConfigError
from experiments.strategies.filter_checks import FilterSettings
from experiments.strategies.global_scope import global_planned
from experiments.strategies.parts import BASELINE_EPOCHS, Retrain, follow_baseline, freeze_spec, optimizer_parts
from experiments.strategies.plan import (
    Measure,
    Prune,
    RecalibrateBN,
    Runtime,
    Step,
    Train,
    scratch_optimizer,
    split_budget,
)
from experiments.strategies.ratio_policy import RatioPolicy, ScanTable, as_scan, placeholder_scan
from experiments.strategies.skip import most_sensitive, spare_most_sensitive

log = logging.getLogger(__name__)


@dataclass
class FilterPlan:
    """What a filter-pruning strategy decided for its run, read back by ``parts`` and ``tables``.

    ``scans``: the sensitivity scan of each criterion (the strategy's own first), before planning;
    then per group the ``channels`` before, the kept count the plan cuts to (``targets``: only the
    groups that lose channels) and the ``ratios`` those counts are; the modules ``frozen`` while
    fine-tuning; the groups ``spared`` (``skip_sensitive``); the number of prune ``steps`` (0:
    not planned yet); the baseline's optimizer where retraining uses it (Scratch-E/B, learning-rate
    rewinding); the dense model's ``filter_norms``.
    """

    scans: dict[str, ScanTable] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    targets: dict[str, int] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    frozen: list[str] = field(default_factory=list)
    spared: list[str] = field(default_factory=list)
    steps: int = 0
    scratch_optimizer: Any = None
    filter_norms: list[dict[str, Any]] | None = None


@dataclass
class FilterPruning(FilterSettings):
    """Structured (filter) pruning: score, remove channels physically, retrain (the parts are
    :class:`~experiments.strategies.filter_checks.FilterSettings`'s). ``plan`` keeps what it
    decided in ``planned``; ``record`` is what the prune steps removed so far."""

    record: pruning.PruningRecord = field(default_factory=pruning.PruningRecord, init=False, repr=False)
    planned: FilterPlan = field(default_factory=FilterPlan, init=False, repr=False)

    @property
    def targets(self) -> dict[str, int]:
        """``planned.targets``: the kept count per group the plan cuts to."""
        return self.planned.targets

    @property
    def channels(self) -> dict[str, int]:
        """``planned.channels``: each group's channels before pruning."""
        return self.planned.channels

    @property
    def ratios_used(self) -> dict[str, float]:
        """``planned.ratios``: each group's ratio as the planned kept count has it."""
        return self.planned.ratios

    @property
    def spared(self) -> list[str]:
        """``planned.spared``: the groups ``skip_sensitive`` left unpruned."""
        return self.planned.spared

    # -- planning ---------------------------------------------------------------------------
    def _resolved_ratio(self, model: nn.Module, rt: Runtime) -> tuple[list[str], Any]:
        """``(spared groups, ratio)``: the ratio as ``pruning.planned_channels`` takes it."""
        if self.skip_sensitive:
            return spare_most_sensitive(
                model,
                rt.example,
                self._scan(model, rt),
                float(self.ratio),
                self.skip_sensitive,
                self.ignore,
                self.round_to,
                at_least=self.match == "macs",
            )
        if self.ratio_policy().needs_scan:
            return [], self.ratio(model, rt.example, self._scan(model, rt))
        if callable(self.ratio):
            return [], self.ratio(model)
        return [], dict(self.ratio) if isinstance(self.ratio, Mapping) else float(self.ratio)

    def plan_channels(self, model: nn.Module, rt: Runtime, ratio: Any) -> dict[str, tuple[int, int]]:
        """``{group: (channels, kept)}`` the steps cut to: per group, or by one global ranking."""
        if self.scope == "global":
            criterion = self.make_criterion(rt)
            return global_planned(
                model, rt.example, ratio, criterion, self.ignore, self.round_to, self.max_ratio, self.match
            )
        return pruning.planned_channels(model, rt.example, ratio, self.ignore, self.round_to)

    def _scan(self, model: nn.Module, rt: Runtime) -> ScanTable:
        if rt.scan is None:  # the dry run: a scan predicting no damage (shapes and feasibility are checked)
            rt.scan = placeholder_scan(pruning.group_channels(model, rt.example, self.ignore), list(self.scan.ratios))
        return rt.scan

    def make_criterion(self, rt: Runtime, name: str | None = None) -> Any:
        """The criterion ``name`` (default: the strategy's) for this run: an object given as the
        criterion is used as is; a registered name is built from the run's calibration batches
        if it needs data, and seeded by the run (``Criterion.seeded``)."""
        if name is None and not isinstance(self.criterion, str):
            return self.criterion
        cls = pruning.criteria.criterion_class(name or self.criterion)
        criterion = cls.from_data(*rt.calibration(self.calibration_batches)) if cls.needs_data else cls()
        return criterion.seeded(rt.seed)

    def sensitivity_scan(self, model: nn.Module, rt: Runtime) -> ScanTable:
        """Each group pruned alone at ``scan.ratios`` with the strategy's criterion, evaluated
        without retraining on ``scan.images`` validation images; then the same for each of
        ``scan.criteria`` (kept for the run's ``sensitivity_criteria`` table)."""
        batches, seen = [], 0
        for x, y in rt.ctx.datamodule.val_dataloader():
            take = min(len(y), self.scan.images - seen)
            batches.append((x[:take], y[:take]))
            seen += take
            if seen >= self.scan.images:
                break

        def progress(i: int, n: int, group: str) -> None:
            log.info("scan: group %d of %d (%s)", i, n, group)

        def scan(name: str, criterion: Any) -> ScanTable:
            table = pruning.sensitivity(
                model,
                rt.example,
                batches,
                ratios=tuple(self.scan.ratios),
                criterion=criterion,
                progress=progress,
                ignore=self.ignore,
            )
            out = as_scan(table)
            out.rows = [{**row, "criterion": name} for row in out.rows]
            return out

        own_name = criterion_name(self.criterion)
        scans = {own_name: scan(own_name, self.make_criterion(rt))}
        for name in self.scan.criteria:
            if name not in scans:
                log.info("scan: criterion %s", name)
                scans[name] = scan(name, self.make_criterion(rt, name))
        self.planned = FilterPlan(scans=scans)
        return scans[own_name]

    def plan(self, model: nn.Module, rt: Runtime) -> list[Step]:
        """The steps of the run; what they cut to is kept in ``planned`` (a :class:`FilterPlan`)."""
        self.record = pruning.PruningRecord()
        follow_baseline(self, rt.baseline)  # retrain.epochs=baseline: the baseline's epochs in this runtime
        spared, ratio = self._resolved_ratio(model, rt)
        if isinstance(ratio, Mapping):
            ratio = {g: r for g, r in ratio.items() if r > 0}
        planned = self.plan_channels(model, rt, ratio)
        targets = {g: k for g, (c, k) in planned.items() if k < c}
        channels = {g: c for g, (c, _) in planned.items()}
        if not targets:
            raise ConfigError(f"strategy.ratio={self.ratio!r} removes no channel from any group of this model")
        norms = None if rt.dry else filter_norms(model)
        criterion = self.make_criterion(rt)
        frozen = self._frozen_modules(model, rt)

        def prune(counts: dict[str, int]) -> Callable[[nn.Module, Runtime], dict[str, Any]]:
            def apply(m: nn.Module, rt: Runtime) -> dict[str, Any]:
                record = pruning.prune_to(m, rt.example, counts, criterion, self.ignore, self.scoring)
                self.record = self.record + record
                return {"kind": "filter", **record.to_dict()}

            return apply

        if self.schedule == "oneshot":
            stages = [("prune", dict(targets))]
        elif self.schedule == "iterative":
            stages = [
                (
                    f"round{r}",
                    {
                        g: pruning.schedules.channel_schedule(channels[g], k, r + 1, self.rounds)
                        for g, k in targets.items()
                    },
                )
                for r in range(self.rounds)
            ]
        else:
            order = self._order(model, rt, [g for g in channels if g in targets])
            stages = [(f"layer{i}", {g: targets[g]}) for i, g in enumerate(order)]
        mode = self.retrain.mode
        per_epoch = self.retrain.epochs * rt.steps_per_epoch() if mode == "finetune" else 0
        if self.retrain.budget == "per_step":
            shares = [per_epoch] * len(stages)
        else:
            shares = split_budget(per_epoch, len(stages))
        self.planned = FilterPlan(
            scans=self.planned.scans,
            channels=channels,
            targets=targets,
            ratios={g: 1 - k / c for g, (c, k) in planned.items()},
            frozen=frozen,
            spared=spared,
            steps=len(stages),
            scratch_optimizer=scratch_optimizer(rt.baseline) if uses_baseline_optimizer(self.retrain) else None,
            filter_norms=norms,
        )
        steps: list[Step] = []
        for i, ((label, counts), share) in enumerate(zip(stages, shares)):
            last = i == len(stages) - 1
            prefix = f"{label}/" if len(stages) > 1 else ""
            steps.append(Prune(f"{prefix}prune", prune(counts)))
            if self.recalibrate_bn:
                if last:  # the same pruned weights before recalibration: its effect, paired within the run
                    steps.append(Measure("pruned_stale_bn", full=False))
                steps.append(RecalibrateBN(f"{prefix}recalibrate_bn", self.recalibrate_bn))
            steps.append(Measure("pruned") if last else Measure(f"{label}/pruned", full=False))
            if mode == "finetune":
                steps.append(
                    Train(
                        f"{prefix}retrain",
                        self.retrain,
                        steps=share,
                        freeze=frozen,
                        freeze_bn_stats=self.freeze_bn == "fixed",
                    )
                )
                if not last:
                    steps.append(Measure(f"{label}/retrained", full=False))
        if mode.startswith("scratch"):
            steps.append(
                Train(
                    mode,
                    self.retrain,
                    epochs=self._scratch_epochs,
                    init="reinit",
                    optimizer=self.planned.scratch_optimizer,
                    lr_schedule=rt.baseline.lr_schedule,
                )
            )
        steps.append(Measure("retrained"))
        return steps

    def _scratch_epochs(self, model: nn.Module, rt: Runtime) -> int:
        """Scratch-E: the baseline's epochs; Scratch-B: scaled by the MACs saved, capped."""
        epochs = int(rt.baseline.epochs)
        if self.retrain.mode == "scratch_b":
            dense = (
                rt.dense_counts.macs
                if rt.dense_counts is not None
                else pruning.count(rt.build_model(), rt.example).macs
            )
            pruned = pruning.count(model, rt.example).macs
            matched = int(epochs * dense / max(1, pruned))
            cap = self.retrain.scratch_cap
            epochs = matched if cap is None else min(int(epochs * cap), matched)
        return epochs

    def _order(self, model: nn.Module, rt: Runtime, groups: list[str]) -> list[str]:
        """The pruned ``groups`` (in forward order) in the order ``layerwise`` prunes them."""
        if self.order == "backward":
            return groups[::-1]
        if self.order == "least_sensitive_first":
            sensitivity = self._scan(model, rt).sensitivity()
            return sorted(groups, key=lambda g: (sensitivity.get(g, 0.0), groups.index(g)))
        return groups

    def _frozen_modules(self, model: nn.Module, rt: Runtime) -> list[str]:
        names, k = freeze_spec(self.freeze)
        if k:
            ranked = most_sensitive(self._scan(model, rt), k)
            members = pruning.structured.group_members(model, rt.example, self.ignore)
            names = [n for g in ranked for n in members.get(g, [g])]
        return names

    # -- what the run stores ------------------------------------------------------------------
    def parts(self) -> dict[str, Any]:
        """Named columns of the row. ``optimizer`` and ``retrain_lr`` are those of the
        retraining that ran (the baseline's for Scratch-E/B); ``epochs_budget`` is the
        planned fine-tuning epochs in all (``per_step``: steps x ``retrain.epochs``)."""
        policy = self.ratio_policy()
        name = policy_name(self.ratio)
        finetune = self.retrain.mode == "finetune"
        steps = self.planned.steps or (self.rounds if self.schedule == "iterative" else 1)
        scratch = self.planned.scratch_optimizer
        optimizer, lr = optimizer_parts(scratch if scratch is not None else self.retrain.optimizer)
        if self.retrain.mode == "none":
            optimizer, lr = None, None
        names, k = freeze_spec(self.freeze)
        return {
            "kind": "filter",
            "criterion": criterion_name(self.criterion),
            "schedule": self.schedule,
            "rounds": self.rounds,
            "order": self.order if self.schedule == "layerwise" else None,
            "ratio": str(float(self.ratio)) if name == "uniform" else ("sensitivity" if policy.needs_scan else name),
            "ratio_policy": name,
            "max_drop": policy.max_drop,
            "target_reduction": policy.reduction,
            "scoring": self.scoring,
            "scope": self.scope,
            "retrain": self.retrain.mode,
            "freeze": f"most_sensitive:{k}" if k else ("list:" + ",".join(names) if names else "none"),
            "freeze_bn": self.freeze_bn if (names or k) else None,
            "skip_sensitive": self.skip_sensitive,
            "recalibrate_bn": self.recalibrate_bn,
            "target_resource": policy.resource if policy.needs_scan else None,
            "match_uniform": policy.match_uniform,
            "budget": self.retrain.budget if finetune else None,
            "retrain_epochs": self.retrain.epochs_given if finetune else None,
            "epochs_budget": self._epochs_budget(steps) if finetune else None,
            "scratch_cap": self.retrain.scratch_cap if self.retrain.mode == "scratch_b" else None,
            "optimizer": optimizer,
            "retrain_lr": lr,
            "lr_schedule": self.retrain.lr_schedule if finetune else None,
            "rewind_epoch": self.retrain.rewind_epoch if finetune and self.retrain.lr_schedule == "rewind" else None,
        }

    def _epochs_budget(self, steps: int) -> int | str:
        """The planned fine-tuning epochs in all; ``baseline`` (``<steps>x baseline`` per step) when they
        follow the baseline's, so arms on an ``auto`` baseline name the same budget whatever epoch it stopped at."""
        per_step = self.retrain.budget == "per_step"
        if self.retrain.epochs_given == BASELINE_EPOCHS:
            return f"{steps}x {BASELINE_EPOCHS}" if per_step and steps > 1 else BASELINE_EPOCHS
        return self.retrain.epochs * (steps if per_step else 1)

    def tables(self, model: nn.Module) -> dict[str, Any]:
        plan = self.planned
        after = self.record.channels()
        layers = []
        for g, c in plan.channels.items():
            kept = after[g][0] if g in after else c
            layers.append(
                {"name": g, "kind": "filter", "channels_before": c, "channels_after": kept, "kept_fraction": kept / c}
            )
        out: dict[str, Any] = {"layers": layers, "ratios": plan.ratios}
        if plan.filter_norms:
            out["filter_norms"] = plan.filter_norms
        if plan.frozen:
            out["frozen"] = list(plan.frozen)
        if plan.spared:
            out["spared"] = list(plan.spared)
        if plan.scans and self.scan is not None and self.scan.criteria:
            out["sensitivity_criteria"] = [
                {**row, "criterion": name, "base_metric": table.base}
                for name, table in plan.scans.items()
                for row in table.rows
            ]
        return out

    def structure_record(self) -> pruning.PruningRecord:
        return self.record

    def metrics(self) -> dict[str, float]:
        """Numbers only the ratio policy knows (a latency target's prediction), for the results row."""
        return self.ratio_policy().metrics()


def policy_name(ratio: Any) -> str:
    """How a ratio was given, as the results row names it."""
    if isinstance(ratio, (int, float)):
        return "uniform"
    if isinstance(ratio, Mapping):
        return "per_layer"
    return ratio.policy_name if isinstance(ratio, RatioPolicy) else RatioPolicy.policy_name


def criterion_name(criterion: Any) -> str:
    """The criterion as the results row names it: its registered name; a plain callable's
    ``name`` attribute if it has one, else its type's name."""
    if isinstance(criterion, str):
        return criterion
    if isinstance(criterion, pruning.criteria.Criterion):
        return criterion.name
    return getattr(criterion, "name", type(criterion).__name__)


def filter_norms(model: nn.Module) -> list[dict[str, Any]]:
    """Each conv's filter L1 norms, sorted descending and divided by the largest (Li Fig. 2a)."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            norms = module.weight.detach().abs().flatten(1).sum(1).sort(descending=True).values
            top = float(norms[0]) or 1.0
            rows += [{"layer": name, "rank": i, "l1": float(v) / top} for i, v in enumerate(norms)]
    return rows


def uses_baseline_optimizer(retrain: Retrain) -> bool:
    """Whether retraining trains with the baseline's optimizer: Scratch-E/B and learning-rate rewinding."""
    return retrain.mode.startswith("scratch") or (retrain.mode == "finetune" and retrain.lr_schedule == "rewind")
