"""Li et al. 2017, Fig. 2c per layer: accuracy without retraining vs ratio, one panel per group, a line per criterion.

The data are sensitivity scans (each group pruned alone on the baseline, no retraining,
measured on the validation split) stored per criterion: the runs' ``sensitivity_criteria``
tables (``strategy.scan.criteria``), else scan entries carrying a ``criterion`` (the run's
own criterion otherwise), so any table with columns ``group``,
``ratio``, ``metric``, ``criterion`` (and ``seed``) can be drawn. Panels are in depth order
(the group's place in the network); each shows the chance line (1 / classes) and the
unpruned baseline.

    python -m analysis.layer_criteria --store results --out reports
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis.criteria import MARKERS, criterion_rank
from analysis.load import Store, StoreLike, load_runs, load_sensitivity, load_sensitivity_criteria
from analysis.output import NoData, cli, context_title, footer, grid, keyed, over_seeds, percent_scale, save
from analysis.sensitivity import CONTEXT, with_depth

HINT = (
    "no sensitivity scans of two or more criteria (scan entries with a `criterion`, or scans of runs with different "
    "criteria on the same baselines): run the criteria study's per-criterion scans (`python run.py -m study=criteria`)"
)


def layer_criteria_table(scans: pd.DataFrame) -> pd.DataFrame:
    """Per (context, criterion, group, ratio): metric mean/std/n over seeds, base metric and ``depth``.

    ``scans``: columns ``group``, ``ratio``, ``metric``, ``criterion`` (optional ``seed``,
    ``base_metric``, ``depth``, the context columns and ``baseline_config``).
    """
    missing = [c for c in ("group", "ratio", "metric", "criterion") if c not in scans]
    if scans.empty or missing:
        raise NoData(HINT)
    scans = keyed(scans.assign(**{c: 0 for c in ("seed",) if c not in scans}), CONTEXT)
    keys = [c for c in ("baseline_config", "seed", "criterion", "group", "ratio") if c in scans]
    scans = with_depth(scans.drop_duplicates(subset=keys))
    table = over_seeds(scans, [*CONTEXT, "criterion", "group", "ratio"], ["metric", "base_metric"])
    depth = scans.groupby("group")["depth"].mean()
    table["depth"] = table["group"].map(depth)
    table = table[table.groupby(CONTEXT)["criterion"].transform("nunique") >= 2]
    if table.empty:
        raise NoData(HINT)
    table = table.assign(_rank=table["criterion"].map(criterion_rank))
    return table.sort_values([*CONTEXT, "depth", "_rank", "ratio"]).drop(columns="_rank").reset_index(drop=True)


def _chance(store: StoreLike) -> dict[tuple, float]:
    runs = load_runs(store)
    if runs.empty or "chance" not in runs:
        return {}
    runs = keyed(runs, CONTEXT)
    return {k: float(v) for k, v in runs.groupby(CONTEXT)["chance"].first().dropna().items()}


def layer_criteria_figure(
    store: StoreLike | None, out: str | Path | None = None, scans: pd.DataFrame | None = None
) -> Figure:
    """One panel per group (depth order): validation accuracy without retraining vs fraction pruned, per criterion.

    ``scans`` (a table as :func:`layer_criteria_table` takes) replaces the store's scans; the
    store then only gives the chance level (``store=None``: none drawn).
    """
    if scans is None:
        scans = load_sensitivity_criteria(store)
        scans = scans if "criterion" in scans and not scans.empty else load_sensitivity(store)
    table = layer_criteria_table(scans)
    chance = _chance(store) if store is not None else {}
    contexts = table[CONTEXT].drop_duplicates().to_dict("records")
    panels = [(ctx, g) for ctx in contexts for g in dict.fromkeys(_rows(table, ctx)["group"])]
    fig, axes = grid(len(panels), ncols=min(3, len(panels)), size=(4.2, 3.4))
    scale = percent_scale(table["metric_mean"])
    criteria = sorted(table["criterion"].unique(), key=criterion_rank)
    for ax, (ctx, group) in zip(axes, panels):
        sub = _rows(table, ctx)
        panel = sub[sub["group"] == group]
        for crit, g in panel.groupby("criterion", sort=False):
            k = criteria.index(crit)
            g = g.sort_values("ratio")
            ax.errorbar(
                g["ratio"] * 100,
                g["metric_mean"] * scale,
                yerr=g["metric_std"] * scale if (g["metric_n"] > 1).any() else None,
                marker=MARKERS[k % len(MARKERS)],
                ms=3,
                capsize=2,
                color=f"C{k % 10}",
                label=str(crit),
            )
        base = panel["base_metric_mean"].mean()
        if pd.notna(base):
            ax.axhline(base * scale, color="k", ls="--", lw=1, label="baseline (unpruned)")
        level = chance.get(tuple(ctx[c] for c in CONTEXT))
        if level is not None and scale == 100:
            ax.axhline(level * 100, color="0.5", ls=":", lw=1, label=f"chance {level * 100:g}%")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100 if scale == 100 else None)
        ax.set_title(f"{group} ({int(panel['seeds'].max())} seeds)", fontsize=9)
        ax.set_xlabel("filters pruned away in this group (%)", fontsize=8)
        ax.set_ylabel("validation accuracy (%)" if scale == 100 else "validation metric", fontsize=8)
        ax.grid(alpha=0.3)
    if axes:
        axes[0].legend(fontsize=7, title="criterion", title_fontsize=7)
    names = "; ".join(context_title(c) for c in contexts)
    fig.suptitle(
        f"Criteria per layer without retraining (Li et al. 2017, Fig. 2c): {names}; mean ± std over seeds, "
        "validation split"
    )
    scan_keys = [c for c in ("baseline_config", "seed") if c in scans]
    footer(fig, scans.drop_duplicates(subset=scan_keys) if scan_keys else scans.iloc[:1])  # one row per scan
    save(fig, table, out, "layer_criteria")
    return fig


def _rows(table: pd.DataFrame, ctx: dict) -> pd.DataFrame:
    return table.loc[(table[CONTEXT] == pd.Series(ctx)).all(axis=1)]


def build(store: Store, out: Path) -> list[Path]:
    layer_criteria_figure(store, out)
    return [out / f"layer_criteria.{ext}" for ext in ("png", "svg", "csv")]


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, build))
