"""Does more baseline training still move accuracy? Baselines of one dataset and model trained on
different schedules, paired by seed.

A baseline's own curve cannot answer it for an annealed schedule: cosine's last epochs gain
because the learning rate falls, however long the schedule (a 8-epoch cosine rises 0.4 pp over
its last 3 epochs and is as good as a 15-epoch one). What answers it is the same seeds trained
on a longer schedule. Per schedule (``baseline.epochs`` E, or ``auto`` with its cap) this lists
every seed's baseline: epochs trained, test accuracy, and what the plateau rule said of its
validation curve; per pair of schedules, the paired gain in test accuracy (longer minus shorter)
with its 95% interval. The figure shows the validation curves and the test accuracies.

    python -m analysis.baseline_schedules --store results --out reports
    python run.py -m baseline.epochs=8,15 seed=0,1,2 strategy.retrain.epochs=0   # the runs it reads
"""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.load import Store  # noqa: E402
from analysis.output import NoData, cli, footer, markdown, save  # noqa: E402
from analysis.stats import paired_t  # noqa: E402

RUN_COLUMNS = ("dataset", "model", "schedule", "seed", "epochs", "test_acc", "rise_pp", "rule", "run_id", "time")


def schedule_name(row: dict[str, Any]) -> str | None:
    """``"cosine 8 ep"`` or ``"auto (cosine, cap 15)"`` from a row's baseline config (its parts' epochs when the
    config does not say); None without a trained baseline."""
    base = (row.get("config") or {}).get("baseline") or {}
    if base.get("checkpoint") or not row.get("baseline_training"):
        return None
    epochs = base.get("epochs", (row.get("parts") or {}).get("baseline_epochs"))
    lr = base.get("lr_schedule")
    if epochs == "auto":
        return f"auto ({lr or '?'}, cap {base.get('max_epochs')})"
    return f"{lr} {epochs} ep" if lr else f"{epochs} ep"


def baseline_runs(store: Store) -> tuple[pd.DataFrame, dict[tuple, list[float]]]:
    """One row per (dataset, model, schedule, seed) — the baseline every arm of that seed shares, read
    from its latest run — and the validation curves keyed the same way."""
    found: dict[tuple, dict[str, Any]] = {}
    for row in store.with_status("ok"):
        name = schedule_name(row)
        acc = (row.get("metrics") or {}).get("baseline/acc")
        if name is None or acc is None:
            continue
        key = (row["dataset"], row["model"], name, row["seed"])
        if key not in found or row["_order"] > found[key]["_order"]:
            found[key] = row
    runs, curves = [], {}
    for key, row in sorted(found.items(), key=lambda kv: (kv[0][:2], _epochs_key(kv[0][2]), kv[0][3])):
        training = row["baseline_training"]
        verdict = training.get("verdict") or {}
        gain = verdict.get("gain_pp")
        curves[key] = [float(a) for a in training.get("val_acc") or []]
        runs.append(
            dict(
                zip(
                    RUN_COLUMNS,
                    (
                        *key,
                        training.get("epochs_trained", len(curves[key])),
                        float(row["metrics"]["baseline/acc"]),
                        float(gain) if gain is not None else math.nan,
                        "plateau" if verdict.get("reached") else "rising",
                        row["run_id"],
                        row.get("time"),
                    ),
                )
            )
        )
    if not runs:
        raise NoData("no trained baselines in the store: run e.g. `python run.py -m baseline.epochs=8,15 seed=0,1,2`")
    return pd.DataFrame(runs, columns=list(RUN_COLUMNS)), curves


def _epochs_key(schedule: str) -> tuple[int, float]:
    """Fixed schedules first, by epochs; then ``auto`` ones by cap."""
    words = schedule.replace(",", " ").replace(")", " ").split()
    numbers = [float(w) for w in words if w.replace(".", "", 1).isdigit()]
    return (schedule.startswith("auto"), numbers[-1] if numbers else math.inf)


def schedule_gains(runs: pd.DataFrame) -> pd.DataFrame:
    """Every pair of schedules of one dataset and model with at least two common seeds: the mean paired
    gain of test accuracy (B minus A, in points) with its 95% Student-t interval."""
    out = []
    for (dataset, model), frame in runs.groupby(["dataset", "model"], sort=False):
        names = sorted(frame["schedule"].unique(), key=_epochs_key)
        for a, b in combinations(names, 2):
            acc_a = frame[frame["schedule"] == a].set_index("seed")["test_acc"]
            acc_b = frame[frame["schedule"] == b].set_index("seed")["test_acc"]
            seeds = sorted(set(acc_a.index) & set(acc_b.index))
            if len(seeds) < 2:
                continue
            t = paired_t([(acc_b[s] - acc_a[s]) * 100 for s in seeds])
            out.append(
                dict(
                    dataset=dataset,
                    model=model,
                    A=a,
                    B=b,
                    n=t.n,
                    seeds=",".join(map(str, seeds)),
                    gain_pp=t.mean,
                    std_pp=t.std,
                    ci_low=t.low,
                    ci_high=t.high,
                )  # fmt: skip
            )
    return pd.DataFrame(
        out, columns=["dataset", "model", "A", "B", "n", "seeds", "gain_pp", "std_pp", "ci_low", "ci_high"]
    )


def baseline_gains(store: Store) -> pd.DataFrame:
    """:func:`schedule_gains` of the store's baselines; empty when it has no trained baseline."""
    try:
        return schedule_gains(baseline_runs(store)[0])
    except NoData:
        return schedule_gains(pd.DataFrame(columns=list(RUN_COLUMNS)))


def schedules_figure(runs: pd.DataFrame, curves: dict[tuple, list[float]]):
    """Left: every seed's validation curve, coloured by schedule; right: test accuracy per schedule (one dot a seed)."""
    contexts = list(runs.groupby(["dataset", "model"], sort=False))
    fig, axes = plt.subplots(len(contexts), 2, figsize=(11, 4.2 * len(contexts)), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2, 1]}, layout="constrained")  # fmt: skip
    colours = plt.get_cmap("tab10")
    for row_axes, ((dataset, model), frame) in zip(axes, contexts):
        names = sorted(frame["schedule"].unique(), key=_epochs_key)
        curve_ax, test_ax = row_axes
        for i, name in enumerate(names):
            for j, r in enumerate(frame[frame["schedule"] == name].itertuples()):
                curve = curves[(dataset, model, name, r.seed)]
                curve_ax.plot(range(1, len(curve) + 1), [a * 100 for a in curve], color=colours(i), lw=1.2,
                              marker="o", ms=2.5, alpha=0.85, label=name if j == 0 else None)  # fmt: skip
            accs = frame[frame["schedule"] == name]["test_acc"] * 100
            spread = [i + 0.08 * (k - (len(accs) - 1) / 2) for k in range(len(accs))]  # seeds side by side
            test_ax.scatter(spread, accs, color=colours(i), s=22, zorder=3)
            test_ax.hlines(accs.mean(), i - 0.25, i + 0.25, color=colours(i), lw=2)
        curve_ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title=f"{dataset} / {model}: validation curves")
        curve_ax.legend(fontsize=8, loc="lower right")
        curve_ax.grid(alpha=0.3)
        test_ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        test_ax.set(ylabel="test accuracy (%)", title="test accuracy (bar: mean)")
        test_ax.grid(alpha=0.3, axis="y")
    footer(fig, runs)
    return fig


def write_schedules(store: Store, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``baseline_schedules`` (.png/.svg/.csv: one row a baseline) and ``baseline_gains.csv`` into ``out``;
    return (the baselines, the gains)."""
    runs, curves = baseline_runs(store)
    gains = schedule_gains(runs)
    fig = schedules_figure(runs, curves)
    save(fig, runs, out, "baseline_schedules")
    plt.close(fig)
    gains.to_csv(Path(out) / "baseline_gains.csv", index=False)
    return runs, gains


def shown_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The baselines as the report shows them (accuracy in percent)."""
    return runs.assign(test_acc=(runs["test_acc"] * 100).round(2), rise_pp=runs["rise_pp"].round(2)).drop(
        columns=["run_id", "time"]
    )


def build(store: Store, out: Path) -> list[Path]:
    runs, gains = write_schedules(store, out)
    print(markdown(shown_runs(runs)))
    if not gains.empty:
        print("\n" + markdown(gains.round(3)))
    names = ("baseline_schedules.png", "baseline_schedules.svg", "baseline_schedules.csv", "baseline_gains.csv")
    return [Path(out) / n for n in names]


def main(argv: list[str] | None = None) -> int:
    return cli(__doc__.split("\n\n")[0], build, argv)


if __name__ == "__main__":
    raise SystemExit(main())
