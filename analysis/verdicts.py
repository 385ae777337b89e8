"""Lesson verdicts: better / worse / equivalent / inconclusive, per comparison, inside each lesson's family.

Protocol (declared in :mod:`analysis.lessons`, pairs chosen by :mod:`analysis.pairing`):
arms whose full resolved configs differ only in the lesson's part (and what it implies)
are paired by seed; d_s = endpoint(A, s) - endpoint(B, s) on the lesson's one primary
endpoint. Per comparison: mean, std, n, the two-sided paired t-test p (difference) and the
TOST p (equivalence within +-margin, default 0.25 pp). Both families of p-values are
Holm-adjusted over that lesson's comparisons only, so no verdict depends on the other
lessons in the store. Outcome at family-wise alpha = 0.05:

- *equivalent*: Holm-adjusted TOST p < alpha (the 1 - 2 alpha* interval lies inside the margin);
- *better* / *worse*: Holm-adjusted difference p < alpha, by the sign of the mean;
- *inconclusive*: neither (also n < 2, with the seeds a powered sweep needs).

Intervals match the decision: the difference CI is at level 1 - alpha*, alpha* the level
Holm's step-down tested that comparison at (it excludes 0 exactly when Holm rejects), the
equivalence interval at 1 - 2 alpha*_TOST. Zero-variance differences get the exact sign
test instead of t (no p = 0). Duplicate runs of an (arm, seed) are not averaged: the latest
is used and the others named; failed, diverged and unpaired seeds are named. Secondary
endpoints (params, MACs, wall time, the other accuracy) are reported apart, unadjusted.

    python -m analysis.verdicts --store results --out reports
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.arms import build_arms
from analysis.baseline_schedules import baseline_gains
from analysis.convergence import rising_note
from analysis.layer_verdicts import scan_comparisons
from analysis.lessons import ENDPOINT_NAMES, LESSONS, SCAN_ENDPOINT, SECONDARY, Lesson
from analysis.load import Store, StoreLike, read_store
from analysis.output import MISSING, cli, markdown, write_tables
from analysis.pairing import TOLERANCE, Pairing, describe_pairing, paired_values, pairings
from analysis.planning import plan
from analysis.stats import holm, holm_levels, mean_std, paired_fields, paired_t, t_interval
from analysis.verdict_table import RESULTS_TEXT, reading, results_table

ALPHA = 0.05
POWER = 0.8
OUTCOMES = ("better", "worse", "equivalent", "inconclusive", "refused")
COLUMNS = [
    "lesson",
    "claim",
    "dataset",
    "model",
    "A",
    "B",
    "operating point",
    "endpoint",
    "n",
    "seeds",
    "mean_a",
    "std_a",
    "mean_b",
    "std_b",
    "mean",
    "std",
    "method",
    "p",
    "p_tost",
    "margin",
    "p_holm",
    "p_tost_holm",
    "family",
    "alpha_ci",
    "ci_low",
    "ci_high",
    "alpha_eq",
    "eq_low",
    "eq_high",
    "outcome",
    "reading",
    "seeds_needed",
    "differs in (part)",
    "implied",
    "annotation",
    "training",
    "refused because",
    "notes",
    "runs",
]


def _operating_point(p: Pairing) -> str:
    parts = p.a.parts
    text = []
    if parts.get("ratio") not in (None, "", "sensitivity"):
        text.append(f"ratio {parts['ratio']}")
    elif parts.get("ratio") == "sensitivity" and parts.get("target_reduction") is not None:
        text.append(f"target {parts['target_reduction']}")
    elif parts.get("ratio") == "sensitivity" and parts.get("match_uniform") is not None:
        text.append(f"removes what uniform {parts['match_uniform']} removes")
    if parts.get("ratio_policy") not in (None, "", "uniform"):
        text.append(str(parts["ratio_policy"]))
    if parts.get("recalibrate_bn") not in (None, "", 0, False, "none"):
        text.append(f"BN recalibrated ({parts['recalibrate_bn']})")
    return ", ".join(text) or MISSING


def _row(p: Pairing, metric: str, gains: pd.DataFrame | None = None) -> dict[str, Any]:
    seeds, diffs, notes = paired_values(p, metric)
    rising = rising_note([arm.by_seed[s] for arm in (p.a, p.b) for s in seeds], p.lesson.margin, gains)
    notes = [*notes, rising] if rising else notes
    base = {
        "lesson": p.lesson.code,
        "claim": p.lesson.claim,
        "dataset": p.a.dataset,
        "model": p.a.model,
        "A": p.a.label,
        "B": p.b.label,
        "operating point": _operating_point(p),
        "endpoint": metric,
        "n": len(seeds),
        "seeds": " ".join(map(str, seeds)),
        "margin": p.lesson.margin,
        **describe_pairing(p),
        "notes": "; ".join(notes),
        "runs": " ".join(arm.by_seed[s]["run_id"] for arm in (p.a, p.b) for s in seeds),
    }
    for side, arm in (("a", p.a), ("b", p.b)):  # each arm over the paired seeds: what the difference is of
        values = arm.metric(metric)
        base[f"mean_{side}"], base[f"std_{side}"], _ = mean_std([values[s] for s in seeds])
    if not p.ok or not seeds:
        return base | {"mean": math.nan, "std": math.nan, "p": math.nan, "p_tost": math.nan, "method": MISSING}
    fields, stats = paired_fields(diffs, p.lesson.margin)
    if stats.zero_variance:
        base["notes"] = "; ".join(
            [f"zero variance: every seed gave {stats.mean * 100:+.2f} pp (n = {stats.n}); exact sign tests, no t"]
            + notes
        )
    return base | fields


def _secondary(p: Pairing, lesson: Lesson) -> list[dict[str, Any]]:
    rows = []
    other = "final/acc" if lesson.endpoint == "pruned/acc" else "pruned/acc"
    for metric in (other, *SECONDARY):
        seeds, diffs, _ = paired_values(p, metric)
        if not seeds:
            continue
        stats = paired_t(diffs)
        rows.append(
            {
                "lesson": lesson.code,
                "claim": lesson.claim,
                "A": p.a.label,
                "B": p.b.label,
                "operating point": _operating_point(p),
                "endpoint": metric,
                "n": stats.n,
                "mean A": p.a.mean(metric),
                "mean B": p.b.mean(metric),
                "mean Δ": stats.mean,
                "95% CI low": stats.low,
                "95% CI high": stats.high,
            }
        )
    return rows


def comparisons(
    store: StoreLike, lessons: tuple[Lesson, ...] = LESSONS, alpha: float = ALPHA, tolerance: float = TOLERANCE
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(primary verdict table, secondary endpoints table) for every lesson comparison in ``store``."""
    store = read_store(store)
    arms = build_arms(store)
    gains = baseline_gains(store)
    rows, secondary = [], []
    for lesson in lessons:
        if lesson.endpoint == SCAN_ENDPOINT:  # per group and ratio, within each run's per-criterion scans
            rows += scan_comparisons(lesson, arms)
            continue
        for p in pairings(lesson, arms, tolerance):
            rows.append(_row(p, lesson.endpoint, gains))
            if p.ok:
                secondary += _secondary(p, lesson)
    table = decide(pd.DataFrame(rows, columns=COLUMNS), alpha, lessons)
    return table, pd.DataFrame(secondary)


def compare(store: StoreLike, lessons: tuple[Lesson, ...] = LESSONS, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per comparison (lesson, arms, operating point): paired statistics, intervals and outcome."""
    return comparisons(store, lessons, alpha)[0]


def pooled_sd(table: pd.DataFrame) -> dict[str, tuple[float, int, int]]:
    """Per lesson: (pooled SD of the paired differences, its degrees of freedom, comparisons pooled).

    The variance is the df-weighted mean of the comparisons' variances; its degrees of freedom
    are counted honestly, one per seed: comparisons that share an arm reuse the same runs, so
    each group of comparisons linked by shared arms adds its distinct seeds less one, not the
    sum of its comparisons' n - 1 (:func:`honest_dof`).
    """
    out = {}
    tested = table[(table["n"] >= 2) & table["std"].notna()] if not table.empty else table
    for code, rows in tested.groupby("lesson", sort=False):
        weights = int((rows["n"] - 1).sum())
        if weights > 0:
            var = float(((rows["n"] - 1) * rows["std"] ** 2).sum()) / weights
            out[str(code)] = (math.sqrt(var), honest_dof(rows), len(rows))
    return out


def honest_dof(rows: pd.DataFrame) -> int:
    """Degrees of freedom of comparisons pooled: per group of comparisons linked by a shared arm
    (A or B), the distinct seeds less one, summed over the groups."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for a, b in zip(rows["A"], rows["B"]):
        parent[root(str(a))] = root(str(b))
    seeds: dict[str, set[str]] = {}
    for a, n, listed in zip(rows["A"], rows["n"], rows["seeds"]):
        names = str(listed).split() if isinstance(listed, str) and listed.strip() else [f"#{i}" for i in range(int(n))]
        seeds.setdefault(root(str(a)), set()).update(names)
    return sum(max(0, len(s) - 1) for s in seeds.values())


def decide(table: pd.DataFrame, alpha: float = ALPHA, lessons: tuple[Lesson, ...] = LESSONS) -> pd.DataFrame:
    """Holm inside each lesson's family, matching intervals, the four outcomes and the seeds a powered sweep needs."""
    table = table.copy()
    for col in ("p_holm", "p_tost_holm", "alpha_ci", "ci_low", "ci_high", "alpha_eq", "eq_low", "eq_high"):
        table[col] = math.nan
    table["family"], table["outcome"], table["seeds_needed"], table["reading"] = 0, "", None, ""
    by_code = {lsn.code: lsn for lsn in lessons}
    pooled = pooled_sd(table)
    for code, idx in table.groupby("lesson", sort=False).groups.items():
        tested = [i for i in idx if pd.notna(table.at[i, "p"])]
        p = [float(table.at[i, "p"]) for i in tested]
        pt = [float(table.at[i, "p_tost"]) for i in tested]
        for column, values in (
            ("p_holm", holm(p)),
            ("alpha_ci", holm_levels(p, alpha)),
            ("p_tost_holm", holm(pt)),
            ("alpha_eq", holm_levels(pt, alpha)),
        ):
            for i, v in zip(tested, values):
                table.at[i, column] = v
        needed = None
        if code in pooled:
            lesson = by_code.get(code)
            sd, dof, _ = pooled[code]
            margin = lesson.margin if lesson else table.at[idx[0], "margin"]
            effect = lesson.effect if lesson else margin
            needed = plan(sd * 100, effect * 100, margin * 100, alpha, POWER, max(1, len(tested)), dof).seeds
            needed = math.inf if needed is None else needed  # beyond the search limit
        for i in idx:
            table.at[i, "family"] = len(tested)
            table.at[i, "outcome"] = _outcome(table.loc[i], alpha)
            if table.at[i, "outcome"] == "inconclusive":
                table.at[i, "seeds_needed"] = needed
            _intervals(table, i)
            table.at[i, "reading"] = reading(table.loc[i])
    return table


def _intervals(table: pd.DataFrame, i: Any) -> None:
    r = table.loc[i]
    if r["n"] < 2 or r["method"] != "t":
        return
    table.at[i, "ci_low"], table.at[i, "ci_high"] = t_interval(r["mean"], r["std"], int(r["n"]), r["alpha_ci"])
    if pd.notna(r["alpha_eq"]) and 2 * r["alpha_eq"] < 1:
        table.at[i, "eq_low"], table.at[i, "eq_high"] = t_interval(r["mean"], r["std"], int(r["n"]), 2 * r["alpha_eq"])


def _outcome(r: pd.Series, alpha: float) -> str:
    if isinstance(r["refused because"], str) and r["refused because"]:
        return "refused"
    if r["n"] < 2 or pd.isna(r["p"]):
        return "inconclusive"
    if pd.notna(r["p_tost_holm"]) and r["p_tost_holm"] < alpha:
        return "equivalent"
    if r["p_holm"] < alpha:
        return "better" if r["mean"] > 0 else "worse"
    return "inconclusive"


def _pp(x: float, digits: int = 2) -> str:
    return MISSING if pd.isna(x) else f"{x * 100:+.{digits}f}"


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    """Text version: effects and intervals in percentage points, adjusted levels and p-values, outcomes."""
    out = table[["lesson", "claim", "dataset", "model", "A", "B", "operating point", "n"]].copy()
    out["endpoint"] = [ENDPOINT_NAMES.get(m, m) for m in table["endpoint"]]
    out["mean Δ (pp)"] = [_pp(m) for m in table["mean"]]
    out["std (pp)"] = [MISSING if pd.isna(s) else f"{s * 100:.2f}" for s in table["std"]]
    out["CI (pp), level"] = [
        MISSING if pd.isna(lo) else f"[{_pp(lo)}, {_pp(hi)}] at {100 * (1 - a):.2f}%"
        for lo, hi, a in zip(table["ci_low"], table["ci_high"], table["alpha_ci"])
    ]
    out["p (Holm, in lesson)"] = [MISSING if pd.isna(p) else f"{p:.3g}" for p in table["p_holm"]]
    out["TOST p (Holm)"] = [MISSING if pd.isna(p) else f"{p:.3g}" for p in table["p_tost_holm"]]
    out["margin (pp)"] = [f"±{m * 100:g}" for m in table["margin"]]
    out["outcome"] = table["outcome"]
    out["seeds needed"] = [
        MISSING if s is None or pd.isna(s) else ("> 10000" if math.isinf(s) else str(int(s)))
        for s in table["seeds_needed"]
    ]
    for col in ("differs in (part)", "implied", "annotation", "training", "refused because", "notes"):
        out[col] = table[col].replace("", MISSING)
    return out


def summary_lines(table: pd.DataFrame, lessons: tuple[Lesson, ...] = LESSONS) -> list[str]:
    """One line per lesson claim: outcome counts, the largest effect with its interval, or what to run."""
    lines = []
    for lesson in lessons:
        rows = table[(table["lesson"] == lesson.code) & (table["claim"] == lesson.claim)] if not table.empty else table
        if rows.empty:
            lines.append(f"**{lesson.code}: {lesson.claim}**: no comparable runs (needs {lesson.hint})")
            continue
        counts = rows["outcome"].value_counts()
        tally = ", ".join(f"{int(counts[o])} {o}" for o in OUTCOMES if o in counts)
        tested = rows[rows["mean"].notna()]
        if tested.empty:
            lines.append(f"**{lesson.code}: {lesson.claim}**: {tally}: {rows.iloc[0]['refused because']}")
            continue
        best = tested.loc[tested["mean"].abs().idxmax()]
        ci = (
            f"CI [{_pp(best['ci_low'])}, {_pp(best['ci_high'])}] pp at {100 * (1 - best['alpha_ci']):.2f}%"
            if pd.notna(best["ci_low"])
            else "no t-interval (zero variance: exact sign test)"
        )
        lines.append(
            f"**{lesson.code}: {lesson.claim}** ({ENDPOINT_NAMES.get(lesson.endpoint, lesson.endpoint)}, margin "
            f"±{lesson.margin * 100:g} pp, Holm over the lesson's {int(best['family'])} comparisons): {tally}; "
            f"largest effect {_pp(best['mean'])} pp ({best['outcome']}), {ci}, n = {best['n']}" + _small(rows)
        )
    return lines


def _small(rows: pd.DataFrame) -> str:
    """``"; 1 declared difference smaller than the margin (A vs B)"`` when a significant effect is below the margin."""
    small = rows[rows["outcome"].isin(("better", "worse")) & (rows["mean"].abs() < rows["margin"])]
    if small.empty:
        return ""
    pairs = ", ".join(f"{r['A']} vs {r['B']} {_pp(r['mean'])} pp" for _, r in small.iterrows())
    return f"; significant but smaller than the ±{small['margin'].max() * 100:g} pp margin: {pairs}"


def rule_text(table: pd.DataFrame) -> str:
    """How the outcomes were decided, with the number of comparisons and families."""
    tested = int(table["p"].notna().sum()) if not table.empty else 0
    refused = int((table["outcome"] == "refused").sum()) if not table.empty else 0
    families = table.loc[table["p"].notna(), "lesson"].nunique() if not table.empty else 0
    return (
        f"{len(table)} comparisons ({tested} tested in {families} lesson families, {refused} refused). Arms are "
        "paired by seed and differ only in the lesson's part and the keys it implies (see the lesson declarations); "
        "any other config difference refuses the comparison. Paired t-test (difference) and TOST (equivalence within "
        f"the margin), each Holm-adjusted inside its lesson's family at alpha = {ALPHA}: equivalent if TOST rejects, "
        "else better/worse if the difference test rejects, else inconclusive. The CI is at 1 - alpha*, the level "
        "Holm tested that comparison at, so it excludes 0 exactly when the difference is declared. Zero variance: "
        "exact sign test. Seeds needed: noncentral-t power 0.8 at the lesson's pooled SD (its 80% upper limit) for "
        "the declared effect and for equivalence, at alpha / family size."
    )


def verdict_report(store: StoreLike, out: str | Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """(comparison table, summary lines); writes verdicts.csv/.md/.tex and verdicts_secondary.csv/.md into ``out``."""
    table, secondary = comparisons(store)
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
        compact = results_table(table)
        write_tables(compact, compact, out, "verdicts_summary", RESULTS_TEXT)
        if not secondary.empty:
            write_tables(secondary, shown_secondary(secondary), out, "verdicts_secondary", SECONDARY_TEXT)
        else:  # no stale file from an earlier report of another store
            for ext in ("csv", "md", "tex"):
                Path(out, f"verdicts_secondary.{ext}").unlink(missing_ok=True)
    return table, lines


SECONDARY_TEXT = (
    "Secondary endpoints of the same pairs (not in any Holm family; unadjusted 95% Student-t CIs): the other "
    "accuracy, params and MACs ratios (final / baseline), retraining and run wall time (s)."
)


def shown_secondary(secondary: pd.DataFrame) -> pd.DataFrame:
    out = secondary[["lesson", "claim", "A", "B", "operating point", "endpoint", "n"]].copy()
    for col in ("mean A", "mean B", "mean Δ", "95% CI low", "95% CI high"):
        out[col] = [MISSING if pd.isna(v) else f"{v:.4g}" for v in secondary[col]]
    return out


def build(store: Store, out: Path) -> list[Path]:
    _, lines = verdict_report(store, out)
    print("\n".join(lines))
    return [out / f"verdicts.{ext}" for ext in ("csv", "md", "tex")]


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, build))
