"""Accuracy vs compression (Han et al. 2015, Fig. 5; ShrinkBench style): one line per strategy.

x: the fraction of weights (nonzero parameters) or of MACs removed, measured on the final
model; y: test accuracy after retraining (solid) and right after pruning (dashed), mean ±
std over seeds at each operating point (ratio / target) of a strategy. One legend for the
figure: a colour per strategy and one entry per line style; the footer counts the runs plotted.

    python -m analysis.tradeoff --store results --out reports
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.load import Store, StoreLike, load_runs
from analysis.output import (
    CONTEXT,
    NoData,
    cli,
    context_title,
    footer,
    grid,
    label,
    over_seeds,
    save,
    split,
    varying,
)
from analysis.parts import OPERATING_POINT, PARTS

LINE = ["strategy", *[p for p in PARTS if p not in OPERATING_POINT and p != "baseline_epochs"], "variant"]
"""A line: everything but the operating point and the seed."""
HINT = (
    "no finished runs with measured compression (metrics ratio/nonzero_params or ratio/macs): run e.g. "
    "`python run.py -m strategy=l1_oneshot strategy.ratio=0.2,0.4,0.6 seed=0,1,2`"
)
AXES = (("weights", "weights", "weights (nonzero parameters) removed (%)"), ("macs", "MACs", "MACs removed (%)"))


def with_removed(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with a measured compression, with ``removed/weights`` and ``removed/macs``: the runs plotted."""
    if runs.empty or "final/acc" not in runs:
        raise NoData(HINT)
    runs = runs.copy()
    weights = runs["ratio/nonzero_params"] if "ratio/nonzero_params" in runs else pd.Series(np.nan, index=runs.index)
    if "ratio/params" in runs:
        weights = weights.fillna(runs["ratio/params"])
    runs["removed/weights"] = 1.0 - weights
    runs["removed/macs"] = 1.0 - runs["ratio/macs"] if "ratio/macs" in runs else np.nan
    runs = runs[runs[["removed/weights", "removed/macs"]].notna().any(axis=1)]
    if runs.empty:
        raise NoData(HINT)
    return runs


def tradeoff_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (context, line, operating point): fractions of weights and MACs removed, pruned and final accuracy over seeds."""
    runs = with_removed(runs)
    values = ["removed/weights", "removed/macs", "pruned/acc", "final/acc", "baseline/acc"]
    table = over_seeds(runs, [*CONTEXT, *LINE, *OPERATING_POINT], values)
    return table.sort_values([*CONTEXT, *LINE, "removed/weights_mean"]).reset_index(drop=True)


def line_names(table: pd.DataFrame) -> pd.Series:
    """The strategy name, plus the parts that set apart lines sharing that name."""
    names = table["strategy"].astype(str).copy()
    for _, group in table.groupby("strategy"):
        extra = varying(group, LINE[1:])
        if extra:
            names.loc[group.index] = [f"{r['strategy']} ({label(r, extra)})" for _, r in group.iterrows()]
    return names


def tradeoff_figure(store: StoreLike, out: str | Path | None = None) -> Figure:
    """Per dataset/model: test accuracy vs weights removed and vs MACs removed, solid retrained, dashed not retrained.

    One colour per line (strategy, plus the parts that set apart lines of one strategy) in a
    single legend beside the panels, and one legend entry per line style, not one per pair.
    """
    runs = load_runs(store)
    table = tradeoff_table(runs)
    table["line"] = line_names(table)
    contexts = split(table, CONTEXT)
    fig, axes = grid(2 * len(contexts), ncols=2)
    lines = list(dict.fromkeys(table["line"]))
    for i, (ctx, sub) in enumerate(contexts):
        for j, (what, name_of, xlabel) in enumerate(AXES):
            ax = axes[2 * i + j]
            for name, g in sub.groupby("line", sort=False):
                g = g.sort_values(f"removed/{what}_mean")
                if g[f"removed/{what}_mean"].isna().all():
                    continue
                color = f"C{lines.index(name) % 10}"
                x = g[f"removed/{what}_mean"] * 100
                xerr = g[f"removed/{what}_std"] * 100 if (g["seeds"] > 1).any() else None
                for metric, style in (("final/acc", "-"), ("pruned/acc", "--")):
                    if g[f"{metric}_mean"].isna().all() or (metric == "pruned/acc" and (g["retrain"] == "none").all()):
                        continue
                    yerr = g[f"{metric}_std"] * 100 if (g[f"{metric}_n"] > 1).any() else None
                    ax.errorbar(
                        x,
                        g[f"{metric}_mean"] * 100,
                        xerr=xerr,
                        yerr=yerr,
                        ls=style,
                        marker="o",
                        mfc=color if style == "-" else "white",
                        color=color,
                        capsize=2,
                    )
            base = sub["baseline/acc_mean"].mean()
            if pd.notna(base):
                ax.axhline(base * 100, color="k", ls=":", lw=1)
            ax.set_title(
                f"{context_title(ctx)}\nvs {name_of} removed ({int(sub['seeds'].max())} seeds max"
                + (f"; baseline {base * 100:.2f}%)" if pd.notna(base) else ")"),
                fontsize=9,
            )
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=f"C{k % 10}", marker="o", label=name) for k, name in enumerate(lines)]
    handles += [
        Line2D([], [], color="0.3", marker="o", ls="-", label="after retraining (solid)"),
        Line2D([], [], color="0.3", marker="o", mfc="white", ls="--", label="right after pruning (dashed)"),
        Line2D([], [], color="k", ls=":", label="baseline (unpruned)"),
    ]
    fig.legend(handles=handles, loc="outside right upper", fontsize=7, title="strategy", title_fontsize=7)
    fig.suptitle("Accuracy vs compression (Han et al. 2015, Fig. 5); mean ± std over seeds, test split")
    footer(fig, with_removed(runs))
    save(fig, table, out, "tradeoff")
    return fig


def build(store: Store, out: Path) -> list[Path]:
    tradeoff_figure(store, out)
    return [out / f"tradeoff.{ext}" for ext in ("png", "svg", "csv")]


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, build))
