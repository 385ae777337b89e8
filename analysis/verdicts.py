"""Lesson verdicts: does each lesson from the pruning literature hold on our runs?

Protocol. Two arms A (the lesson's better one) and B are compared PAIRED BY SEED, within
the same dataset, model and baseline config, at the same operating point (ratio / target;
for L2 at equal measured MACs, within ``mac_tolerance``), and with every other part equal:
the arms differ only in the part the lesson is about. Per common seed s,
d_s = acc(A, s) - acc(B, s); we report mean(d), std(d), n, the 95% Student-t CI
(n - 1 dof) and the two-sided paired t-test p. Over all comparisons the p-values are
Holm-adjusted. Verdict: with one comparison, *holds* if the whole CI is > 0, *does not
hold* if it is < 0, else *inconclusive*; with several, *holds* / *does not hold* when the
Holm-adjusted p < 0.05 (and the mean is > 0 / < 0), else *inconclusive*. n = 1 is
inconclusive (needs >= 2 seeds). No seed is dropped: diverged runs (accuracy within 2
points of chance) are kept and named in the notes.

    python -m analysis.verdicts --store results --out reports
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.load import Store, StoreLike, load_runs
from analysis.output import MISSING, cli, keyed, label, markdown, write_tables
from analysis.parts import OPERATING_POINT, PARTS, ratio_value
from analysis.stats import holm, paired_t, seeds_needed

ALPHA = 0.05
TEST = "paired t-test over seeds (two-sided), 95% Student-t CI with n-1 dof, Holm-adjusted over the table"
METRIC_NAMES = {"final/acc": "final accuracy (with retraining)", "pruned/acc": "accuracy without retraining"}


@dataclass(frozen=True)
class Lesson:
    """A claim "A beats B": arms chosen by the value of one part; ``free`` parts may differ between them."""

    code: str
    part: str
    is_a: Callable[[Any], bool]
    is_b: Callable[[Any], bool]
    a_name: str
    b_name: str | None  # None: one comparison per distinct B value of ``part``
    free: tuple[str, ...]
    metrics: tuple[str, ...] = ("final/acc",)
    equal_macs: bool = False
    hint: str = ""

    def claim(self, b_value: Any = None) -> str:
        return f"{self.a_name} > {self.b_name if self.b_name is not None else b_value}"


LESSONS: tuple[Lesson, ...] = (
    Lesson(
        "L1",
        "schedule",
        lambda v: v == "layerwise",
        lambda v: v == "oneshot",
        "layerwise",
        "oneshot",
        ("schedule", "rounds"),
        hint="runs with schedule=layerwise and schedule=oneshot at equal retraining epochs",
    ),
    Lesson(
        "L1",
        "schedule",
        lambda v: v == "iterative",
        lambda v: v == "oneshot",
        "iterative",
        "oneshot",
        ("schedule", "rounds"),
        hint="e.g. `python run.py -m strategy=l1_oneshot,l1_iterative seed=0,1,2` (at equal retraining epochs)",
    ),
    Lesson(
        "L2",
        "ratio",
        lambda v: v == "sensitivity",
        lambda v: not math.isnan(ratio_value(v)),
        "sensitivity ratios",
        "uniform",
        OPERATING_POINT,
        equal_macs=True,
        hint="runs with ratio=sensitivity and uniform runs of the same MACs, over the same seeds",
    ),
    Lesson(
        "L3",
        "criterion",
        lambda v: v == "l1",
        lambda v: v != "l1",
        "l1",
        None,
        ("criterion",),
        ("pruned/acc", "final/acc"),
        hint="e.g. `python run.py -m strategy=l1_oneshot,random_oneshot seed=0,1,2`",
    ),
    Lesson(
        "L4",
        "retrain",
        lambda v: v == "finetune",
        lambda v: v == "scratch_e",
        "finetune",
        "scratch_e",
        ("retrain", "epochs_budget"),
        hint="runs with retrain=finetune and retrain=scratch_e, same seeds",
    ),
    Lesson(
        "L4",
        "retrain",
        lambda v: v == "finetune",
        lambda v: v == "scratch_b",
        "finetune",
        "scratch_b",
        ("retrain", "epochs_budget"),
        hint="runs with retrain=finetune and retrain=scratch_b, same seeds",
    ),
    Lesson(
        "L5",
        "freeze",
        lambda v: str(v).startswith("most_sensitive"),
        lambda v: v == "none",
        "freeze most sensitive",
        "no freeze",
        ("freeze",),
        hint="runs with freeze=most_sensitive:<k> and freeze=none",
    ),
)


def _arm_label(row: pd.Series, lesson: Lesson) -> str:
    text = f"{row['strategy']} ({label(row, [lesson.part])})"
    return text + (f" [{row['variant']}]" if str(row.get("variant", "")) not in ("", MISSING) else "")


def compare(runs: pd.DataFrame, lessons: tuple[Lesson, ...] = LESSONS, mac_tolerance: float = 0.02) -> pd.DataFrame:
    """One row per comparison (lesson, context, operating point, arms, metric) with the paired statistics and verdict."""
    columns = [
        "lesson",
        "claim",
        "dataset",
        "model",
        "budget",
        "operating point",
        "metric",
        "A",
        "B",
        "n",
        "mean",
        "std",
        "ci_low",
        "ci_high",
        "p",
        "p_holm",
        "verdict",
        "seeds_needed",
        "seeds",
        "notes",
    ]
    if runs.empty or "final/acc" not in runs:
        return pd.DataFrame(columns=columns)
    runs = keyed(runs, [*PARTS, "variant", "baseline_config", "strategy", "experiment"])
    rows: list[dict[str, Any]] = []
    for lesson in lessons:
        fixed = ["dataset", "model", "baseline_config", *[p for p in PARTS if p not in lesson.free]]
        if lesson.equal_macs:
            fixed = [p for p in fixed if p not in OPERATING_POINT]
        arm_keys = ["strategy", "experiment", "variant", *lesson.free]
        for _, ctx in runs.groupby(fixed, sort=True):
            a_runs, b_runs = ctx[ctx[lesson.part].map(lesson.is_a)], ctx[ctx[lesson.part].map(lesson.is_b)]
            if a_runs.empty or b_runs.empty:
                continue
            for _, a in a_runs.groupby(arm_keys, sort=True):
                b_groups = [b for _, b in b_runs.groupby(arm_keys, sort=True)]
                if lesson.equal_macs:
                    b_groups = _closest_macs(a, b_groups, mac_tolerance)
                for b in b_groups:
                    for metric in lesson.metrics:
                        line = _paired_line(lesson, a, b, metric)
                        if line is not None:
                            rows.append(line)
    table = pd.DataFrame(rows, columns=columns)
    return decide(table)


def _closest_macs(a: pd.DataFrame, b_groups: list[pd.DataFrame], tol: float) -> list[pd.DataFrame]:
    """The B arm whose mean MAC ratio is nearest A's, if within ``tol`` (none otherwise)."""
    if "ratio/macs" not in a or a["ratio/macs"].isna().all():
        return []
    target = a["ratio/macs"].mean()
    scored = [
        (abs(b["ratio/macs"].mean() - target), i) for i, b in enumerate(b_groups) if b["ratio/macs"].notna().any()
    ]
    scored = [s for s in scored if s[0] <= tol]
    return [b_groups[min(scored)[1]]] if scored else []


def _paired_line(lesson: Lesson, a: pd.DataFrame, b: pd.DataFrame, metric: str) -> dict[str, Any] | None:
    if metric not in a or metric not in b:
        return None
    notes = []
    for name, arm in (("A", a), ("B", b)):
        if arm["seed"].duplicated().any():
            notes.append(
                f"{name} has several runs per seed (settings differ outside the named parts); their mean is used"
            )
    a_by_seed = a.dropna(subset=[metric]).groupby("seed")[metric].mean()
    b_by_seed = b.dropna(subset=[metric]).groupby("seed")[metric].mean()
    common = sorted(set(a_by_seed.index) & set(b_by_seed.index))
    for name, arm, other in (("A", a_by_seed, b_by_seed), ("B", b_by_seed, a_by_seed)):
        alone = sorted(set(arm.index) - set(other.index))
        if alone:
            notes.append(f"seeds {', '.join(map(str, alone))} only in {name} (unpaired)")
    for name, arm in (("A", a), ("B", b)):
        for _, r in arm[arm["diverged"].astype(bool)].iterrows() if "diverged" in arm else []:
            notes.append(
                f"{name} seed {r['seed']} diverged (final acc {r['final/acc']:.3f}, near chance "
                f"{float(r['chance']):.2f}); kept"
            )
    if not common:
        return None
    diffs = [a_by_seed[s] - b_by_seed[s] for s in common]
    stats = paired_t(diffs)
    first_a, first_b = a.iloc[0], b.iloc[0]
    if lesson.equal_macs:
        point = f"MACs ratio A {a['ratio/macs'].mean():.3f} vs B {b['ratio/macs'].mean():.3f}"
    else:
        point = label(first_a, OPERATING_POINT)
    budget_a, budget_b = first_a["epochs_budget"], first_b["epochs_budget"]
    budget = f"retrain epochs {_int(budget_a)}" + (f" vs {_int(budget_b)}" if str(budget_a) != str(budget_b) else "")
    budget += f", baseline {_int(first_a['baseline_epochs'])} epochs"
    return {
        "lesson": lesson.code,
        "claim": lesson.claim(first_b[lesson.part]),
        "dataset": first_a["dataset"],
        "model": first_a["model"],
        "budget": budget,
        "operating point": point,
        "metric": METRIC_NAMES.get(metric, metric),
        "A": _arm_label(first_a, lesson),
        "B": _arm_label(first_b, lesson),
        "n": stats.n,
        "mean": stats.mean,
        "std": stats.std,
        "ci_low": stats.low,
        "ci_high": stats.high,
        "p": stats.p,
        "p_holm": math.nan,
        "verdict": "",
        "seeds_needed": seeds_needed(stats.mean, stats.std) if stats.n >= 2 else None,
        "seeds": " ".join(map(str, common)),
        "notes": "; ".join(notes),
    }


def _int(value: Any) -> Any:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return value


def decide(table: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Holm-adjust the p-values and set each verdict by the rule in the module docstring."""
    table = table.copy()
    if table.empty:
        return table
    table["p_holm"] = holm(list(table["p"].astype(float)))
    several = int(table["p"].notna().sum()) > 1
    verdicts = []
    for _, r in table.iterrows():
        if r["n"] < 2:
            verdicts.append("inconclusive (needs >= 2 seeds)")
        elif several:
            significant = r["p_holm"] < alpha
            verdicts.append(
                "holds"
                if significant and r["mean"] > 0
                else "does not hold"
                if significant and r["mean"] < 0
                else "inconclusive"
            )
        else:
            verdicts.append("holds" if r["ci_low"] > 0 else "does not hold" if r["ci_high"] < 0 else "inconclusive")
    table["verdict"] = verdicts
    return table


def summary_lines(table: pd.DataFrame, lessons: tuple[Lesson, ...] = LESSONS) -> list[str]:
    """One line per lesson claim: its overall verdict, how many comparisons say what, or what to run."""
    lines = []
    found = list(dict.fromkeys(zip(table["lesson"], table["claim"]))) if not table.empty else []
    claims = dict.fromkeys((lsn.code, lsn.claim()) for lsn in lessons if lsn.b_name is not None)
    for lsn in lessons:  # "A > each other value": one line per value found, or a placeholder
        if lsn.b_name is None and not any(code == lsn.code and c.startswith(f"{lsn.a_name} > ") for code, c in found):
            claims[(lsn.code, lsn.claim("each other"))] = None
    claims.update(dict.fromkeys(found))
    hints = {(lsn.code, lsn.claim(None if lsn.b_name else "each other")): lsn.hint for lsn in lessons}
    for code, claim in sorted(claims, key=lambda c: c[0]):
        rows = table[(table["lesson"] == code) & (table["claim"] == claim)] if not table.empty else table
        if rows.empty:
            hint = hints.get((code, claim)) or next((lsn.hint for lsn in lessons if lsn.code == code), "")
            lines.append(f"**{code}: {claim}**: no comparable runs (needs {hint})")
            continue
        counts = rows["verdict"].str.replace(r" \(.*\)$", "", regex=True).value_counts()
        holds, fails = int(counts.get("holds", 0)), int(counts.get("does not hold", 0))
        overall = "mixed" if holds and fails else "holds" if holds else "does not hold" if fails else "inconclusive"
        where = "; ".join(sorted({f"{r['dataset']}/{r['model']}, {r['budget']}" for _, r in rows.iterrows()}))
        best = rows.iloc[rows["mean"].abs().argmax()]
        ci = (
            f"95% CI [{best['ci_low'] * 100:+.2f}, {best['ci_high'] * 100:+.2f}] pp"
            if best["n"] >= 2
            else "no CI: needs >= 2 seeds"
        )
        lines.append(
            f"**{code}: {claim}**: {overall} ({holds} hold, {fails} do not hold, "
            f"{len(rows) - holds - fails} inconclusive of {len(rows)} comparisons; largest effect "
            f"{best['mean'] * 100:+.2f} pp, {ci}, n = {best['n']}) on {where}"
        )
    return lines


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    """Text version: effects and CIs in percent points, p-values, verdicts."""
    out = table[["lesson", "claim", "dataset", "model", "budget", "operating point", "metric", "A", "B", "n"]].copy()
    out["mean Δ (pp)"] = [f"{m * 100:+.2f}" for m in table["mean"]]
    out["std (pp)"] = [MISSING if pd.isna(s) else f"{s * 100:.2f}" for s in table["std"]]
    out["95% CI (pp)"] = [
        MISSING if pd.isna(lo) else f"[{lo * 100:+.2f}, {hi * 100:+.2f}]"
        for lo, hi in zip(table["ci_low"], table["ci_high"])
    ]
    out["p"] = [MISSING if pd.isna(p) else f"{p:.3g}" for p in table["p"]]
    out["p (Holm)"] = [MISSING if pd.isna(p) else f"{p:.3g}" for p in table["p_holm"]]
    out["verdict"] = table["verdict"]
    out["seeds a CI ∌ 0 would need"] = [
        str(int(s)) if v == "inconclusive" and pd.notna(s) else MISSING
        for s, v in zip(table["seeds_needed"], table["verdict"])
    ]
    out["notes"] = table["notes"]
    return out


def rule_text(table: pd.DataFrame) -> str:
    """How the verdicts were decided, for the report (the number of comparisons included)."""
    m = int(table["p"].notna().sum()) if not table.empty else 0
    decision = (
        "Holm-adjusted p < 0.05 with the sign of the mean difference"
        if m > 1
        else "the 95% CI lying wholly above (holds) or below (does not hold) zero"
    )
    return (
        f"{len(table)} comparisons ({m} with >= 2 seeds). Each pairs seeds of two arms that differ only in the part "
        f"the lesson is about (same dataset, model, baseline config, operating point). Test: {TEST}. "
        f"Verdict: {decision}; otherwise inconclusive. CIs shown are per comparison (not adjusted)."
    )


def verdict_report(store: StoreLike, out: str | Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """(comparison table, summary lines); writes verdicts.csv/.md/.tex into ``out``."""
    table = compare(load_runs(store))
    lines = summary_lines(table)
    if out is not None:
        shown = shown_table(table)
        write_tables(table, shown, out, "verdicts", rule_text(table))
        Path(out, "verdicts.md").write_text(
            "# Lesson verdicts\n\n"
            + "\n".join(f"- {x}" for x in lines)
            + "\n\n"
            + rule_text(table)
            + "\n\n"
            + (markdown(shown) if len(shown) else "")
            + "\n"
        )
    return table, lines


def build(store: Store, out: Path) -> list[Path]:
    _, lines = verdict_report(store, out)
    print("\n".join(lines))
    return [out / f"verdicts.{ext}" for ext in ("csv", "md", "tex")]


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, build))
