"""Sensitivity to pruning (Li et al. 2017, Fig. 2b) and sorted filter norms (Fig. 2a).

Sensitivity: validation accuracy after pruning one group alone (no retraining; the scan
runs on the validation split) against the fraction of its filters actually removed
(channels removed / channels: nominal ratios that round to the same kept count, 20% and 25%
of 16 channels, are one point), one line per group in depth order (the group's place in the
network), mean ± std over seeds, the unpruned baseline marked. Over the curves, the fraction
of each group that the allocating arms removed (``tables.ratios``): the sensitivity arm's
allocation and the global ranking's, mean over seeds, each marker on its group's curve. A scan is of the baseline, so runs sharing a baseline and seed
count once, and the footer counts those scans. Scans stored per criterion show the run's
own criterion here (all of them: :mod:`analysis.layer_criteria`).

    python -m analysis.sensitivity --store results --out reports
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.load import Store, StoreLike, load_filter_norms, load_ratios, load_sensitivity
from analysis.output import (
    NoData,
    cli,
    context_title,
    footer,
    grid,
    keyed,
    over_seeds,
    percent_scale,
    save,
)

SCAN_HINT = (
    "no sensitivity scans in the store (rows' tables.sensitivity): run a strategy whose ratios come from "
    "a sensitivity scan (ratio=sensitivity; see `ls conf/strategy`) over seeds, e.g. "
    "`python run.py -m strategy=<that preset> seed=0,1,2`, then this again"
)
NORMS_HINT = (
    "no filter norms in the store (rows' tables.filter_norms): run any filter-pruning strategy with schema-2 rows"
)
CONTEXT = ["dataset", "model", "baseline_epochs"]


def with_depth(sens: pd.DataFrame) -> pd.DataFrame:
    """``depth``: the group's place in the network, from a ``depth``/``index`` column or the scan's row order."""
    sens = sens.reset_index(drop=True)
    for col in ("depth", "index", "group_index"):
        if col in sens and sens[col].notna().all():
            return sens.assign(depth=pd.to_numeric(sens[col], errors="coerce"))
    runs = sens["run_id"] if "run_id" in sens else pd.Series("", index=sens.index)
    position = sens.groupby(runs, sort=False)["group"].transform(
        lambda g: g.map({v: i for i, v in enumerate(dict.fromkeys(g))})
    )
    # a group's depth: its mean position over the scans holding it (a scan lists groups input to output)
    return sens.assign(depth=position.groupby(sens["group"]).transform("mean"))


def own_criterion(sens: pd.DataFrame) -> pd.DataFrame:
    """The scan entries of the run's own criterion when entries name one (scans stored per criterion)."""
    if "run_criterion" not in sens or "criterion" not in sens:
        return sens
    own = sens[sens["criterion"].astype(str) == sens["run_criterion"].astype(str)]
    return own if not own.empty else sens[sens["criterion"].astype(str) == "l1"]


def sensitivity_table(sens: pd.DataFrame) -> pd.DataFrame:
    """Per (context, group, ratio): metric mean/std/n over seeds, the base metric and ``depth``; one scan per baseline and seed."""
    if sens.empty or "group" not in sens:
        raise NoData(SCAN_HINT)
    sens = with_removed(own_criterion(sens))
    sens = with_depth(sens.drop_duplicates(subset=["baseline_config", "seed", "group", "removed"]))
    table = over_seeds(sens, [*CONTEXT, "group", "removed"], ["metric", "base_metric"])
    extra = [c for c in ("ratio", "kept", "channels", "depth") if c in sens]
    shapes = keyed(sens, CONTEXT).groupby([*CONTEXT, "group", "removed"])[extra].first().reset_index()
    table = table.merge(shapes, on=[*CONTEXT, "group", "removed"], how="left")
    return table.sort_values([*CONTEXT, "depth", "group", "removed"]).reset_index(drop=True)


def with_removed(sens: pd.DataFrame) -> pd.DataFrame:
    """``removed``: the fraction of the group's channels the scan step actually removed, 1 - kept / channels
    (the nominal ``ratio`` where the entry has no channel counts); nominal ratios that keep the same
    channels prune the same network and are one point."""
    removed = sens["ratio"].astype(float)
    if {"kept", "channels"} <= set(sens):
        actual = 1.0 - pd.to_numeric(sens["kept"], errors="coerce") / pd.to_numeric(sens["channels"], errors="coerce")
        removed = actual.where(actual.notna(), removed)
    return sens.assign(removed=removed.round(6))


ALLOCATION_MARKERS = "*^sDPXv<>"


def allocations(store: StoreLike) -> pd.DataFrame:
    """Per (context, arm, group): the mean fraction removed over seeds by arms that choose per-group ratios
    (a sensitivity allocation, ``ratio=sensitivity``, or a global ranking, ``scope=global``)."""
    ratios = load_ratios(store)
    if ratios.empty or "group" not in ratios:
        return pd.DataFrame(columns=[*CONTEXT, "arm", "group", "removed", "seeds"])
    chosen = ratios[(ratios["ratio"].astype(str) == "sensitivity") | (ratios["scope"].astype(str) == "global")]
    chosen = keyed(chosen.assign(arm=chosen["arm"].fillna(chosen["strategy"])), [*CONTEXT, "arm"])
    return (
        chosen.groupby([*CONTEXT, "arm", "group"], sort=True)
        .agg(removed=("group_ratio", "mean"), seeds=("seed", "nunique"))
        .reset_index()
    )


def scans(sens: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct scan (baseline and seed): what a sensitivity figure's footer counts."""
    return sens.drop_duplicates(subset=["baseline_config", "seed"]) if "baseline_config" in sens else sens


def sensitivity_figure(store: StoreLike, out: str | Path | None = None) -> Figure:
    """Accuracy vs fraction of a group's filters pruned, one line per group, one panel per dataset/model."""
    sens = load_sensitivity(store)
    table = sensitivity_table(sens)
    chosen = allocations(store)
    contexts = table[CONTEXT].drop_duplicates().to_dict("records")
    fig, axes = grid(len(contexts))
    scale = percent_scale(table["metric_mean"])
    for ax, ctx in zip(axes, contexts):
        sub = table.loc[(table[CONTEXT] == pd.Series(ctx)).all(axis=1)]
        groups = list(dict.fromkeys(sub["group"]))
        colors = mpl.colormaps["viridis" if len(groups) > 10 else "tab10"]
        color_of = {}
        for i, group in enumerate(groups):
            g = sub[sub["group"] == group].sort_values("removed")
            yerr = g["metric_std"] * scale if (g["metric_n"] > 1).any() else None
            color_of[group] = colors(i / max(1, len(groups) - 1)) if len(groups) > 10 else colors(i)
            ax.errorbar(
                g["removed"] * 100,
                g["metric_mean"] * scale,
                yerr=yerr,
                marker="o",
                ms=3,
                capsize=2,
                color=color_of[group],
                label=str(group),
            )
        _allocations(ax, sub, chosen.loc[(chosen[CONTEXT] == pd.Series(ctx)).all(axis=1)], color_of, scale)
        base = sub["base_metric_mean"].mean()
        if pd.notna(base):
            ax.axhline(base * scale, color="k", ls="--", lw=1, label=f"baseline (unpruned) {base * scale:.2f}")
        seeds = int(sub["seeds"].max())
        ax.set_title(
            f"{context_title(ctx)}\none group pruned alone, no retraining; {seeds} seed{'s' * (seeds != 1)}, "
            f"mean ± std",
            fontsize=9,
        )
        ax.set_xlabel("filters pruned away in the group (%): channels removed / channels")
        ax.set_ylabel("validation accuracy (%)" if scale == 100 else "validation metric")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2 if len(groups) > 6 else 1, title="group (input to output)", title_fontsize=7)
    fig.suptitle("Sensitivity to pruning (Li et al. 2017, Fig. 2b), validation split")
    footer(fig, scans(own_criterion(sens)))
    save(fig, table, out, "sensitivity")
    return fig


def _allocations(ax, curves: pd.DataFrame, chosen: pd.DataFrame, color_of: dict, scale: float) -> None:
    """Each allocating arm's per-group fraction removed, a marker on that group's curve (interpolated)."""
    for k, (arm, g) in enumerate(chosen.groupby("arm", sort=True)):
        marker = ALLOCATION_MARKERS[k % len(ALLOCATION_MARKERS)]
        size = 11 if marker == "*" else 8
        ax.plot([], [], ls="", marker=marker, ms=size, mfc="white", mec="k", label=f"{arm}: its fraction removed")
        for _, r in g.iterrows():
            curve = curves[curves["group"] == r["group"]].sort_values("removed")
            if curve.empty:
                continue
            xs = [0.0, *curve["removed"]]  # nothing removed: the unpruned metric
            ys = [curve["base_metric_mean"].mean(), *curve["metric_mean"]]
            y = np.interp(r["removed"], xs, ys) * scale
            ax.plot(
                [r["removed"] * 100], [y], ls="", marker=marker, ms=size, mfc=color_of.get(r["group"], "k"), mec="k"
            )


def filter_norms_table(norms: pd.DataFrame) -> pd.DataFrame:
    """Per (context, layer, rank): the normalised L1 norm averaged over seeds (one baseline per seed)."""
    if norms.empty or "layer" not in norms:
        raise NoData(NORMS_HINT)
    norms = norms.drop_duplicates(subset=["baseline_config", "seed", "layer", "rank"])
    table = over_seeds(norms, [*CONTEXT, "layer", "rank"], ["l1"])
    counts = table.groupby([*CONTEXT, "layer"])["rank"].transform("count")
    table["rank_fraction"] = table["rank"] / counts
    return table.sort_values([*CONTEXT, "layer", "rank"]).reset_index(drop=True)


def natural_key(name: object) -> tuple:
    """Sort key reading the numbers in a name as numbers: ``features.3`` before ``features.10``."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(name)) if t)


def filter_norms_figure(store: StoreLike, out: str | Path | None = None) -> Figure:
    """Sorted, per-layer-normalised filter L1 norms of the baseline, one line per layer (Li et al. Fig. 2a)."""
    norms = load_filter_norms(store)
    table = filter_norms_table(norms)
    contexts = table[CONTEXT].drop_duplicates().to_dict("records")
    fig, axes = grid(len(contexts))
    for ax, ctx in zip(axes, contexts):
        sub = table.loc[(table[CONTEXT] == pd.Series(ctx)).all(axis=1)]
        layers = sorted(dict.fromkeys(sub["layer"]), key=natural_key)
        colors = mpl.colormaps["viridis"]
        for i, layer in enumerate(layers):
            g = sub[sub["layer"] == layer]
            ax.plot(g["rank_fraction"] * 100, g["l1_mean"], color=colors(i / max(1, len(layers) - 1)), label=str(layer))
        seeds = int(sub["seeds"].max())
        ax.set_title(f"{context_title(ctx)}\nbaseline filters, mean over {seeds} seed{'s' * (seeds != 1)}", fontsize=9)
        ax.set_xlabel("filter rank / filters in the layer (%)")
        ax.set_ylabel("L1 norm / largest in the layer")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2 if len(layers) > 6 else 1, title="layer", title_fontsize=7)
    fig.suptitle("Filters sorted by L1 norm (Li et al. 2017, Fig. 2a)")
    footer(fig, scans(norms))  # the baselines plotted, one per (baseline config, seed)
    save(fig, table, out, "filter_norms")
    return fig


def build(store: Store, out: Path) -> list[Path]:
    """Both figures that the store supports (at least one, else :class:`NoData`)."""
    paths, reasons = [], []
    for name, make in (("sensitivity", sensitivity_figure), ("filter_norms", filter_norms_figure)):
        try:
            make(store, out)
            paths += [out / f"{name}.{ext}" for ext in ("png", "svg", "csv")]
        except NoData as err:
            reasons.append(str(err))
    if not paths:
        raise NoData("; ".join(reasons))
    return paths


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, build))
