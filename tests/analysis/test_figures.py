import math

import pandas as pd
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from analysis.compression import compression_figure, compression_table, storage_long
from analysis.criteria import criteria_figure, criteria_table
from analysis.forest import forest_figure, forest_rows
from analysis.layer_criteria import layer_criteria_figure, layer_criteria_table
from analysis.load import load_runs, load_sensitivity, load_sensitivity_criteria, read_store
from analysis.output import NoData
from analysis.sensitivity import (
    filter_norms_figure,
    sensitivity_figure,
    sensitivity_table,
)
from analysis.speed import architecture_means, speed_figure, speed_table
from analysis.stats import t_quantile
from analysis.tradeoff import tradeoff_figure, tradeoff_table
from analysis.verdicts import compare
from tests.analysis.helpers import full_store, run_row, sensitivity_tables, write_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return read_store(full_store(tmp_path_factory.mktemp("store")))


def legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def errorbars(ax):
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def test_sensitivity_numbers_and_figure(store, tmp_path):
    table = sensitivity_table(load_sensitivity(store))
    row = table[(table["group"] == "features.0") & (table["ratio"] == 0.5)].iloc[0]
    # 6 l1 runs share 3 baselines (seeds 0-2): one scan each; metric 0.92 - 0.5 * 0.2 - 0.01 * seed
    assert (row["seeds"], row["metric_n"]) == (3, 3)
    assert row["metric_mean"] == pytest.approx(0.81) and row["metric_std"] == pytest.approx(0.01)
    fig = sensitivity_figure(store, tmp_path)
    (ax,) = fig.axes
    bars = errorbars(ax)
    assert len(bars) == 2 and all(c.has_yerr for c in bars)
    assert legend(ax) == ["baseline (unpruned) 92.00", "features.0", "features.3"]
    assert ax.get_xlabel() == "filters pruned away in the group (%): channels removed / channels"
    assert ax.get_ylabel() == "validation accuracy (%)"
    assert list(bars[0].lines[0].get_xdata()) == [25.0, 50.0, 75.0]
    assert bars[0].lines[0].get_ydata()[1] == pytest.approx(81.0)
    assert "3 seeds" in ax.get_title() and "fashion_mnist / vgg_small" in ax.get_title()
    assert {p.name for p in tmp_path.iterdir()} == {"sensitivity.png", "sensitivity.svg", "sensitivity.csv"}
    footer = next(t.get_text() for t in fig.texts if "machine" in t.get_text())
    # 6 l1 runs hold 3 distinct scans (one per baseline and seed): the footer counts what is plotted
    assert footer.startswith("3 runs, 2026-12-01 22:") and "machine: testbox" in footer


def test_filter_norms_figure(store):
    fig = filter_norms_figure(store)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 2 and legend(ax) == ["features.0", "features.3"]
    assert ax.get_ylabel() == "L1 norm / largest in the layer"
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([1.0 - r / 8 for r in range(8)])


def test_criteria_numbers_and_figure(store):
    table = criteria_table(load_runs(store))
    assert list(dict.fromkeys(table["criterion"])) == ["l1", "random", "largest_l1"]
    l1 = table[(table["criterion"] == "l1") & (table["ratio_value"] == 0.5)].iloc[0]
    assert l1["final/acc_mean"] == pytest.approx(0.885) and l1["final/acc_std"] == pytest.approx(0.005)
    assert l1["pruned/acc_mean"] == pytest.approx(0.685) and l1["seeds"] == 3
    fig = criteria_figure(store)
    assert len(fig.axes) == 2
    without, with_ = fig.axes
    assert "no retraining" in without.get_title() and "after retraining" in with_.get_title()
    for ax in fig.axes:
        assert len(errorbars(ax)) == 3 and all(c.has_yerr for c in errorbars(ax))
        assert legend(ax)[2:] == ["l1", "random", "largest_l1"] and legend(ax)[0].startswith("baseline")
        assert legend(ax)[1] == "chance (1 / classes) 10"
        chance = next(ln for ln in ax.get_lines() if ln.get_label().startswith("chance"))
        assert list(chance.get_ydata()) == pytest.approx([10.0, 10.0])
        assert ax.get_xlabel() == "filters pruned away per layer (%)" and ax.get_ylabel() == "test accuracy (%)"
        assert ax.get_xlim() == (0.0, 100.0) and list(ax.get_xticks()) == list(range(10, 100, 10))
        low, high = ax.get_ylim()
        assert low <= 10 - 2 and 92 + 2 <= high <= 100  # chance and baseline inside, not a 5-point window
    assert list(errorbars(with_)[0].lines[0].get_ydata()) == pytest.approx([90.5, 88.5])
    # the footer counts the 18 criteria runs plotted, not the 24 of the store
    assert next(t.get_text() for t in fig.texts if "machine" in t.get_text()).startswith("18 runs")


def test_criteria_needs_two_criteria(tmp_path):
    write_store(tmp_path, [run_row(s) for s in range(2)])
    with pytest.raises(NoData, match="random_oneshot"):
        criteria_figure(tmp_path)


def test_tradeoff_figure(store):
    table = tradeoff_table(load_runs(store))
    dc = table[table["strategy"] == "deep_compression"].iloc[0]
    assert dc["removed/weights_mean"] == pytest.approx(0.92)
    fig = tradeoff_figure(store)
    assert len(fig.axes) == 5  # lenet300 and vgg_small, weights and MACs, and the legend's own row
    vgg_weights = fig.axes[2]
    assert vgg_weights.get_xlabel() == "weights (nonzero parameters) removed (%)"
    assert fig.axes[3].get_xlabel() == "MACs removed (%)"
    assert len(errorbars(vgg_weights)) == 8  # 4 strategies x (retrained, not retrained)
    dashed = [c for c in errorbars(vgg_weights) if c.lines[0].get_linestyle() == "--"]
    assert len(dashed) == 4
    # one legend for the figure, in its own row under the panels: a colour per line and one entry per line style
    shared = fig.axes[4].get_legend()
    texts = [t.get_text() for t in shared.get_texts()]
    assert texts == [
        "deep_compression",
        "l1_iterative",
        "l1_oneshot",
        "largest_l1_oneshot",
        "random_oneshot",
        "after retraining (solid)",
        "right after pruning, or no retraining",
        "baseline (unpruned)",
    ]
    assert all(ax.get_legend() is None for ax in fig.axes[:4])
    assert next(t.get_text() for t in fig.texts if "machine" in t.get_text()).startswith("24 runs")


def test_compression_numbers_and_figure(store):
    table = compression_table(storage_long(store)[0])
    total = table[table["layer"] == "all layers"].iloc[0]
    assert total["dense_bytes_mean"] == 120_000 and total["huffman_bytes_mean"] == 2_500
    assert total["rate + Huffman"] == pytest.approx(48.0) and total["rate pruned"] == pytest.approx(120 / 14.001)
    fig = compression_figure(store)
    (ax,) = fig.axes
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 4 and all(len(b) == 3 for b in bars)
    assert legend(ax) == ["dense", "pruned", "+ quantization", "+ Huffman"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fc1.weight", "fc2.weight", "all layers"]
    assert ax.get_yscale() == "log" and "48.0x" in ax.get_title()


def test_speed_figure(store):
    fig = speed_figure(store)
    assert len(fig.axes) == 4
    ax = fig.axes[2]
    assert ax.get_ylabel() == "latency at batch 1, final / baseline (ratio)" and "batch 64" in fig.axes[3].get_ylabel()
    texts = legend(ax)
    # runs pooled per architecture (MAC ratio): 0.5 (l1/random/largest at 0.5 and iterative) and 0.7
    assert "ideal: latency ratio = MAC ratio" in texts
    assert texts[:5] == [
        "l1_oneshot: 6 runs, 2 architectures",
        "random_oneshot: 6 runs, 2 architectures",
        "largest_l1_oneshot: 6 runs, 2 architectures",
        "l1_iterative: 3 runs, 1 architecture",
        "reached by several arms (2 architectures)",
    ]
    ideal = next(ln for ln in ax.get_lines() if ln.get_label().startswith("ideal"))
    assert list(ideal.get_xdata()) == list(ideal.get_ydata())


def test_sensitivity_legend_is_in_depth_order(tmp_path):
    groups = ("features.3", "features.10", "classifier.0")  # string order would be classifier, 10, 3
    write_store(tmp_path, [run_row(s, tables=sensitivity_tables(s, groups)) for s in range(2)])
    table = sensitivity_table(load_sensitivity(tmp_path))
    assert list(dict.fromkeys(table["group"])) == list(groups) and list(dict.fromkeys(table["depth"])) == [0, 1, 2]
    (ax,) = sensitivity_figure(tmp_path).axes
    assert legend(ax)[1:] == list(groups) and ax.get_legend().get_title().get_text() == "group (input to output)"


def test_layer_criteria_small_multiples(store, tmp_path):
    table = layer_criteria_table(load_sensitivity(store))
    row = table[(table["criterion"] == "largest_l1") & (table["group"] == "features.0") & (table["ratio"] == 0.5)]
    # 0.92 - 0.5 * (0.2 + 0.3) - 0.01 * seed over seeds 0-2
    assert row["metric_mean"].iloc[0] == pytest.approx(0.66) and row["metric_n"].iloc[0] == 3
    fig = layer_criteria_figure(store, tmp_path)
    assert [ax.get_title() for ax in fig.axes] == ["features.0 (3 seeds)", "features.3 (3 seeds)"]
    for ax in fig.axes:
        assert len(errorbars(ax)) == 3 and ax.get_ylabel() == "validation accuracy (%)"
        assert ax.get_xlim() == (0.0, 100.0) and ax.get_ylim() == (0.0, 100.0)
        chance = next(ln for ln in ax.get_lines() if ln.get_label().startswith("chance"))
        assert list(chance.get_ydata()) == pytest.approx([10.0, 10.0])
    assert legend(fig.axes[0])[2:] == ["l1", "random", "largest_l1"]
    assert (tmp_path / "layer_criteria.csv").exists()
    # any table with group, ratio, metric, criterion will do
    plain = pd.DataFrame(
        [
            {"group": g, "ratio": r, "metric": 0.9 - r * k, "criterion": c}
            for g in ("conv2", "conv1")
            for k, c in ((0.1, "l1"), (0.5, "random"))
            for r in (0.1, 0.5, 0.9)
        ]
    )
    fig = layer_criteria_figure(None, scans=plain)
    assert [ax.get_title() for ax in fig.axes] == ["conv2 (1 seeds)", "conv1 (1 seeds)"]  # row order = depth
    with pytest.raises(NoData, match="two or more criteria"):
        layer_criteria_table(plain[plain["criterion"] == "l1"])


def test_speed_error_bars_pool_runs_of_one_architecture(tmp_path):
    rows = [run_row(s, macs=0.25, metrics={"ratio/latency_b1": v}) for s, v in enumerate((0.60, 0.64, 0.68))]
    rows.append(
        run_row(
            0,
            ratio="0.3",
            macs=0.5,
            metrics={"ratio/latency_b1": 0.7, "latency/b1/ci_low": 0.66, "latency/b1/ci_high": 0.75},
        )
    )
    write_store(tmp_path, rows)
    table, _ = speed_table(load_runs(tmp_path))
    means = architecture_means(table, 1).set_index("architecture")
    half = t_quantile(0.975, 2) * 0.04 / math.sqrt(3)  # sd of 0.60, 0.64, 0.68 is 0.04
    assert means.loc[0.25, "latency_ratio"] == pytest.approx(0.64)
    assert (means.loc[0.25, "low"], means.loc[0.25, "high"]) == pytest.approx((0.64 - half, 0.64 + half))
    assert (means.loc[0.5, "low"], means.loc[0.5, "high"]) == (0.66, 0.75)  # one run: its own measured interval
    ax = speed_figure(tmp_path).axes[0]
    bars = errorbars(ax)
    assert len(bars) == 2 and all(c.has_yerr for c in bars)


def test_forest_plot_of_the_verdicts(tmp_path):
    rows = [run_row(s, final_acc=a, strategy="l1_oneshot") for s, a in enumerate([0.880, 0.890, 0.900])]
    rows += [
        run_row(s, final_acc=a, strategy="l1_iterative", schedule="iterative", rounds=3)
        for s, a in enumerate([0.900, 0.911, 0.922])
    ]
    rows += [
        run_row(s, final_acc=0.9, pruned_acc=p, criterion=c, strategy=f"{c}_oneshot", ratio="0.3")
        for s in range(4)
        for c, p in (("l1", 0.70 + 0.001 * s), ("random", 0.70 - 0.0005 * (-1) ** s))
    ]
    write_store(tmp_path, rows)
    table = compare(tmp_path)
    fig = forest_figure(tmp_path, tmp_path)
    assert len(fig.axes) == 3  # a panel per lesson: L1, L3 (no retraining), L3-ft (after fine-tuning)
    labels = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
    assert len(labels) == len(forest_rows(table)) == 3
    assert labels[0].startswith("L1 l1_iterative vs l1_oneshot") and labels[1].startswith("L3 l1_oneshot vs random")
    assert labels[2].startswith("L3-ft l1_oneshot vs random")
    shown = forest_rows(table)
    assert [t.get_text() for ax in fig.axes for t in ax.texts] == [
        "better",
        shown.iloc[1]["outcome"],
        "inconclusive (zero variance: sign test)",  # L3-ft: every final accuracy is 0.9, d = 0 on every seed
    ]
    assert "percentage points of test accuracy" in fig.axes[-1].get_xlabel()
    assert fig.axes[0].get_title(loc="left").startswith("L1: test accuracy after retraining, margin ±0.25 pp")
    for ax in fig.axes:
        (band,) = ax.patches  # the lesson's margin: a shaded band of ±0.25 pp
        assert band.get_x() == pytest.approx(-0.25) and band.get_width() == pytest.approx(0.5)
        low, high = ax.get_xlim()
        assert low < -0.25 and high > 0.25  # the margin and 0 always in view
    assert (tmp_path / "forest.csv").exists()


def test_layer_criteria_reads_the_sensitivity_criteria_table(tmp_path):
    def scan(seed):
        rows = sensitivity_tables(seed, ("conv1", "conv2"), criteria=("l1", "random"))["sensitivity"]
        return {"sensitivity_criteria": rows}

    write_store(tmp_path, [run_row(s, tables=scan(s)) for s in range(2)])
    table = layer_criteria_table(load_sensitivity_criteria(tmp_path))
    assert set(table["criterion"]) == {"l1", "random"} and list(dict.fromkeys(table["group"])) == ["conv1", "conv2"]
    fig = layer_criteria_figure(tmp_path)
    assert [ax.get_title() for ax in fig.axes] == ["conv1 (2 seeds)", "conv2 (2 seeds)"]
