"""Accuracy vs compression (Han et al. 2015, Fig. 5; ShrinkBench style): one line per strategy.

x: the fraction of weights (nonzero parameters) or of MACs removed, measured on the final
model; y: test accuracy after retraining (solid) and right after pruning (dashed, hollow; an
arm that never retrains is drawn only so), mean ± std over seeds at each operating point
(ratio / target) of a line. A line is named by its study arms (``arm=...``) when the runs have
them, else by its strategy and the parts that set it apart (``key=value``). Lines that sit at the
same operating point are spread apart on x by a fraction of a percent (said in each panel) so
none hides another. One legend below the panels; the footer counts the runs plotted.

    python -m analysis.tradeoff --store results --out reports
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.load import Store, StoreLike, load_runs
from analysis.output import (
    CONTEXT,
    MISSING,
    NoData,
    cli,
    context_title,
    footer,
    keyed,
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
    table = over_seeds(runs, [*CONTEXT, *LINE, *OPERATING_POINT, "arm"], values)
    return table.sort_values([*CONTEXT, *LINE, "removed/weights_mean"]).reset_index(drop=True)


def arm_label(arms: list[str]) -> str:
    """``"l1_oneshot (+ -r03, -r07)"``: a line's study arms, the shortest name first and the others as its suffixes."""
    arms = sorted(set(arms), key=lambda a: (len(a), a))
    head, rest = arms[0], arms[1:]
    if not rest:
        return head
    suffixes = [a[len(head) :] if a.startswith(head) else a for a in rest]
    return f"{head} (+ {', '.join(suffixes)})"


def _named(row: pd.Series, columns: list[str]) -> str:
    return ", ".join(f"{c}={row[c]}" for c in columns if str(row[c]) not in (MISSING, "", "nan", "None"))


def line_names(table: pd.DataFrame) -> pd.Series:
    """Per row, its line's name: the study arms on the line (:func:`arm_label`) when the runs name arms, else
    the strategy plus the parts (``key=value``) that set apart lines sharing that strategy."""
    keys = [c for c in LINE if c in table]
    frame = keyed(table, [*keys, "arm"])
    names = frame["strategy"].astype(str).copy()
    for _, group in frame.groupby("strategy", sort=False):
        extra = varying(group, keys[1:])
        if extra:
            names.loc[group.index] = [f"{r['strategy']} ({_named(r, extra)})" for _, r in group.iterrows()]
    for _, group in frame.groupby(keys, sort=False):
        arms = [str(a) for a in group["arm"] if str(a) not in (MISSING, "", "nan", "None")]
        if arms:
            names.loc[group.index] = arm_label(arms)
    return names


def dodge(x: pd.Series, lines: pd.Series, width: float) -> pd.Series:
    """``x`` with the points of different lines that share an x (within ``width``) spread ``width`` apart,
    centred on their common x, in line order; lone points stay where they are."""
    out = x.astype(float).copy()
    order = x.sort_values().index
    clusters: list[list] = []
    for i in order:
        if clusters and abs(x[i] - x[clusters[-1][0]]) <= width:
            clusters[-1].append(i)
        else:
            clusters.append([i])
    for cluster in clusters:
        names = list(dict.fromkeys(lines[cluster]))
        if len(names) < 2:
            continue
        centre = float(x[cluster].mean())
        for i in cluster:
            out[i] = centre + (names.index(lines[i]) - (len(names) - 1) / 2) * width
    return out


def tradeoff_figure(store: StoreLike, out: str | Path | None = None) -> Figure:
    """Per dataset/model: test accuracy vs weights removed and vs MACs removed, solid retrained, dashed not retrained.

    One colour per line (strategy, plus the parts that set apart lines of one strategy) in a
    single legend beside the panels, and one legend entry per line style, not one per pair.
    """
    runs = load_runs(store)
    table = tradeoff_table(runs)
    table["line"] = line_names(table)
    contexts = split(table, CONTEXT)
    lines = list(dict.fromkeys(table["line"]))
    rows = math.ceil((len(lines) + 3) / 4)
    fig = Figure(figsize=(12.8, 4.4 * len(contexts) + 0.3 + 0.2 * rows), layout="constrained")
    grid_spec = fig.add_gridspec(len(contexts) + 1, 2, height_ratios=[4.4] * len(contexts) + [0.2 * rows + 0.1])
    axes = [fig.add_subplot(grid_spec[i // 2, i % 2]) for i in range(2 * len(contexts))]
    legend_axes = fig.add_subplot(grid_spec[len(contexts), :])  # the legend's own row: no panel or footer under it
    legend_axes.axis("off")
    for i, (ctx, sub) in enumerate(contexts):
        for j, (what, name_of, xlabel) in enumerate(AXES):
            _panel(axes[2 * i + j], sub, what, lines)
            base = sub["baseline/acc_mean"].mean()
            axes[2 * i + j].set_title(
                f"{context_title(ctx)}\nvs {name_of} removed ({int(sub['seeds'].max())} seeds max"
                + (f"; baseline {base * 100:.2f}%)" if pd.notna(base) else ")"),
                fontsize=9,
            )
            axes[2 * i + j].set_xlabel(xlabel)
    handles = [Line2D([], [], color=line_color(k), marker="o", label=name) for k, name in enumerate(lines)]
    handles += [
        Line2D([], [], color="0.3", marker="o", ls="-", label="after retraining (solid)"),
        Line2D([], [], color="0.3", marker="o", mfc="white", ls="--", label="right after pruning, or no retraining"),
        Line2D([], [], color="k", ls=":", label="baseline (unpruned)"),
    ]
    legend_axes.legend(handles=handles, loc="center", ncols=min(4, len(handles)), fontsize=7, frameon=False)
    fig.suptitle("Accuracy vs compression (Han et al. 2015, Fig. 5); mean ± std over seeds, test split")
    footer(fig, with_removed(runs))
    save(fig, table, out, "tradeoff")
    return fig


def line_color(k: int) -> tuple[float, ...]:
    """The k-th line colour: tab10, then tab20's lighter shades, so up to 20 lines get distinct colours."""
    return mpl.colormaps["tab10"](k) if k < 10 else mpl.colormaps["tab20"](2 * (k - 10) % 20 + 1)


def _panel(ax, sub: pd.DataFrame, what: str, lines: list[str]) -> None:
    """One x quantity: a line per name, solid after retraining, dashed/hollow right after pruning."""
    x_pp = sub[f"removed/{what}_mean"] * 100
    width = max(0.15, 0.008 * float(x_pp.max() - x_pp.min())) if x_pp.notna().any() else 0.15
    xs = dodge(x_pp.fillna(-1.0), sub["line"], width)
    spread = (xs - x_pp).abs().max()
    for name, g in sub.groupby("line", sort=False):
        g = g.sort_values(f"removed/{what}_mean")
        if g[f"removed/{what}_mean"].isna().all():
            continue
        color = line_color(lines.index(name))
        x = xs[g.index]
        xerr = g[f"removed/{what}_std"] * 100 if (g["seeds"] > 1).any() else None
        never = (g["retrain"] == "none").all()
        for metric, style in (("final/acc", "-"), ("pruned/acc", "--")):
            if g[f"{metric}_mean"].isna().all() or (never and metric == "final/acc"):
                continue
            source = "final/acc" if never and g["pruned/acc_mean"].isna().all() else metric
            yerr = g[f"{source}_std"] * 100 if (g[f"{source}_n"] > 1).any() else None
            ax.errorbar(
                x,
                g[f"{source}_mean"] * 100,
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
    if pd.notna(spread) and spread > 0:
        ax.text(
            0.01,
            0.01,
            f"lines at one operating point spread up to ±{spread:.2f} pp on x",
            transform=ax.transAxes,
            fontsize=6.5,
            color="0.4",
        )
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)


def build(store: Store, out: Path) -> list[Path]:
    tradeoff_figure(store, out)
    return [out / f"tradeoff.{ext}" for ext in ("png", "svg", "csv")]


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, build))
