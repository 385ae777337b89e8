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
from experiments.checks import ConfigError, check_ratio
from experiments.strategies.filter_checks import check_filter_pruning
from experiments.strategies.parts import Retrain, Scan, Strategy, freeze_spec, optimizer_parts, output_layer_name
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
from experiments.strategies.ratio_policy import ScanTable, as_scan, placeholder_scan
from experiments.strategies.skip import most_sensitive, spare_most_sensitive

log = logging.getLogger(__name__)


@dataclass
class FilterPruning(Strategy):
    """Structured (filter) pruning: score, remove channels physically, retrain.

    ``ratio``: a float for every prunable layer, ``{layer: ratio}``, a ratio policy
    (``model -> {layer: ratio}``, see ``experiments.strategies.ratio_policy``) or a scan policy
    (``SensitivityMaxDrop``, ``SensitivityTarget``). ``schedule`` reaches the planned kept
    counts at once, in ``rounds`` geometric steps over all groups, or one group at a time in
    ``order``; ``retrain.budget`` says whether ``retrain.epochs`` is split across the steps
    (``total``) or given to each (``per_step``). ``recalibrate_bn`` > 0 re-estimates
    BatchNorm statistics on that many training batches after each prune step.
    ``skip_sensitive`` = k leaves the k groups the scan ranks most sensitive unpruned and
    prunes the others at the one ratio that removes at least the MACs of ``ratio`` everywhere.
    ``freeze_bn``: the BatchNorm statistics of frozen layers stay ``fixed`` or ``update``.
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
    retrain: Retrain = field(default_factory=Retrain)
    record: pruning.PruningRecord = field(default_factory=pruning.PruningRecord, init=False, repr=False)

    # -- validation (static); the dry run of the plan checks the rest ----------------------
    def validate(self, model: nn.Module) -> None:
        check_filter_pruning(self, model)

    def _ratios_by_layer(self, model: nn.Module) -> dict[str, float]:
        last = output_layer_name(model)
        prunable = [
            n
            for n, m in model.named_modules()
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

    # -- planning ---------------------------------------------------------------------------
    def _needs_scan(self) -> bool:
        return getattr(self.ratio, "needs_scan", False)

    def _resolved_ratio(self, model: nn.Module, rt: Runtime) -> Any:
        if self.skip_sensitive:
            self.spared, ratios = spare_most_sensitive(
                model,
                rt.example,
                self._scan(model, rt),
                float(self.ratio),
                self.skip_sensitive,
                self.ignore,
                self.round_to,
            )
            return ratios
        if self._needs_scan():
            return self.ratio(model, rt.example, self._scan(model, rt))
        if callable(self.ratio):
            return self.ratio(model)
        return dict(self.ratio) if isinstance(self.ratio, Mapping) else float(self.ratio)

    def _scan(self, model: nn.Module, rt: Runtime) -> ScanTable:
        if rt.scan is None:  # the dry run: a scan predicting no damage (shapes and feasibility are checked)
            rt.scan = placeholder_scan(pruning.group_channels(model, rt.example, self.ignore), list(self.scan.ratios))
        return rt.scan

    def _criterion(self, rt: Runtime, name: str | None = None) -> Any:
        if name is None and not isinstance(self.criterion, str):
            return self.criterion
        cls = pruning.criteria.criterion_class(name or self.criterion)
        if cls is pruning.criteria.Random:
            return pruning.criteria.Random(seed=rt.seed)
        return cls.from_data(*rt.calibration(self.calibration_batches)) if cls.needs_data else cls()

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

        own_name = self.parts()["criterion"]
        self.criterion_scans = {own_name: scan(own_name, self._criterion(rt))}
        for name in self.scan.criteria:
            if name not in self.criterion_scans:
                log.info("scan: criterion %s", name)
                self.criterion_scans[name] = scan(name, self._criterion(rt, name))
        return self.criterion_scans[own_name]

    def plan(self, model: nn.Module, rt: Runtime) -> list[Step]:
        self.record = pruning.PruningRecord()
        ratio = self._resolved_ratio(model, rt)
        if isinstance(ratio, Mapping):
            ratio = {g: r for g, r in ratio.items() if r > 0}
        planned = pruning.planned_channels(model, rt.example, ratio, self.ignore, self.round_to)
        self.targets = {g: k for g, (c, k) in planned.items() if k < c}
        self.channels = {g: c for g, (c, _) in planned.items()}
        self.ratios_used = {g: 1 - k / c for g, (c, k) in planned.items()}
        if not self.targets:
            raise ConfigError(f"strategy.ratio={self.ratio!r} removes no channel from any group of this model")
        self.filter_norms = None if rt.dry else filter_norms(model)
        criterion = self._criterion(rt)
        frozen = self._frozen_modules(model, rt)

        def prune(counts: dict[str, int]) -> Callable[[nn.Module, Runtime], dict[str, Any]]:
            def apply(m: nn.Module, rt: Runtime) -> dict[str, Any]:
                record = pruning.prune_to(m, rt.example, counts, criterion, self.ignore, self.scoring)
                self.record = self.record + record
                return {"kind": "filter", **record.to_dict()}

            return apply

        if self.schedule == "oneshot":
            stages = [("prune", dict(self.targets))]
        elif self.schedule == "iterative":
            stages = [
                (
                    f"round{r}",
                    {
                        g: pruning.schedules.channel_schedule(self.channels[g], k, r + 1, self.rounds)
                        for g, k in self.targets.items()
                    },
                )
                for r in range(self.rounds)
            ]
        else:
            stages = [(f"layer{i}", {g: self.targets[g]}) for i, g in enumerate(self._order(model, rt))]
        mode = self.retrain.mode
        per_epoch = self.retrain.epochs * rt.steps_per_epoch() if mode == "finetune" else 0
        if self.retrain.budget == "per_step":
            shares = [per_epoch] * len(stages)
        else:
            shares = split_budget(per_epoch, len(stages))
        self.n_steps = len(stages)
        self.scratch_opt = scratch_optimizer(rt.baseline) if mode.startswith("scratch") else None
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
                    optimizer=self.scratch_opt,
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

    def _order(self, model: nn.Module, rt: Runtime) -> list[str]:
        groups = [g for g in self.channels if g in self.targets]
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
        self.frozen = names
        return names

    # -- what the run stores ------------------------------------------------------------------
    def parts(self) -> dict[str, Any]:
        """Named columns of the row. ``optimizer`` and ``retrain_lr`` are those of the
        retraining that ran (the baseline's for Scratch-E/B); ``epochs_budget`` is the
        planned fine-tuning epochs in all (``per_step``: steps x ``retrain.epochs``)."""
        policy = policy_name(self.ratio)
        finetune = self.retrain.mode == "finetune"
        steps = getattr(self, "n_steps", None) or (self.rounds if self.schedule == "iterative" else 1)
        scratch = getattr(self, "scratch_opt", None)
        optimizer, lr = optimizer_parts(scratch if scratch is not None else self.retrain.optimizer)
        if self.retrain.mode == "none":
            optimizer, lr = None, None
        names, k = freeze_spec(self.freeze)
        crit = (
            self.criterion
            if isinstance(self.criterion, str)
            else getattr(self.criterion, "name", type(self.criterion).__name__)
        )
        return {
            "kind": "filter",
            "criterion": crit,
            "schedule": self.schedule,
            "rounds": self.rounds,
            "order": self.order if self.schedule == "layerwise" else None,
            "ratio": str(float(self.ratio))
            if policy == "uniform"
            else ("sensitivity" if self._needs_scan() else policy),
            "ratio_policy": policy,
            "max_drop": getattr(self.ratio, "max_drop", None),
            "target_reduction": getattr(self.ratio, "reduction", None),
            "scoring": self.scoring,
            "retrain": self.retrain.mode,
            "freeze": f"most_sensitive:{k}" if k else ("list:" + ",".join(names) if names else "none"),
            "freeze_bn": self.freeze_bn if (names or k) else None,
            "skip_sensitive": self.skip_sensitive,
            "recalibrate_bn": self.recalibrate_bn,
            "target_resource": getattr(self.ratio, "resource", None) if self._needs_scan() else None,
            "match_uniform": getattr(self.ratio, "match_uniform", None),
            "budget": self.retrain.budget if finetune else None,
            "retrain_epochs": self.retrain.epochs if finetune else None,
            "epochs_budget": self.retrain.epochs * (steps if self.retrain.budget == "per_step" else 1)
            if finetune
            else None,
            "scratch_cap": self.retrain.scratch_cap if self.retrain.mode == "scratch_b" else None,
            "optimizer": optimizer,
            "retrain_lr": lr,
        }

    def tables(self, model: nn.Module) -> dict[str, Any]:
        after = self.record.channels()
        layers = []
        for g, c in self.channels.items():
            kept = after[g][0] if g in after else c
            layers.append(
                {"name": g, "kind": "filter", "channels_before": c, "channels_after": kept, "kept_fraction": kept / c}
            )
        out: dict[str, Any] = {"layers": layers, "ratios": self.ratios_used}
        if self.filter_norms:
            out["filter_norms"] = self.filter_norms
        if getattr(self, "frozen", None):
            out["frozen"] = list(self.frozen)
        if getattr(self, "spared", None):
            out["spared"] = list(self.spared)
        scans = getattr(self, "criterion_scans", None)
        if scans and self.scan is not None and self.scan.criteria:
            out["sensitivity_criteria"] = [
                {**row, "criterion": name, "base_metric": table.base}
                for name, table in scans.items()
                for row in table.rows
            ]
        return out

    def structure_record(self) -> pruning.PruningRecord:
        return self.record

    def metrics(self) -> dict[str, float]:
        """Numbers only the ratio policy knows (a latency target's prediction), for the results row."""
        policy_metrics = getattr(self.ratio, "metrics", None)
        return policy_metrics() if callable(policy_metrics) else {}


def policy_name(ratio: Any) -> str:
    """How a ratio was given, as the results row names it."""
    if isinstance(ratio, (int, float)):
        return "uniform"
    if isinstance(ratio, Mapping):
        return "per_layer"
    return getattr(ratio, "policy_name", "policy")


def filter_norms(model: nn.Module) -> list[dict[str, Any]]:
    """Each conv's filter L1 norms, sorted descending and divided by the largest (Li Fig. 2a)."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            norms = module.weight.detach().abs().flatten(1).sum(1).sort(descending=True).values
            top = float(norms[0]) or 1.0
            rows += [{"layer": name, "rank": i, "l1": float(v) / top} for i, v in enumerate(norms)]
    return rows
