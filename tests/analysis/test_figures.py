import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from analysis.compression import compression_figure, compression_table, storage_long
from analysis.criteria import criteria_figure, criteria_table
from analysis.load import load_runs, load_sensitivity, read_store
from analysis.output import NoData
from analysis.sensitivity import (
    filter_norms_figure,
    sensitivity_figure,
    sensitivity_table,
)
from analysis.speed import speed_figure
from analysis.tradeoff import tradeoff_figure, tradeoff_table
from tests.analysis.helpers import full_store, run_row, write_store


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
    assert ax.get_xlabel() == "filters pruned away in the group (%)" and ax.get_ylabel() == "test accuracy (%)"
    assert list(bars[0].lines[0].get_xdata()) == [25.0, 50.0, 75.0]
    assert bars[0].lines[0].get_ydata()[1] == pytest.approx(81.0)
    assert "3 seeds" in ax.get_title() and "fashion_mnist / vgg_small" in ax.get_title()
    assert {p.name for p in tmp_path.iterdir()} == {"sensitivity.png", "sensitivity.svg", "sensitivity.csv"}
    footer = next(t.get_text() for t in fig.texts if "machine" in t.get_text())
    assert footer.startswith("6 runs, 2026-12-01 22:") and "machine: testbox" in footer


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
        assert legend(ax)[1:] == ["l1", "random", "largest_l1"] and legend(ax)[0].startswith("baseline")
        assert ax.get_xlabel() == "filters pruned away per layer (%)"
    assert list(errorbars(with_)[0].lines[0].get_ydata()) == pytest.approx([90.5, 88.5])


def test_criteria_needs_two_criteria(tmp_path):
    write_store(tmp_path, [run_row(s) for s in range(2)])
    with pytest.raises(NoData, match="random_oneshot"):
        criteria_figure(tmp_path)


def test_tradeoff_figure(store):
    table = tradeoff_table(load_runs(store))
    dc = table[table["strategy"] == "deep_compression"].iloc[0]
    assert dc["removed/weights_mean"] == pytest.approx(0.92)
    fig = tradeoff_figure(store)
    assert len(fig.axes) == 4  # lenet300 and vgg_small, weights and MACs
    vgg_weights = fig.axes[2]
    assert vgg_weights.get_xlabel() == "weights (nonzero parameters) removed (%)"
    assert fig.axes[3].get_xlabel() == "MACs removed (%)"
    assert len(errorbars(vgg_weights)) == 8  # 4 strategies x (retrained, not retrained)
    assert "l1_oneshot, retrained" in legend(vgg_weights) and "l1_oneshot, not retrained" in legend(vgg_weights)
    dashed = [c for c in errorbars(vgg_weights) if c.lines[0].get_linestyle() == "--"]
    assert len(dashed) == 4


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
    assert ax.get_ylabel() == "latency at batch 1, final / baseline" and "batch 64" in fig.axes[3].get_ylabel()
    texts = legend(ax)
    assert "ideal: latency ratio = MAC ratio" in texts and len(texts) == 4 + 2
    ideal = next(ln for ln in ax.get_lines() if ln.get_label().startswith("ideal"))
    assert list(ideal.get_xdata()) == list(ideal.get_ydata())
