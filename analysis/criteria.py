"""Pruning criteria compared (Li et al. 2017, Fig. 2c): smallest L1 vs random vs largest L1 vs the rest.

For each uniform ratio (x from 0 to 100% of the filters, ticks every 10%), test accuracy
right after pruning (no retraining, ``pruned/acc``) and after retraining (``final/acc``),
mean ± std over seeds, one line per criterion, with the unpruned baseline and chance
(1 / classes) marked. A panel holds runs that differ only in the criterion and the ratio;
the footer counts the runs plotted. Per layer, from scans: :mod:`analysis.layer_criteria`.

    python -m analysis.criteria --store results --out reports
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis.load import Store, StoreLike, load_runs
from analysis.output import (
    CONTEXT,
    NoData,
    cli,
    errorbar,
    facet_title,
    footer,
    grid,
    keyed,
    over_seeds,
    save,
    split,
    varying,
)
from analysis.parts import PARTS

_FACET = [
    *CONTEXT,
    "kind",
    "schedule",
    "rounds",
    "ratio_policy",
    "scoring",
    "retrain",
    "freeze",
    "epochs_budget",
]
FACET = list(dict.fromkeys(_FACET + [p for p in PARTS if p not in (*CONTEXT, "criterion", "ratio")]))
"""A panel: every part but the criterion and the ratio, so arms that differ in anything else (a skipped group,
a global ranking, BatchNorm recalibration) are never pooled into one criterion's points."""
ORDER = ["l1", "random", "largest_l1", "l2", "bn_gamma", "fpgm", "taylor", "apoz", "activation_mean"]
MARKERS = "osv^D<>pP*hX"
HINT = (
    "no filter-pruning runs of two or more criteria at the same settings: run e.g. "
    "`python run.py -m strategy=l1_oneshot,random_oneshot strategy.ratio=0.3,0.5,0.7 seed=0,1,2`"
)


def criterion_rank(name: str) -> tuple[int, str]:
    """Sort key: Li et al.'s criteria first (l1, random, largest_l1), then the others by name."""
    return (ORDER.index(name) if name in ORDER else len(ORDER), str(name))


def eligible_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The uniform-ratio filter runs in panels holding at least two criteria: the runs the figure plots."""
    if runs.empty or "kind" not in runs:
        raise NoData(HINT)
    runs = keyed(runs[(runs["kind"] == "filter") & runs["ratio_value"].notna()], FACET)
    runs = runs[runs.groupby(FACET)["criterion"].transform("nunique") >= 2] if not runs.empty else runs
    if runs.empty:
        raise NoData(HINT)
    return runs


def criteria_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (panel, criterion, variant, ratio): pruned/acc, final/acc, baseline/acc and chance over seeds.

    Only uniform-ratio filter runs, and only panels holding at least two criteria.
    """
    runs = eligible_runs(runs)
    if "chance" not in runs:
        runs = runs.assign(chance=float("nan"))
    table = over_seeds(
        runs, [*FACET, "criterion", "variant", "ratio_value"], ["pruned/acc", "final/acc", "baseline/acc", "chance"]
    )
    table = table.assign(_rank=table["criterion"].map(criterion_rank))
    return table.sort_values([*FACET, "_rank", "variant", "ratio_value"]).drop(columns="_rank").reset_index(drop=True)


def y_limits(values: list[float], chance: float | None) -> tuple[float, float]:
    """Percent axis limits holding the data, the baseline and the chance line, with a little room."""
    finite = [v for v in values if pd.notna(v)] + ([chance] if chance is not None and pd.notna(chance) else [])
    if not finite:
        return 0.0, 100.0
    low, high = min(finite), max(finite)
    pad = max(2.0, 0.08 * (high - low))
    return max(0.0, low - pad), min(100.0, high + pad)


def criteria_figure(store: StoreLike, out: str | Path | None = None) -> Figure:
    """Two panels per setting (without / with retraining): test accuracy vs fraction of filters pruned, per criterion."""
    runs = load_runs(store)
    table = criteria_table(runs)
    panels = split(table, FACET)
    shown = sorted(set(varying(table, FACET[3:])) | {"schedule", "retrain"}, key=FACET.index)
    fig, axes = grid(2 * len(panels), ncols=2)
    criteria = sorted(table["criterion"].unique(), key=criterion_rank)
    for i, (ctx, sub) in enumerate(panels):
        for ax, metric, what in (
            (axes[2 * i], "pruned/acc", "right after pruning (no retraining)"),
            (axes[2 * i + 1], "final/acc", "after retraining"),
        ):
            show_variant = sub["variant"].astype(str).nunique() > 1
            plotted = []
            for (crit, variant), g in sub.groupby(["criterion", "variant"], sort=False):
                g = g.sort_values("ratio_value")
                name = f"{crit} ({variant})" if show_variant and variant not in ("", "—") else str(crit)
                k = criteria.index(crit)
                errorbar(
                    ax,
                    g["ratio_value"] * 100,
                    g[f"{metric}_mean"] * 100,
                    g[f"{metric}_std"] * 100,
                    g[f"{metric}_n"],
                    marker=MARKERS[k % len(MARKERS)],
                    color=f"C{k % 10}",
                    label=f"{name}",
                )
                plotted += list((g[f"{metric}_mean"] - g[f"{metric}_std"].fillna(0)) * 100)
                plotted += list((g[f"{metric}_mean"] + g[f"{metric}_std"].fillna(0)) * 100)
            base = sub["baseline/acc_mean"].mean()
            if pd.notna(base):
                ax.axhline(base * 100, color="k", ls="--", lw=1, label=f"baseline (unpruned) {base * 100:.2f}")
                plotted.append(base * 100)
            chance = sub["chance_mean"].mean()
            if pd.notna(chance):
                ax.axhline(chance * 100, color="0.5", ls=":", lw=1, label=f"chance (1 / classes) {chance * 100:g}")
            seeds = (
                f"{int(sub['seeds'].min())}-{int(sub['seeds'].max())}"
                if sub["seeds"].nunique() > 1
                else str(int(sub["seeds"].max()))
            )
            ax.set_title(f"{facet_title(ctx, shown)}: {what}, {seeds} seeds", fontsize=9)
            ax.set_xlim(0, 100)
            ax.set_xticks(range(10, 100, 10))
            ax.set_ylim(*y_limits(plotted, chance * 100 if pd.notna(chance) else None))
            ax.set_xlabel("filters pruned away per layer (%)")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, title="criterion", title_fontsize=7)
    fig.suptitle(
        "Pruning criteria: test accuracy vs fraction of filters pruned (Li et al. 2017, Fig. 2c); mean ± std over seeds"
    )
    footer(fig, eligible_runs(runs))
    save(fig, table, out, "criteria")
    return fig


def build(store: Store, out: Path) -> list[Path]:
    criteria_figure(store, out)
    return [out / f"criteria.{ext}" for ext in ("png", "svg", "csv")]


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, build))
