"""Which arms a lesson compares: full-config diffs sorted into part / implied / neutral / other.

For every A arm of a lesson, the candidate B arms (same dataset and model) are assessed:
their config diff must hold only the lesson's part keys, the keys that part implies and
neutral measurement keys; a lesson may also ask for equal measured MACs (``match``) or an
equal retraining budget (``budget``). Every valid B is compared (for ``match`` the nearest
one; ``latency_b<N>``: the B arm of the nearest measured latency ratio at batch N). With no valid B, the closest candidate is reported as *refused*, with the keys and
values that stand in the way, so nothing is compared that the lesson did not declare; an A
arm whose closest B differs in a key some study varies on purpose (another lesson's part, the
operating point: :data:`analysis.lessons.DESIGN_KEYS`) belongs to another comparison and is
left out silently instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from analysis.arms import NEUTRAL, Arm, config_diff, describe, matches
from analysis.lessons import DESIGN_KEYS, LATENCY_TOLERANCE, Lesson, latency_batch
from analysis.parts import chance_accuracy

TOLERANCE = 0.02
"""Largest difference of measured MAC (or param) ratios that still counts as the same operating point."""


@dataclass
class Pairing:
    """An (A, B) candidate of a lesson: the config diff sorted by what the lesson allows, and any refusal."""

    lesson: Lesson
    a: Arm
    b: Arm
    diff: dict[str, tuple[str, str]]
    part: list[str] = field(default_factory=list)
    implied: list[str] = field(default_factory=list)
    neutral: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    regime: str = ""
    distance: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.other and not self.problems


def assess(lesson: Lesson, a: Arm, b: Arm, tolerance: float = TOLERANCE) -> Pairing:
    """Sort the A-B config diff into the lesson's part, implied, neutral and other keys; check match and budget."""
    pairing = Pairing(lesson, a, b, config_diff(a, b))
    part_names = tuple(f"parts.{p}" for p in lesson.parts)
    implied_names = tuple(f"parts.{p}" for p in lesson.implied_parts)
    for key in pairing.diff:
        if matches(key, lesson.keys) or key in part_names:
            pairing.part.append(key)
        elif matches(key, lesson.implied) or key in implied_names:
            pairing.implied.append(key)
        elif matches(key, NEUTRAL):
            pairing.neutral.append(key)
        else:
            pairing.other.append(key)
    if lesson.match in ("resource", "resource_at_least"):
        _match_resource(pairing, tolerance, one_sided=lesson.match == "resource_at_least")
    batch = latency_batch(lesson.match)
    if batch is not None:
        _match_latency(pairing, batch, LATENCY_TOLERANCE)
    if lesson.budget:
        _match_budget(pairing)
    return pairing


def _match_resource(p: Pairing, tolerance: float, one_sided: bool = False) -> None:
    resource = p.a.part("target_resource") or p.a.value("strategy.ratio.resource") or p.a.part("resource") or "macs"
    metric = "ratio/params" if str(resource) == "params" else "ratio/macs"
    ma, mb = p.a.mean(metric), p.b.mean(metric)
    p.distance = abs(ma - mb) if math.isfinite(ma) and math.isfinite(mb) else math.inf
    name = "params" if metric == "ratio/params" else "MACs"
    p.regime = f"{name} ratio A {ma:.3f} vs B {mb:.3f}"
    if one_sided and math.isfinite(p.distance) and ma - mb <= tolerance:
        return  # A keeps no more than B (plus the tolerance): at least as compressed
    if p.distance > tolerance:
        need = f"A must keep at most B's + {tolerance}" if one_sided else f"must agree within {tolerance}"
        p.problems.append(f"measured {name} ratio A {ma:.3f} vs B {mb:.3f} ({need})")


def _match_latency(p: Pairing, batch: int, tolerance: float) -> None:
    """Nearest measured latency ratio at ``batch`` (each run timed interleaved against its own baseline); the
    annotation shows the per-seed range of both and their MACs and params ratios, which may disagree."""
    key = f"ratio/latency_b{batch}"
    la, lb = p.a.mean(key), p.b.mean(key)
    p.distance = abs(la - lb) if math.isfinite(la) and math.isfinite(lb) else math.inf
    shown = [f"latency ratio at batch {batch} A {_spread(p.a, key)} vs B {_spread(p.b, key)}"]
    for metric, name in (("ratio/macs", "MACs"), ("ratio/params", "params")):
        shown.append(f"{name} ratio A {p.a.mean(metric):.3f} vs B {p.b.mean(metric):.3f}")
    timed = {
        side: {(r.get("cpu"), r.get("threads")) for r in arm.by_seed.values()} for side, arm in (("A", p.a), ("B", p.b))
    }
    if timed["A"] != timed["B"]:
        shown.append("timed on different CPUs or thread counts")
    p.regime = "; ".join(shown)
    missing = [side for side, v in (("A", la), ("B", lb)) if not math.isfinite(v)]
    if missing:
        p.problems.append(
            f"no latency measured at batch {batch} ({key}) in {' and '.join(missing)}: run with "
            f"measure.latency_batch_sizes including {batch}"
        )
    elif p.distance > tolerance:
        p.problems.append(
            f"measured latency ratio at batch {batch} A {la:.3f} vs B {lb:.3f} (must agree within {tolerance}; "
            "the nearest B arm: run one of about A's latency)"
        )


def _spread(arm: Arm, key: str) -> str:
    """``"0.517 (0.503-0.531 over 12 seeds)"``: the arm's mean of ``key`` and its per-seed range."""
    values = list(arm.metric(key).values())
    if not values:
        return "unmeasured"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{sum(values) / len(values):.3f} ({min(values):.3f}-{max(values):.3f} over {len(values)} seeds)"


def _total_epochs(arm: Arm) -> float:
    total = arm.mean("retrain/epochs")
    budget = arm.part("epochs_budget")
    if not math.isfinite(total) and isinstance(budget, (int, float)):
        total = float(budget)
    return total


def _epochs(value: Any) -> str:
    """An epoch count, or the word a config gives (``baseline``: the baseline's epochs)."""
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _match_budget(p: Pairing) -> None:
    ta, tb = _total_epochs(p.a), _total_epochs(p.b)
    sa, sb = p.a.value("strategy.retrain.epochs"), p.b.value("strategy.retrain.epochs")
    if math.isfinite(ta) and math.isfinite(tb) and abs(ta - tb) < 1e-6:
        p.regime = f"equal total retraining: {ta:g} epochs"
    elif sa is not None and sa == sb:
        p.regime = f"equal retraining per step: {_epochs(sa)} epochs a step (total A {ta:g} vs B {tb:g})"
    else:
        p.problems.append(
            f"retraining budget: A {ta:g} epochs in total ({sa if sa is not None else '?'} a step) vs B {tb:g} "
            f"({sb if sb is not None else '?'} a step): neither equal in total nor per step"
        )


def pairings(lesson: Lesson, arms: list[Arm], tolerance: float = TOLERANCE) -> list[Pairing]:
    """The lesson's comparisons: valid pairs, and for each A (and B group) with none, the closest refused pair."""
    out: list[Pairing] = []
    for a in arms:
        if not (lesson.is_a(a) and lesson.admits(a)):
            continue
        candidates = [
            b
            for b in arms
            if b is not a and (b.dataset, b.model) == (a.dataset, a.model) and lesson.is_b(b) and lesson.admits(b)
        ]
        groups: dict[str, list[Arm]] = {}
        for b in candidates:
            groups.setdefault(str(lesson.b_group(b)) if lesson.b_group else "", []).append(b)
        for _, bs in sorted(groups.items()):
            assessed = [assess(lesson, a, b, tolerance) for b in bs]
            valid = [p for p in assessed if p.ok]
            if lesson.match and valid:
                valid = [min(valid, key=lambda p: p.distance)]
            if valid:
                out += valid
                continue
            closest = min(assessed, key=lambda p: (len(p.other) + len(p.problems), p.distance))
            if not any(matches(k, DESIGN_KEYS) for k in closest.other):
                out.append(closest)  # an accidental difference (lr, epochs, baseline, ...): refused, keys named
    return out


def paired_values(p: Pairing, metric: str) -> tuple[list[int], list[float], list[str]]:
    """(common seeds, d_s = A - B per seed, notes on unpaired, diverged, duplicate and failed seeds)."""
    va, vb = p.a.metric(metric), p.b.metric(metric)
    seeds = sorted(set(va) & set(vb))
    notes = []
    for side, mine, other in (("A", va, vb), ("B", vb, va)):
        alone = sorted(set(mine) - set(other))
        if alone:
            notes.append(f"seeds {', '.join(map(str, alone))} only in {side} (unpaired, not used)")
    for side, arm in (("A", p.a), ("B", p.b)):
        notes += arm.problems(side)
        for seed, row in sorted(arm.by_seed.items()):
            chance = chance_accuracy(arm.dataset, arm.raw_config)
            acc = row["metrics"].get("final/acc")
            if chance is not None and acc is not None and acc < chance + 0.02:
                notes.append(f"{side} seed {seed} diverged (final acc {acc:.3f}, chance {chance:.2f}); kept")
    return seeds, [va[s] - vb[s] for s in seeds], notes


def describe_pairing(p: Pairing) -> dict[str, Any]:
    """Text columns of a pairing: what differs as the part, what is implied, what is annotated or refused."""
    annotation = []
    if p.neutral:
        annotation.append("measurement differs: " + describe(p.diff, p.neutral))
    if p.regime:
        annotation.append(p.regime)
    refused = []
    if p.other:
        refused.append("differs outside the lesson's part: " + describe(p.diff, p.other))
    refused += p.problems
    return {
        "differs in (part)": describe(p.diff, p.part),
        "implied": describe(p.diff, p.implied),
        "annotation": "; ".join(annotation),
        "training": f"A {p.a.training()} | B {p.b.training()}",
        "refused because": "; ".join(refused),
    }
