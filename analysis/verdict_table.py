"""The verdict table a reader sees: per comparison n, each arm's mean ± std, the difference's interval at the
level the decision used, the TOST interval, the outcome and what it means against the lesson's margin.

:func:`reading` words an outcome against the lesson's declared margin (its smallest effect that
matters): a difference that is significant but smaller than the margin says so, and so does one
whose interval reaches inside the margin. :func:`results_table` is the compact Markdown table
(``verdicts_summary.md``); the full table with p-values and pairing notes stays in ``verdicts.md``.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from analysis.output import MISSING

SMALLER_THAN_MARGIN = "significant, but smaller than the lesson's ±{m} pp margin: not an effect that matters"


def _pp(x: float, digits: int = 2) -> str:
    return MISSING if x is None or pd.isna(x) else f"{x * 100:+.{digits}f}"


def _interval(low: float, high: float, alpha: float, two_sided_alpha: float = 1.0) -> str:
    if pd.isna(low) or pd.isna(high) or pd.isna(alpha):
        return MISSING
    return f"[{_pp(low)}, {_pp(high)}] at {100 * (1 - two_sided_alpha * alpha):.2f}%"


def reading(r: pd.Series | dict[str, Any]) -> str:
    """The outcome in words, measured against the lesson's margin (``r`` is a row of the verdict table)."""
    outcome, mean, margin = r["outcome"], r["mean"], r["margin"]
    m = f"{margin * 100:g}"
    if outcome == "refused":
        return "not compared: the arms differ outside the lesson's part (see the full table)"
    if outcome in ("better", "worse"):
        text = f"{outcome} by {abs(mean) * 100:.2f} pp"
        if abs(mean) < margin:
            return f"{text}: " + SMALLER_THAN_MARGIN.format(m=m)
        low, high = r.get("ci_low"), r.get("ci_high")
        if pd.notna(low) and pd.notna(high) and min(abs(low), abs(high)) < margin:
            return f"{text}; the interval reaches inside the ±{m} pp margin, so the effect may be too small to matter"
        return f"{text}, beyond the ±{m} pp margin"
    if outcome == "equivalent":
        return f"equivalent: the TOST interval lies inside ±{m} pp"
    if r["n"] < 2 or pd.isna(mean):
        return "not tested: fewer than two paired seeds"
    needed = r.get("seeds_needed")
    more = ""
    if needed is not None and not (isinstance(needed, float) and math.isnan(needed)):
        more = "; > 10000 seeds would be needed" if math.isinf(needed) else f"; about {int(needed)} seeds would decide"
    return f"inconclusive: neither a difference nor equivalence within ±{m} pp shown{more}"


def arm_cell(mean: float, std: float, n: float) -> str:
    """``"91.18 ± 0.14"`` (percent of the endpoint over the paired seeds)."""
    if pd.isna(mean):
        return MISSING
    return f"{mean * 100:.2f}" + ("" if pd.isna(std) or n < 2 else f" ± {std * 100:.2f}")


def results_table(table: pd.DataFrame) -> pd.DataFrame:
    """The compact verdict table: lesson, arms, operating point, n, each arm's mean ± std (%), mean Δ (pp), the
    difference's CI at the decision's (Holm) level, the TOST interval, the margin, the outcome and its reading."""
    rows = []
    for _, r in table.iterrows():
        rows.append(
            {
                "lesson": r["lesson"],
                "A vs B": f"{r['A']} vs {r['B']}",
                "operating point": r["operating point"],
                "n": r["n"],
                "A (%)": arm_cell(r.get("mean_a"), r.get("std_a"), r["n"]),
                "B (%)": arm_cell(r.get("mean_b"), r.get("std_b"), r["n"]),
                "mean Δ (pp)": _pp(r["mean"]),
                "CI (pp), level": _interval(r["ci_low"], r["ci_high"], r["alpha_ci"]),
                "TOST interval (pp), level": _interval(r["eq_low"], r["eq_high"], r["alpha_eq"], 2.0),
                "margin (pp)": f"±{r['margin'] * 100:g}",
                "outcome": r["outcome"],
                "reading": r.get("reading") or reading(r),
            }
        )
    return pd.DataFrame(rows)


RESULTS_TEXT = (
    "Per comparison: n paired seeds; each arm's mean ± std of the lesson's endpoint over those seeds; the mean "
    "paired difference A - B; its CI at 1 - alpha*, the level Holm's step-down tested it at inside the lesson (it "
    "excludes 0 exactly when better/worse is declared); the TOST interval at 1 - 2 alpha*_TOST (inside the margin "
    "exactly when equivalence is declared). The reading says when a declared difference is smaller than the "
    "lesson's margin. Per-seed values: seeds.csv."
)
