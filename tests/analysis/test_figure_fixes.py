"""The figure defects of a study-shaped store, each pinned: arms not pooled, actual kept fractions, legends
in order and in their own space, footers inside the saved image, axes that hold the points."""

from __future__ import annotations

import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from PIL import Image

from analysis.criteria import criteria_table
from analysis.forest import forest_figure
from analysis.latency import latency_pareto_figure
from analysis.load import load_runs, load_sensitivity, read_store
from analysis.sensitivity import allocations, filter_norms_figure, sensitivity_figure, sensitivity_table
from analysis.speed import architecture_means, speed_table
from analysis.tradeoff import arm_label, dodge, tradeoff_figure
from tests.analysis.study_rows import study_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return read_store(study_store(tmp_path_factory.mktemp("study")))


def test_criteria_points_hold_one_arm_each(store):
    table = criteria_table(load_runs(store))
    # l1_skip_sensitive, l1_global_macs and the no-retraining criteria_scan are l1 too: never pooled with l1_oneshot
    assert (table["final/acc_n"] == table["seeds"]).all() and (table["seeds"] == 12).all()
    assert sorted(zip(table["criterion"], table["ratio_value"])) == [
        ("l1", 0.3),
        ("l1", 0.5),
        ("l1", 0.7),
        ("random", 0.5),
    ]


def test_sensitivity_plots_the_fraction_actually_removed(store):
    table = sensitivity_table(load_sensitivity(store))
    first = table[table["group"] == "features.0"]
    # 16 channels: nominal 0.2 and 0.25 both keep 12 channels, one point at 25%; 0.1 keeps 14 (12.5%)
    assert list(first["removed"])[:3] == [0.125, 0.25, 0.3125]
    assert first["metric_n"].max() == 12 and len(first) == len(set(first["removed"]))
    classifier = table[table["group"] == "classifier.0"]
    assert 0.75 in set(classifier["removed"]) and 0.203125 in set(classifier["removed"])


def test_sensitivity_marks_the_global_and_sensitivity_allocations(store, tmp_path):
    chosen = allocations(store)
    assert set(chosen["arm"]) == {"l1_global_macs", "l1_sensitivity_macs"}
    global_f0 = chosen[(chosen["arm"] == "l1_global_macs") & (chosen["group"] == "features.0")].iloc[0]
    assert (global_f0["removed"], global_f0["seeds"]) == (9 / 16, 12)
    fig = sensitivity_figure(store, tmp_path)
    (ax,) = fig.axes
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts[:2] == ["l1_global_macs: its fraction removed", "l1_sensitivity_macs: its fraction removed"]
    stars = [ln for ln in ax.get_lines() if ln.get_marker() == "*" and len(ln.get_xdata())]
    assert sorted(round(float(ln.get_xdata()[0]), 4) for ln in stars)[:2] == [40.625, 47.2656]


def test_filter_norms_legend_in_numeric_order(store):
    (ax,) = filter_norms_figure(store).axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "features.0",
        "features.3",
        "features.7",
        "features.10",
        "features.14",
    ]


def test_tradeoff_names_arms_draws_no_retraining_hollow_and_spreads_one_point(store):
    fig = tradeoff_figure(store)
    texts = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]  # the legend row
    assert "l1_oneshot (+ -r03, -r07)" in texts and "criteria_scan" in texts
    assert not any("(" in t and "," in t and "+" not in t for t in texts[:-3])  # no tuple of part values
    weights = fig.axes[0]
    bars = [c for c in weights.containers if isinstance(c, ErrorbarContainer)]
    scan = [c for c in bars if pytest.approx(32, abs=6) == c.lines[0].get_ydata()[0]]
    assert len(scan) == 1 and scan[0].lines[0].get_linestyle() == "--"  # no retraining: never "after retraining"
    at_half = sorted(
        float(c.lines[0].get_xdata()[0])
        for c in bars
        if c.lines[0].get_linestyle() == "-" and 73 < c.lines[0].get_xdata()[0] < 77
    )
    assert len(at_half) >= 5 and min(b - a for a, b in zip(at_half, at_half[1:])) > 0.1  # spread, not stacked


def test_dodge_and_arm_labels():
    x = pd.Series([74.5, 74.5, 74.5, 50.0])
    lines = pd.Series(["a", "b", "c", "a"])
    assert list(dodge(x, lines, 0.2).round(6)) == [74.3, 74.5, 74.7, 50.0]
    assert arm_label(["l1_oneshot-r07", "l1_oneshot", "l1_oneshot-r03"]) == "l1_oneshot (+ -r03, -r07)"
    assert arm_label(["a", "b"]) == "a (+ b)"


def test_speed_intervals_need_three_runs_and_colours_differ(store):
    table, batches = speed_table(load_runs(store))
    means = architecture_means(table, batches[-1])
    few = means[(means["runs"] >= 2) & (means["runs"] < 3)]
    assert few["low"].isna().all() and means.loc[means["runs"] >= 3, "low"].notna().all()
    from analysis.speed import speed_figure

    fig = speed_figure(store)
    ax = fig.axes[1]
    handles = ax.get_legend().legend_handles
    colours = [tuple(h.get_color()) if not isinstance(h.get_color(), str) else h.get_color() for h in handles[:10]]
    assert len(set(colours)) == 10
    assert ax.get_ylim()[1] < 1.2  # the axis holds the points, not a t(1) interval


def test_latency_front_is_not_squashed_by_a_no_retraining_arm(store):
    fig = latency_pareto_figure(store)
    for ax in fig.axes:
        low, high = ax.get_ylim()
        assert low > 80 and high < 95  # criteria_scan at ~32% is named below the axis instead
        assert any(t.get_text().startswith("below the axis: criteria_scan (ratio 0.5): 3") for t in ax.texts)


def test_saved_figures_keep_their_footer(store, tmp_path):
    fig = sensitivity_figure(store, tmp_path)
    footer = next(t for t in fig.texts if "machine" in t.get_text())
    assert "\n" in footer.get_text()  # wrapped to the figure's width, not cut at its right edge
    width, height = Image.open(tmp_path / "sensitivity.png").size
    assert height > fig.get_figheight() * 130  # the tight box takes in the footer below the axes
    assert width <= fig.get_figwidth() * 130 + 40


def test_forest_margin_is_each_lessons_own(tmp_path):
    rows = []
    for lesson, margin, mean in (("L1", 0.0025, 0.003), ("L3", 0.05, 0.1)):
        rows.append(
            {
                "lesson": lesson,
                "claim": "x",
                "A": "a",
                "B": "b",
                "operating point": "ratio 0.5",
                "endpoint": "final/acc",
                "n": 5,
                "mean": mean,
                "ci_low": mean / 2,
                "ci_high": mean * 1.5,
                "alpha_ci": 0.05,
                "eq_low": mean / 2,
                "eq_high": mean * 1.5,
                "alpha_eq": 0.05,
                "margin": margin,
                "outcome": "better",
                "family": 1,
                "runs": "r1 r2",
            }
        )
    fig = forest_figure(None, tmp_path, pd.DataFrame(rows))
    widths = [ax.patches[0].get_width() for ax in fig.axes]
    assert widths == pytest.approx([0.5, 10.0])  # ±0.25 pp on L1's panel, ±5 pp on L3's
