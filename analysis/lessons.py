"""The lessons, declared before any sweep: arms, the part each compares, its primary endpoint and margin.

A comparison pairs an A arm with a B arm of the same dataset and model whose full resolved
configs differ only in

- ``keys``: the lesson's part (config keys, with or below them; ``parts`` name the same for
  rows that carry no config);
- ``implied``: what that part implies and is declared here (a Scratch arm trains with the
  baseline's optimizer, so the fine-tuning optimizer it ignores may differ; an iterative
  schedule may spend its epochs per step);
- :data:`analysis.arms.NEUTRAL` keys (measurement and export settings), shown in the
  ``annotation`` column.

Any other difference refuses the comparison, and the verdict table names the keys. One
primary endpoint per lesson (test accuracy after retraining; for criteria without retraining,
the accuracy right after pruning) is tested, with Holm's correction over that lesson's
comparisons only; params, MACs and wall time are secondary endpoints, reported apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from analysis.arms import Arm
from analysis.parts import ratio_value

MARGIN = 0.0025
"""The default equivalence margin and smallest effect worth detecting: 0.25 percentage points of accuracy."""
NO_RETRAINING_EFFECT = 0.05
"""The smallest effect that matters between criteria without retraining: 5 points of accuracy (Li et al.
2017, Fig. 2c: smallest-L1, random and largest-L1 pruning part by tens of points per layer at high ratios)."""
SECONDARY = ("ratio/params", "ratio/macs", "retrain/wall_s", "wall_s")
ENDPOINT_NAMES = {
    "final/acc": "test accuracy after retraining",
    "pruned/acc": "test accuracy right after pruning (no retraining)",
}


@dataclass(frozen=True)
class Lesson:
    """A claim "A beats B", with what may differ between the arms and how the claim is tested."""

    code: str
    claim: str
    is_a: Callable[[Arm], bool]
    is_b: Callable[[Arm], bool]
    keys: tuple[str, ...]
    parts: tuple[str, ...]
    implied: tuple[str, ...] = ()
    implied_parts: tuple[str, ...] = ()
    why_implied: str = ""
    endpoint: str = "final/acc"
    margin: float = MARGIN
    effect: float = MARGIN  # the smallest effect that matters: seeds are planned, and MDEs judged, against it
    match: str | None = None  # "resource": the B arm of the nearest measured MACs (or params) within a tolerance;
    # "resource_at_least": the nearest B arm that A removes at least as much of as (within the tolerance)
    budget: bool = False  # pair only at equal total retraining epochs or equal epochs per pruning step
    requires: Callable[[Arm], bool] | None = None
    b_group: Callable[[Arm], Any] | None = None  # one comparison per value (e.g. each other criterion)
    hint: str = ""

    def admits(self, arm: Arm) -> bool:
        return self.requires is None or bool(self.requires(arm))


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "", "none", "null", [], {})


def _uniform(arm: Arm) -> bool:
    return (
        ratio_value(arm.part("ratio")) == ratio_value(arm.part("ratio"))
        and arm.part("ratio_policy") in (None, "uniform")
        and arm.part("scope") in (None, "group")
    )


def _skips(arm: Arm) -> bool:
    return _truthy(arm.part("skip_sensitive")) or _truthy(arm.value("strategy.skip_sensitive"))


def _frozen(arm: Arm) -> bool:
    return str(arm.part("freeze") or "none") != "none"


SCHEDULE_KEYS = ("strategy.schedule", "strategy.rounds", "strategy.order")
BUDGET_KEYS = ("strategy.retrain.budget", "strategy.retrain.epochs")
SCRATCH_IMPLIED = (
    "strategy.retrain.epochs",
    "strategy.retrain.optimizer",
    "strategy.retrain.lr_schedule",
    "strategy.retrain.budget",
)


def _schedule_lesson(schedule: str, hint: str) -> Lesson:
    """L1 for one schedule against one-shot, at equal total epochs or equal epochs per step."""
    return Lesson(
        "L1",
        f"{schedule} > oneshot",
        lambda a: a.part("schedule") == schedule,
        lambda a: a.part("schedule") == "oneshot",
        SCHEDULE_KEYS,
        ("schedule", "rounds", "order"),
        BUDGET_KEYS,
        ("epochs_budget",),
        "the budget regime: paired at equal total epochs or at equal epochs per pruning step (both labelled)",
        budget=True,
        hint=hint,
    )


def _retrain_value(arm: Arm, name: str) -> Any:
    """``strategy.retrain.<name>`` of an arm (its named part when the row carries no config)."""
    value = arm.value(f"strategy.retrain.{name}")
    return value if value is not None else arm.part(name)


def _rewinds(arm: Arm) -> bool:
    return arm.part("retrain") == "finetune" and _retrain_value(arm, "lr_schedule") == "rewind"


def _distils(arm: Arm) -> bool:
    return arm.part("retrain") == "finetune" and _truthy(_retrain_value(arm, "distill"))


def _plain_finetune(arm: Arm) -> bool:
    """Fine-tuning with its own optimizer and schedule: no rewinding, no distillation."""
    return arm.part("retrain") == "finetune" and not _rewinds(arm) and not _distils(arm)


def _at_baseline_lr(arm: Arm) -> bool:
    lr, base = arm.value("strategy.retrain.optimizer.lr"), arm.value("baseline.optimizer.lr")
    return lr is not None and lr == base


def _scratch_lesson(mode: str) -> Lesson:
    """L4: fine-tuning the surviving weights against training the pruned architecture from scratch (``mode``)."""
    return Lesson(
        "L4",
        f"finetune > {mode}",
        _plain_finetune,
        lambda a: a.part("retrain") == mode,
        ("strategy.retrain.mode", "strategy.retrain.scratch*"),
        ("retrain",),
        SCRATCH_IMPLIED,
        ("epochs_budget",),
        "Scratch arms train with the baseline's optimizer and epochs, ignoring the fine-tuning optimizer and epochs",
        hint=f"runs with retrain=finetune and retrain={mode}, same seeds (`study=scratch`)",
    )


LESSONS: tuple[Lesson, ...] = (
    _schedule_lesson(
        "layerwise", "runs with schedule=layerwise and schedule=oneshot at equal retraining epochs (`study=schedules`)"
    ),
    _schedule_lesson(
        "iterative", "e.g. `python run.py -m strategy=l1_oneshot,l1_iterative seed=0,1,2` (`study=schedules`)"
    ),
    Lesson(
        "L2",
        "sensitivity ratios > uniform",
        lambda a: a.part("ratio") == "sensitivity",
        _uniform,
        ("strategy.ratio", "strategy.scan"),
        ("ratio", "ratio_policy", "max_drop", "target_reduction", "target_resource", "match_uniform"),
        match="resource",
        hint="runs with ratio=sensitivity and uniform runs removing the same MACs (`study=sensitivity`)",
    ),
    Lesson(
        "L2-global",
        "global ranking > uniform",
        lambda a: a.part("scope") == "global" and not _truthy(a.part("sparsity")),
        _uniform,
        ("strategy.scope", "strategy.max_ratio", "strategy.match"),
        ("scope",),
        match="resource_at_least",
        hint="runs with strategy=l1_global (match: macs) and uniform runs of the same MACs (`study=sensitivity`)",
    ),
    Lesson(
        "L3",
        "l1 > other criteria, no retraining",
        lambda a: a.part("criterion") == "l1",
        lambda a: a.part("criterion") not in (None, "l1"),
        ("strategy.criterion",),
        ("criterion",),
        endpoint="pruned/acc",
        effect=NO_RETRAINING_EFFECT,
        b_group=lambda a: a.part("criterion"),
        hint="e.g. `python run.py -m strategy=l1_oneshot,random_oneshot,largest_oneshot seed=0,1,2` (`study=criteria`)",
    ),
    Lesson(
        "L3-ft",
        "l1 > other criteria, after fine-tuning",
        lambda a: a.part("criterion") == "l1",
        lambda a: a.part("criterion") not in (None, "l1"),
        ("strategy.criterion",),
        ("criterion",),
        requires=lambda a: a.part("retrain") not in (None, "none"),
        b_group=lambda a: a.part("criterion"),
        hint="criteria runs with retraining (`study=criteria`)",
    ),
    _scratch_lesson("scratch_e"),
    _scratch_lesson("scratch_b"),
    Lesson(
        "L4-recipe",
        "lr rewinding > finetune",
        _rewinds,
        _plain_finetune,
        ("strategy.retrain.lr_schedule", "strategy.retrain.rewind_epoch"),
        ("lr_schedule", "rewind_epoch"),
        implied_parts=("optimizer", "retrain_lr"),
        why_implied="rewinding trains with the baseline's optimizer and schedule, ignoring the fine-tuning optimizer",
        hint="runs with strategy.retrain.lr_schedule=rewind and plain fine-tuning, same epochs (`study=scratch`)",
    ),
    Lesson(
        "L4-recipe",
        "distillation > finetune",
        lambda a: _distils(a) and not _rewinds(a),
        _plain_finetune,
        ("strategy.retrain.distill", "strategy.retrain.temperature"),
        ("distill",),
        hint="runs with strategy.retrain.distill > 0 and without, same epochs (`study=scratch`)",
    ),
    Lesson(
        "L4-recipe",
        "finetune at the baseline's lr > finetune",
        lambda a: _plain_finetune(a) and _at_baseline_lr(a),
        lambda a: _plain_finetune(a) and not _at_baseline_lr(a),
        ("strategy.retrain.optimizer.lr",),
        ("retrain_lr",),
        hint="runs fine-tuned at baseline.optimizer.lr and at the fine-tuning lr, same epochs (`study=scratch`)",
    ),
    Lesson(
        "L5",
        "freeze most sensitive > retrain all",
        lambda a: _frozen(a) and not _skips(a),
        lambda a: not _frozen(a) and not _skips(a),
        ("strategy.freeze", "strategy.freeze_bn"),
        ("freeze", "freeze_bn"),
        ("strategy.scan",),
        why_implied="the scan that ranks the groups by sensitivity (measures the baseline only)",
        hint="runs with freeze=most_sensitive:<k> and freeze=none (`study=freeze`)",
    ),
    Lesson(
        "L5-skip",
        "skip most sensitive > uniform",
        _skips,
        lambda a: _uniform(a) and not _skips(a) and not _frozen(a),
        ("strategy.skip_sensitive",),
        ("skip_sensitive",),
        ("strategy.ratio", "strategy.scan", "strategy.match"),
        ("ratio", "ratio_policy", "target_reduction"),
        "the other groups are pruned harder to remove at least the uniform arm's MACs (strategy.match=macs); the scan "
        "ranks the groups",
        match="resource_at_least",
        hint="runs with strategy.skip_sensitive=<k> and uniform runs of the same MACs (`study=freeze`)",
    ),
    Lesson(
        "L6",
        "sparsity training > l1 one-shot",
        lambda a: _truthy(a.part("sparsity")),
        lambda a: not _truthy(a.part("sparsity")) and a.part("criterion") == "l1" and a.part("schedule") == "oneshot",
        ("strategy._target_", "strategy.sparsity", "strategy.scope", "strategy.criterion"),
        ("sparsity", "sparsity_strength", "sparsity_epochs", "sparsity_ramp", "scope", "criterion"),
        ("strategy.retrain.epochs",),
        ("retrain_epochs",),
        "the epochs after the baseline are split between sparsity training and fine-tuning, at equal total epochs",
        budget=True,
        requires=lambda a: _uniform(a) and str(a.part("freeze") or "none") == "none",
        hint="runs of slimming, group_norm or sfp and l1_oneshot at equal total epochs (`study=methods`)",
    ),
)


# -- Operating points and the papers' arms: L2 matched on measured latency, L3 per group (Li Fig. 2c) --------------

LATENCY_BATCH = 64
"""The batch size whose measured latency ratio L2's latency pairing matches (``ratio/latency_b64`` of the row)."""
LATENCY_TOLERANCE = 0.05
"""Largest difference of two arms' measured latency ratios (final / own baseline, timed interleaved) that still counts as
matched: about the resolution of the runs' timing (the ratio's 95% interval is +-3% at ``measure.latency_ci``)."""
SCAN_ENDPOINT = "scan/acc"
SCAN_CRITERIA = ("l1", ("random", "largest_l1"))
"""L3-layer's arms: the smallest-L1 scan (A) against each of these (B), entries of one run's per-criterion scan."""
SCAN_RATIOS = (0.3, 0.5, 0.7)
"""The fractions of a group's filters at which L3-layer compares the criteria (scanned ratios, Li's Fig. 2c)."""
ENDPOINT_NAMES[SCAN_ENDPOINT] = "validation accuracy with one group pruned, no retraining (per-criterion scan)"


def latency_batch(match: str | None) -> int | None:
    """The batch size of a ``latency_b<N>`` pairing rule (None for any other rule)."""
    prefix = "latency_b"
    if match and match.startswith(prefix) and match[len(prefix) :].isdigit():
        return int(match[len(prefix) :])
    return None


def _scans_criteria(arm: Arm) -> bool:
    """The arm's runs stored a per-criterion sensitivity scan (``tables.sensitivity_criteria``)."""
    return any(row["tables"].get("sensitivity_criteria") for row in arm.by_seed.values())


def _pairing_rule(lesson: Lesson) -> str:
    """The pairing rules of the lessons below, as the declaration table words them ("" for the others)."""
    batch = latency_batch(lesson.match)
    if batch is not None:
        return f", nearest measured latency ratio at batch {batch} (within {LATENCY_TOLERANCE}; MACs and params shown)"
    if lesson.endpoint == SCAN_ENDPOINT:
        ratios = ", ".join(f"{r:g}" for r in SCAN_RATIOS)
        return (
            f" and scan run, per group at ratios {ratios}: {SCAN_CRITERIA[0]} vs each of {', '.join(SCAN_CRITERIA[1])}"
        )
    return ""


LESSONS += (
    Lesson(
        "L2",
        f"sensitivity ratios > uniform, at matched latency (batch {LATENCY_BATCH})",
        lambda a: a.part("ratio") == "sensitivity",
        _uniform,
        ("strategy.ratio", "strategy.scan"),
        ("ratio", "ratio_policy", "max_drop", "target_reduction", "target_resource", "match_uniform"),
        match=f"latency_b{LATENCY_BATCH}",
        hint="sensitivity runs and uniform runs of about their measured latency (`study=operating_points`)",
    ),
    Lesson(
        "L2-global",
        f"global ranking > uniform, at matched latency (batch {LATENCY_BATCH})",
        lambda a: a.part("scope") == "global" and not _truthy(a.part("sparsity")),
        _uniform,
        ("strategy.scope", "strategy.max_ratio", "strategy.match", "strategy.ratio"),
        ("scope", "ratio"),
        match=f"latency_b{LATENCY_BATCH}",
        hint="global runs and uniform runs of about their measured latency (`study=operating_points`)",
    ),
    Lesson(
        "L3-layer",
        "smallest l1 > random, largest l1 per group, no retraining (Li Fig. 2c)",
        _scans_criteria,
        _scans_criteria,
        ("strategy.criterion",),
        ("criterion",),
        endpoint=SCAN_ENDPOINT,
        margin=0.02,  # Li's per-layer contrasts without retraining are tens of points
        effect=0.05,
        hint="the per-criterion scans of `arm=criteria_scan` (`study=all`, `study=operating_points`)",
    ),
)


OPERATING_KEYS = ("strategy.ratio", "parts.ratio", "parts.ratio_policy", "parts.target_reduction", "parts.max_drop")
OTHER_DESIGN = (
    "strategy.scoring",
    "parts.scoring",
    "strategy.recalibrate_bn",
    "parts.recalibrate_bn",
    "strategy.retrain.budget",
    "parts.kind",
    "strategy._target_",
)
ACCIDENTAL = ("strategy.retrain.optimizer.lr", "parts.retrain_lr")
"""Lesson parts that are accidents everywhere else: a fine-tuning lr difference is the part of one
L4-recipe comparison, yet between any other two arms a difference worth refusing by name."""
DESIGN_KEYS: tuple[str, ...] = tuple(
    k
    for k in dict.fromkeys(
        [k for lsn in LESSONS for k in lsn.keys]
        + [f"parts.{p}" for lsn in LESSONS for p in lsn.parts]
        + list(OPERATING_KEYS)
        + list(OTHER_DESIGN)
    )
    if k not in ACCIDENTAL
)
"""Keys a study varies on purpose (some lesson's part, the operating point): an arm whose nearest counterpart
differs in one of these belongs to another comparison, so no refusal is reported for it."""


def declaration_table(lessons: tuple[Lesson, ...] = LESSONS) -> pd.DataFrame:
    """The lessons as declared: arms, part keys, implied keys, primary endpoint, margin, pairing rule."""
    rows = []
    for lesson in lessons:
        rule = "same seed"
        if lesson.match == "resource":
            rule += ", nearest measured MACs (params if the A arm targets params) within 0.02"
        elif lesson.match == "resource_at_least":
            rule += ", A removes at least B's measured MACs (B's ratio - A's >= -0.02), nearest"
        if lesson.budget:
            rule += ", equal total retraining epochs or equal epochs per step"
        rule += _pairing_rule(lesson)
        rows.append(
            {
                "lesson": lesson.code,
                "claim (A > B)": lesson.claim,
                "part keys": ", ".join(lesson.keys),
                "implied keys": ", ".join(lesson.implied) or "—",
                "why implied": lesson.why_implied or "—",
                "primary endpoint": ENDPOINT_NAMES.get(lesson.endpoint, lesson.endpoint),
                "margin (pp)": f"±{lesson.margin * 100:g}",
                "smallest effect (pp)": f"{lesson.effect * 100:g}",
                "pairing": rule,
                "other differences": "refused (measurement keys: annotated)",
            }
        )
    return pd.DataFrame(rows)
