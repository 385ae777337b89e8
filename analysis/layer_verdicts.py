"""Lesson L3-layer: Li et al. 2017's Fig. 2c as a test, per group: smallest-L1 vs random vs largest-L1, no retraining.

The data are the per-criterion sensitivity scans a run stores (``tables.sensitivity_criteria``: each
group pruned alone on that run's baseline, measured without retraining on the scan's validation
images), so the criteria are paired within one scan run, hence by seed. Per arm that scanned, per
group (in network order) and per ratio of :data:`analysis.lessons.SCAN_RATIOS`: d_s = accuracy(l1, s)
- accuracy(B, s) for each B of :data:`analysis.lessons.SCAN_CRITERIA`. The rows carry the verdict
table's columns; :func:`analysis.verdicts.decide` applies Holm over all of the lesson's comparisons
(every group, ratio and criterion), so a lucky group does not make the lesson hold.
"""

from __future__ import annotations

import math
from typing import Any

from analysis.arms import Arm
from analysis.lessons import SCAN_CRITERIA, SCAN_RATIOS, Lesson
from analysis.output import MISSING
from analysis.parts import chance_accuracy
from analysis.stats import mean_std, paired_fields

Entry = dict[int, dict[str, Any]]
"""Per seed: the scan entry (``metric``, ``kept``, ``channels``) and the run it came from (``run_id``)."""


def scan_entries(arm: Arm) -> dict[tuple[str, str, float], Entry]:
    """``{(criterion, group, ratio): {seed: entry}}`` of the arm's per-criterion scans (the run used per seed)."""
    out: dict[tuple[str, str, float], Entry] = {}
    for seed, row in sorted(arm.by_seed.items()):
        for entry in row["tables"].get("sensitivity_criteria") or []:
            metric = entry.get("metric")
            if entry.get("criterion") is None or metric is None or not math.isfinite(float(metric)):
                continue
            key = (str(entry["criterion"]), str(entry["group"]), round(float(entry["ratio"]), 6))
            out.setdefault(key, {})[seed] = {**entry, "run_id": row["run_id"]}
    return out


def scan_comparisons(lesson: Lesson, arms: list[Arm]) -> list[dict[str, Any]]:
    """One verdict-table row per (scanning arm, group, ratio, other criterion): l1's accuracy minus the other's."""
    a_name, b_names = SCAN_CRITERIA
    rows = []
    for arm in arms:
        if not lesson.is_a(arm):
            continue
        entries = scan_entries(arm)
        groups = dict.fromkeys(group for _, group, _ in entries)  # scan order: the network's
        for group in groups:
            for ratio in SCAN_RATIOS:
                a = entries.get((a_name, group, round(ratio, 6)))
                for b_name in b_names:
                    b = entries.get((b_name, group, round(ratio, 6)))
                    if a and b:
                        rows.append(_row(lesson, arm, group, ratio, (a_name, a), (b_name, b)))
    return rows


def _row(
    lesson: Lesson, arm: Arm, group: str, ratio: float, a: tuple[str, Entry], b: tuple[str, Entry]
) -> dict[str, Any]:
    (a_name, va), (b_name, vb) = a, b
    seeds = sorted(set(va) & set(vb))
    diffs = [va[s]["metric"] - vb[s]["metric"] for s in seeds]
    notes = [
        f"seeds {', '.join(map(str, sorted(set(mine) - set(other))))} scanned only with {name} (unpaired, not used)"
        for name, mine, other in ((a_name, va, vb), (b_name, vb, va))
        if set(mine) - set(other)
    ]
    notes += arm.problems("scan")
    mean_a, std_a, _ = mean_std([va[s]["metric"] for s in seeds])
    mean_b, std_b, _ = mean_std([vb[s]["metric"] for s in seeds])
    chance = chance_accuracy(arm.dataset, arm.raw_config)
    if chance is not None and seeds and max(mean_a, mean_b) < chance + 0.02:
        notes.append(f"both criteria at chance ({chance:.2f}): not measurable at this group and ratio")
    first = va[seeds[0]] if seeds else next(iter(va.values()))
    kept = f", keeps {first.get('kept')} of {first.get('channels')} channels" if first.get("channels") else ""
    base = {
        "lesson": lesson.code,
        "claim": lesson.claim,
        "dataset": arm.dataset,
        "model": arm.model,
        "A": f"{arm.label} scan: {a_name}",
        "B": f"{arm.label} scan: {b_name}",
        "operating point": f"{group}, ratio {ratio:g}",
        "endpoint": lesson.endpoint,
        "n": len(seeds),
        "seeds": " ".join(map(str, seeds)),
        "mean_a": mean_a,
        "std_a": std_a,
        "mean_b": mean_b,
        "std_b": std_b,
        "margin": lesson.margin,
        "differs in (part)": f"criterion: {a_name} vs {b_name}",
        "implied": "",
        "annotation": f"{group} pruned alone on the baseline{kept}; same scan run and images per seed",
        "training": "no retraining (scan)",
        "refused because": "",
        "notes": "; ".join(notes),
        "runs": " ".join(str(va[s]["run_id"]) for s in seeds),
    }
    if not seeds:
        return base | {"mean": math.nan, "std": math.nan, "p": math.nan, "p_tost": math.nan, "method": MISSING}
    fields, stats = paired_fields(diffs, lesson.margin)
    if stats.zero_variance:
        base["notes"] = "; ".join([f"zero variance: every seed gave {stats.mean * 100:+.2f} pp"] + notes)
    return base | fields
