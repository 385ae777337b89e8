"""The verdict forest plot: per comparison, the paired difference A - B with the interval behind its outcome.

One row per tested comparison, a panel per lesson (its own x scale): the mean difference (point), the
difference interval at 1 - alpha* (thin bar; alpha* the level Holm tested it at inside its
lesson, so the bar misses 0 exactly when the difference is declared), the equivalence
interval at 1 - 2 alpha*_TOST (thick bar; inside the shaded margin exactly when equivalence is
declared), and the outcome written at the right. Zero-variance comparisons (exact sign test,
no t-interval) are drawn as a cross. Refused comparisons are not drawn (the table says why).

    python -m analysis.forest --store results --out reports
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.transforms as mtransforms
import pandas as pd
from matplotlib.figure import Figure

from analysis.lessons import ENDPOINT_NAMES
from analysis.load import Store, StoreLike, read_store
from analysis.output import NoData, cli, footer, save
from analysis.verdicts import compare

COLORS = {"better": "tab:green", "worse": "tab:red", "equivalent": "tab:blue", "inconclusive": "0.45"}
HINT = "no tested lesson comparison (two arms of a lesson over >= 2 common seeds): run a study, e.g. `study=schedules`"


def forest_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The comparisons a forest plot shows: tested (n >= 2, not refused), in lesson order."""
    if table.empty:
        raise NoData(HINT)
    rows = table[(table["outcome"] != "refused") & (table["n"] >= 2) & table["mean"].notna()].copy()
    if rows.empty:
        raise NoData(HINT)
    return rows.reset_index(drop=True)


def _label(r: pd.Series) -> str:
    point = "" if r["operating point"] in ("", "—") else f", {r['operating point']}"
    return f"{r['lesson']} {r['A']} vs {r['B']}{point} (n={r['n']})"


def forest_figure(store: StoreLike, out: str | Path | None = None, table: pd.DataFrame | None = None) -> Figure:
    """The forest plot of the verdict table of ``store`` (or of ``table``, a :func:`analysis.verdicts.compare` result).

    One panel per lesson, each on its own x scale (effects without retraining are tens of points,
    after retraining tenths), so the margin stays visible next to every interval.
    """
    rows = forest_rows(compare(store) if table is None else table)
    lessons = list(dict.fromkeys(rows["lesson"]))
    sizes = [int((rows["lesson"] == code).sum()) for code in lessons]
    fig = Figure(figsize=(11.0, 1.2 + 0.42 * len(rows) + 0.75 * len(lessons)), layout="constrained")
    axes = fig.subplots(len(lessons), 1, squeeze=False, gridspec_kw={"height_ratios": sizes})[:, 0]
    for ax, code in zip(axes, lessons):
        _panel(ax, rows[rows["lesson"] == code].reset_index(drop=True))
    axes[-1].set_xlabel("paired difference A - B per seed (percentage points of test accuracy)")
    fig.suptitle(
        "Verdicts: point = mean difference; thin bar = CI at 1 - alpha* (Holm, inside the lesson); "
        "thick bar = 1 - 2 alpha* interval (TOST); shaded = ±margin",
        fontsize=9,
    )
    footer(fig, pd.DataFrame({"run_id": sorted({i for ids in rows["runs"] for i in str(ids).split()})}))
    cols = ["lesson", "claim", "A", "B", "operating point", "endpoint", "n", "mean", "ci_low", "ci_high"]
    cols += ["alpha_ci", "eq_low", "eq_high", "alpha_eq", "margin", "outcome"]
    save(fig, rows[cols], out, "forest")
    return fig


def _panel(ax, rows: pd.DataFrame) -> None:
    """One lesson's comparisons, top to bottom, with the margin shaded and the outcome written at the right."""
    n = len(rows)
    ys = list(range(n, 0, -1))
    to_right = mtransforms.blended_transform_factory(ax.transAxes, ax.transData)
    margin = float(rows["margin"].max()) * 100
    ax.axvspan(-margin, margin, color="tab:blue", alpha=0.12, lw=0)
    for y, (_, r) in zip(ys, rows.iterrows()):
        color = COLORS.get(r["outcome"], "k")
        if pd.notna(r["eq_low"]):
            ax.plot(
                [r["eq_low"] * 100, r["eq_high"] * 100], [y, y], color=color, lw=5, alpha=0.45, solid_capstyle="butt"
            )
        if pd.notna(r["ci_low"]):
            ax.plot([r["ci_low"] * 100, r["ci_high"] * 100], [y, y], color=color, lw=1.3)
            ax.plot([r["ci_low"] * 100, r["ci_high"] * 100], [y, y], ls="", marker="|", ms=8, color=color)
        ax.plot([r["mean"] * 100], [y], marker="o" if pd.notna(r["ci_low"]) else "X", ms=6, color=color)
        text = r["outcome"] + ("" if pd.notna(r["ci_low"]) else " (zero variance: sign test)")
        ax.text(1.01, y, text, transform=to_right, va="center", fontsize=8, color=color)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(ys, [_label(r) for _, r in rows.iterrows()], fontsize=8)
    ax.set_ylim(0.4, n + 0.6)
    ends = [v * 100 for col in ("ci_low", "ci_high", "eq_low", "eq_high", "mean") for v in rows[col] if pd.notna(v)]
    low, high = min([-margin, *ends]), max([margin, *ends])
    pad = 0.08 * (high - low)
    ax.set_xlim(low - pad, high + pad)
    first = rows.iloc[0]
    ax.set_title(
        f"{first['lesson']}: {ENDPOINT_NAMES.get(first['endpoint'], first['endpoint'])}, margin ±{margin:g} pp, "
        f"Holm over {int(first['family'])} comparisons",
        fontsize=9,
        loc="left",
    )
    ax.grid(axis="x", alpha=0.3)


def build(store: Store, out: Path) -> list[Path]:
    forest_figure(read_store(store), out)
    return [out / f"forest.{ext}" for ext in ("png", "svg", "csv")]


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, build))
