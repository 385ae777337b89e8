import pandas as pd
import pytest

from analysis import output
from analysis.load import load_runs
from analysis.paper_comparison import paper_table, write_paper_table
from analysis.papers import PAPERS
from analysis.strategy_table import shown_table, strategy_table, write_strategy_table
from tests.analysis.helpers import full_store, run_row, write_store


def test_strategy_table_numbers(tmp_path):
    rows = [run_row(s, final_acc=acc, strategy="l1_oneshot") for s, acc in enumerate((0.90, 0.91, 0.92))]
    rows += [
        run_row(s, final_acc=acc, strategy="l1_scratch_e", retrain="scratch_e", metrics={"retrain/wall_s": 30.0 + s})
        for s, acc in enumerate((0.86, 0.88))
    ]
    rows.append(
        run_row(0, final_acc=0.95, strategy="l1_oneshot", time="2020-01-01T00:00:00")
    )  # older duplicate of seed 0
    write_store(tmp_path, rows)
    table = strategy_table(load_runs(tmp_path))
    ft = table[table["retrain"] == "finetune"].iloc[0]
    assert ft["seeds"] == 3 and ft["seed_list"] == "0 1 2"
    assert ft["delta/acc_mean"] == pytest.approx(0.91 - 0.92) and ft["delta/acc_std"] == pytest.approx(0.01)
    scratch = table[table["retrain"] == "scratch_e"].iloc[0]
    assert scratch["seeds"] == 2 and scratch["final/acc_mean"] == pytest.approx(0.87)
    assert scratch["retrain/wall_s_mean"] == pytest.approx(30.5)
    shown = shown_table(table)
    assert list(shown.columns[:4]) == ["dataset", "model", "strategy", "retrain"]  # only the part that varies
    assert shown.loc[shown["retrain"] == "finetune", "Δ acc (pp)"].item() == "-1.00 ± 1.00"
    assert shown.loc[shown["retrain"] == "finetune", "MAC reduction (%)"].item() == "50.0 ± 0.0"
    _, shown = write_strategy_table(tmp_path, tmp_path / "out")
    md = (tmp_path / "out" / "strategy_table.md").read_text()
    tex = (tmp_path / "out" / "strategy_table.tex").read_text()
    assert "| l1_scratch_e" in md
    assert r"\begin{tabular}" in tex and r"scratch\_e" in tex and r"$\pm$" in tex


def test_diverged_seeds_are_counted_not_hidden(tmp_path):
    write_store(tmp_path, [run_row(0, final_acc=0.9), run_row(1, final_acc=0.1)])
    runs = load_runs(tmp_path)
    assert list(runs["diverged"]) == [False, True]
    shown = shown_table(strategy_table(runs))
    assert shown.loc[0, "seeds"] == 2 and shown.loc[0, "diverged seeds"] == 1
    assert shown.loc[0, "final acc (%)"] == "50.00 ± 56.57"


def test_markdown_fallback_without_tabulate(monkeypatch):
    table = pd.DataFrame({"a": [1.5, float("nan")], "b": ["x", "y"]})

    def no_tabulate(*args, **kwargs):
        raise ImportError("Missing optional dependency 'tabulate'")

    monkeypatch.setattr(pd.DataFrame, "to_markdown", no_tabulate)
    assert output.markdown(table) == "| a | b |\n|---|---|\n| 1.5 | x |\n| — | y |"


def test_paper_comparison_gaps(tmp_path):
    rows = [
        run_row(
            s,
            experiment="li2017_vgg16_a",
            strategy="li2017_vgg16_a",
            dataset="cifar10",
            model="vgg16_cifar",
            base_acc=0.93,
            final_acc=acc,
            macs=0.66,
            params=0.36,
            ratio="per_layer",
            ratio_policy="per_layer",
        )
        for s, acc in enumerate((0.932, 0.934))
    ]
    rows.append(
        run_row(
            0,
            experiment="han2015_lenet300",
            strategy="han_iterative",
            model="lenet300",
            kind="weight",
            base_acc=0.98,
            final_acc=0.979,
            nonzero=1 / 12.5,
        )
    )
    rows.append(run_row(0, experiment="my_preset"))
    write_store(tmp_path, rows)
    table = paper_table(load_runs(tmp_path))
    li = table[table["experiment"] == "li2017_vgg16_a"].set_index("quantity")
    assert li.loc["baseline error (%)", "ours_mean"] == pytest.approx(7.0)
    assert li.loc["final error (%)", "paper"] == 6.60 and li.loc["final error (%)", "ours_mean"] == pytest.approx(6.7)
    assert li.loc["final error (%)", "gap"] == pytest.approx(0.1)
    assert li.loc["error change (pp)", "paper"] == pytest.approx(-0.15)
    assert li.loc["FLOPs (MACs) reduction (%)", "ours_mean"] == pytest.approx(34.0)
    assert li.loc["FLOPs (MACs) reduction (%)", "gap"] == pytest.approx(34.0 - 34.2)
    assert li.loc["params reduction (%)", "gap"] == pytest.approx(0.0)
    assert li.loc["final error (%)", "seeds"] == 2 and li.loc["final error (%)", "dataset"] == "cifar10"
    han = table[table["experiment"] == "han2015_lenet300"].set_index("quantity")
    assert (
        han.loc["fewer weights (x)", "ours_mean"] == pytest.approx(12.5) and han.loc["fewer weights (x)", "paper"] == 12
    )
    assert (
        han.loc["final error (%)", "paper dataset"] == "MNIST"
        and han.loc["final error (%)", "dataset"] == "fashion_mnist"
    )
    assert "smaller storage (x)" not in han.index  # Han 2015 reports no storage number
    mine = table[table["experiment"] == "my_preset"]
    assert mine["paper"].isna().all() and "add them to analysis/papers.py" in mine["source"].iloc[0]
    _, shown = write_paper_table(tmp_path, tmp_path / "out")
    assert shown.loc[shown["quantity"] == "final error (%)", "gap (ours - paper)"].iloc[0] == "+0.10"
    assert "Li, Kadav" in (tmp_path / "out" / "paper_comparison.md").read_text()


def test_every_paper_preset_has_a_source():
    assert set(PAPERS) == {
        "han2015_lenet300",
        "han2015_lenet5",
        "deep_compression_lenet300",
        "deep_compression_lenet5",
        "li2017_vgg16_a",
        "li2017_resnet56_a",
        "li2017_resnet56_b",
        "li2017_resnet110_a",
        "li2017_resnet110_b",
    }
    assert PAPERS["li2017_resnet110_b"].pruned_error == 6.70 and PAPERS["deep_compression_lenet5"].storage_x == 39
    assert all(p.citation for p in PAPERS.values())


def test_full_store_tables_build(tmp_path):
    full_store(tmp_path)
    table = strategy_table(load_runs(tmp_path))
    assert table["seeds"].tolist() == [3] * len(table)


def test_schema1_deep_compression_totals(tmp_path):
    from analysis.compression import compression_table, storage_long
    from tests.analysis.test_load import schema1_deep_compression_row

    write_store(tmp_path, [schema1_deep_compression_row(tmp_path, s) for s in (0, 1)])
    table = compression_table(storage_long(tmp_path)[0])
    (whole,) = table.to_dict("records")
    assert whole["layer"] == "whole model (file)" and whole["seeds"] == 2
    assert whole["rate + Huffman"] == pytest.approx(1_066_000 / 26_000)
    papers = paper_table(load_runs(tmp_path)).set_index("quantity")
    assert papers.loc["smaller storage (x)", "ours_mean"] == pytest.approx(41.0)
    assert papers.loc["smaller storage (x)", "gap"] == pytest.approx(1.0)
    assert papers.loc["final error (%)", "ours_mean"] == pytest.approx(11.0)
