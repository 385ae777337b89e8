"""Accuracy vs measured latency (Pareto) and predicted vs measured latency, from a synthetic store."""

import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer

from analysis.latency import (
    build,
    latency_pareto_figure,
    latency_points,
    latency_prediction_figure,
    pareto_mask,
    pareto_table,
    prediction_table,
)
from analysis.load import load_runs, read_store
from analysis.output import NoData
from analysis.report import build_report
from tests.analysis.helpers import run_row, write_store

# (strategy, ratio part, latency target, final acc, batch-1 ratio, batch-64 ratio, predicted batch-64 ratio)
ARMS = [
    ("l1_oneshot", "0.3", None, 0.91, 0.80, 0.70, None),
    ("l1_oneshot", "0.5", None, 0.89, 0.60, 0.50, None),
    ("l1_latency", "sensitivity", 0.5, 0.90, 0.55, 0.52, 0.48),  # faster and more accurate than uniform 0.5
    ("l1_latency", "sensitivity", 0.7, 0.915, 0.75, 0.68, 0.66),  # beats uniform 0.3 on both
    ("random_oneshot", "0.5", None, 0.85, 0.62, 0.51, None),  # dominated by l1_oneshot 0.5
]


def latency_metrics(acc, b1, b64, target, predicted, seed):
    shift = 0.01 * (seed - 1)  # seeds 0, 1, 2 around the arm's value
    m = {
        "final/acc": acc + shift / 10,
        "ratio/latency_b1": b1 + shift,
        "ratio/latency_b64": b64 + shift,
        "latency/b1/ci_low": b1 + shift - 0.02,
        "latency/b1/ci_high": b1 + shift + 0.03,
        "latency/b64/ci_low": b64 + shift - 0.01,
        "latency/b64/ci_high": b64 + shift + 0.01,
        "latency/b64/final_ms": 10 * (b64 + shift),
        "deploy/ort_latency_ms_b64": 5.0,
    }
    if target is not None:
        m["latency/target"] = target
        m["latency/b64/predicted_ratio"] = predicted
    return m


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rows = [
        run_row(
            s,
            final_acc=acc,
            strategy=strategy,
            ratio=ratio,
            ratio_policy="latency_target" if strategy == "l1_latency" else "uniform",
            metrics=latency_metrics(acc, b1, b64, target, predicted, s),
            config={"seed": s, "machine": "testbox", "strategy": {"name": strategy, "ratio": ratio, "target": target}},
        )
        for strategy, ratio, target, acc, b1, b64, predicted in ARMS
        for s in range(3)
    ]
    return read_store(write_store(tmp_path_factory.mktemp("latency"), rows))


def test_pareto_mask_keeps_only_undominated_points():
    latency = pd.Series([0.5, 0.6, 0.6, 0.8, 0.55])
    acc = pd.Series([0.89, 0.89, 0.91, 0.91, 0.85])
    # 0.6/0.89 is beaten by 0.5/0.89; 0.8/0.91 by 0.6/0.91; 0.55/0.85 by 0.5/0.89
    assert list(pareto_mask(latency, acc)) == [True, False, True, False, False]


def test_points_and_arm_means_over_seeds(store):
    points, batches = latency_points(load_runs(store))
    assert batches == [1, 64] and len(points) == 5 * 3 * 2
    table = pareto_table(points)
    assert len(table) == 5 * 2  # each latency target is its own arm
    b1 = table[table["batch"] == 1].set_index(["strategy", "ratio", "target"])
    uniform = ("l1_oneshot", "0.5", "—")
    assert b1.loc[uniform, "latency_ratio_mean"] == pytest.approx(0.60)
    assert b1.loc[uniform, "latency_ratio_std"] == pytest.approx(0.01)
    assert b1.loc[uniform, "acc_mean"] == pytest.approx(0.89)
    assert int(b1.loc[uniform, "seeds"]) == 3
    # at batch 1 both latency-aware arms form the front: (0.55, 0.90) and (0.75, 0.915)
    front = {k for k, v in b1["pareto"].items() if v}
    assert front == {("l1_latency", "sensitivity", 0.5), ("l1_latency", "sensitivity", 0.7)}
    b64 = table[table["batch"] == 64].set_index(["strategy", "ratio", "target"])  # uniform 0.5 is the fastest
    assert {k for k, v in b64["pareto"].items() if v} == {
        uniform,
        ("l1_latency", "sensitivity", 0.5),
        ("l1_latency", "sensitivity", 0.7),
    }


def test_pareto_figure_axes_name_split_and_unit(store, tmp_path):
    fig = latency_pareto_figure(store, tmp_path)
    assert len(fig.axes) == 2
    ax1, ax64 = fig.axes
    assert ax1.get_ylabel() == "top-1 accuracy on the test split (%)"
    assert ax1.get_xlabel() == "latency at batch 1, final / baseline (timed interleaved)"
    assert "batch 64" in ax64.get_xlabel()
    front = next(ln for ln in ax1.get_lines() if ln.get_label() == "Pareto front (arm means)")
    assert list(front.get_xdata()) == pytest.approx([0.55, 0.75])
    assert list(front.get_ydata()) == pytest.approx([90.0, 91.5])
    bars = [c for c in ax1.containers if isinstance(c, ErrorbarContainer)]
    # one per line (the latency targets are config variants), run intervals as x error bars
    assert len(bars) == 4 and all(c.has_xerr for c in bars)
    texts = [t.get_text() for t in ax1.get_legend().get_texts()]
    assert sum(t.startswith("l1_latency") and "target=0.5" in t and t.endswith("(3 seeds)") for t in texts) == 1
    # each arm mean is named by its operating point: lines of one method hold several arms
    assert {"ratio 0.5", "target 0.5", "target 0.7"} <= {t.get_text() for t in ax1.texts}
    saved = pd.read_csv(tmp_path / "latency_pareto.csv")
    assert saved["pareto"].sum() == 2 + 3 and {p.suffix for p in tmp_path.iterdir()} == {".png", ".svg", ".csv"}


def test_prediction_table_and_figure(store, tmp_path):
    table = prediction_table(load_runs(store))
    assert set(table["strategy"]) == {"l1_latency"} and list(table["batch"].unique()) == [64]
    # measured 0.51, 0.52, 0.53 for predicted 0.48; 0.67, 0.68, 0.69 for 0.66
    want = [0.48 / m - 1 for m in (0.51, 0.52, 0.53)] + [0.66 / m - 1 for m in (0.67, 0.68, 0.69)]
    assert sorted(table["error"]) == pytest.approx(sorted(want))
    fig = latency_prediction_figure(store, tmp_path)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "predicted latency at batch 64, final / baseline (latency table)"
    assert ax.get_ylabel() == "measured latency at batch 64, final / baseline (timed interleaved)"
    mean_error = abs(table["error"]).mean() * 100
    assert f"|error| mean {mean_error:.1f}%" in ax.get_title()
    ideal = next(ln for ln in ax.get_lines() if ln.get_label().startswith("ideal"))
    assert list(ideal.get_xdata()) == list(ideal.get_ydata())


def test_store_without_latency_says_what_to_run(tmp_path):
    rows = [run_row(s, metrics={"ratio/latency_b1": None, "ratio/latency_b64": None}) for s in range(2)]
    store = read_store(write_store(tmp_path / "s", rows))
    with pytest.raises(NoData, match="study=latency"):
        latency_pareto_figure(store)
    with pytest.raises(NoData, match="predicted_ratio"):
        latency_prediction_figure(read_store(write_store(tmp_path / "t", [run_row(0)])))
    # a store with measured but no predicted latency still gets the Pareto figure
    assert [p.name for p in build(read_store(write_store(tmp_path / "u", [run_row(0)])), tmp_path / "o")] == [
        "latency_pareto.png",
        "latency_pareto.svg",
        "latency_pareto.csv",
    ]


def test_report_has_a_latency_section_with_both_figures(store, tmp_path):
    sections, _ = build_report(store.path.parent, tmp_path)
    section = next(s for s in sections if s.title.startswith("Accuracy vs measured latency"))
    assert [png for png, _ in section.images] == ["latency_pareto.png", "latency_prediction.png"]
    assert (tmp_path / "latency_prediction.csv").exists()


def test_int8_deployments_are_their_own_arms_marked_on_the_pareto_figure(tmp_path):
    """A run with deploy.quantize=int8 adds an int8 point: its ONNX Runtime top-1 at its latency
    relative to the dense fp32 model (both in ONNX Runtime), a hollow diamond, in the front's arms."""

    def metrics(seed):  # every run of the arm deployed in int8, as in study=latency
        return latency_metrics(0.89, 0.60, 0.50, None, None, seed) | {
            "deploy/int8_status": "ok",
            "deploy/int8_top1": 0.885 + 0.001 * seed,
            "deploy/int8/b1/int8_vs_dense": 0.40,
            "deploy/int8/b64/int8_vs_dense": 0.30 + 0.01 * seed,
            "deploy/int8/b64/int8_ms": 1.5,
        }

    rows = [
        run_row(
            s,
            final_acc=0.89,
            strategy="l1_oneshot",
            ratio="0.5",
            metrics=metrics(s),
            config={"seed": s, "strategy": {"name": "l1_oneshot", "ratio": "0.5"}, "deploy": {"quantize": "int8"}},
        )
        for s in range(3)
    ]
    store = read_store(write_store(tmp_path / "s", rows))
    points, batches = latency_points(load_runs(store))
    int8 = points[points["precision"] == "int8"]
    assert batches == [1, 64] and len(int8) == 3 * 2 and int8["ci_low"].isna().all()
    assert sorted(int8[int8["batch"] == 64]["latency_ratio"]) == pytest.approx([0.30, 0.31, 0.32])
    table = pareto_table(points).set_index(["batch", "precision"])
    assert table.loc[(64, "int8"), "acc_mean"] == pytest.approx(0.886)
    assert table.loc[(64, "int8"), "latency_ratio_mean"] == pytest.approx(0.31)
    # int8 is faster and the fp32 arms more accurate: both on the front
    assert table["pareto"].all()
    fig = latency_pareto_figure(store, tmp_path / "out")
    ax1, ax64 = fig.axes
    assert "int8: ONNX Runtime" in ax64.get_xlabel()
    diamonds = [ln for ln in ax64.get_lines() if ln.get_marker() == "D"]
    assert len(diamonds) == 1 and diamonds[0].get_label() == "l1_oneshot int8 (3 seeds)"
    assert diamonds[0].get_markerfacecolor() == "none"
    assert list(diamonds[0].get_xdata()) == pytest.approx([0.31])
    assert "ratio 0.5 int8" in {t.get_text() for t in ax64.texts}
    assert set(pd.read_csv(tmp_path / "out" / "latency_pareto.csv")["precision"]) == {"fp32", "int8"}
