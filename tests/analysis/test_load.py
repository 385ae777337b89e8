import json

import pytest

from analysis.load import (
    load_filter_norms,
    load_layers,
    load_ratios,
    load_runs,
    load_sensitivity,
    load_storage,
    read_store,
)
from analysis.parts import PARTS, derive_parts
from analysis.summary import summarise
from tests.analysis.helpers import full_store, run_row, sensitivity_tables, write_store


def test_every_part_and_metric_is_a_column(tmp_path):
    write_store(tmp_path, [run_row(0, final_acc=0.9, criterion="fpgm", freeze="most_sensitive:2", scoring="greedy")])
    runs = load_runs(tmp_path)
    assert set(PARTS) <= set(runs.columns)
    row = runs.iloc[0]
    assert (row["criterion"], row["freeze"], row["scoring"], row["ratio"], row["ratio_value"]) == (
        "fpgm",
        "most_sensitive:2",
        "greedy",
        "0.5",
        0.5,
    )
    assert row["final/acc"] == 0.9 and row["ratio/macs"] == 0.5 and row["machine"] == "testbox"
    assert row["source"].endswith("runs.jsonl:1")


def test_duplicate_seed_rows_count_once_and_the_latest_is_kept(tmp_path):
    rows = [
        run_row(0, final_acc=0.80, time="2026-12-01T10:00:00"),
        run_row(0, final_acc=0.85, time="2026-12-01T12:00:00"),
        run_row(1, final_acc=0.90),
    ]
    write_store(tmp_path, rows)
    store = read_store(tmp_path)
    runs = load_runs(store)
    assert sorted(runs["seed"]) == [0, 1]
    assert runs.loc[runs["seed"] == 0, "final/acc"].item() == 0.85
    assert len(store.superseded) == 1
    assert store.superseded[0].source.endswith("runs.jsonl:1") and "runs.jsonl:2" in store.superseded[0].message
    assert summarise(runs).loc[0, "seeds"] == 2


def test_malformed_rows_are_named_by_file_and_line_and_skipped(tmp_path):
    no_metrics = json.dumps({"schema_version": 2, "seed": 3, "dataset": "d", "model": "m", "status": "ok"})
    write_store(tmp_path, [run_row(0)], ["{not json", no_metrics, "[1, 2]", json.dumps({"seed": 1, "model": "m"})])
    store = read_store(tmp_path)
    problems = {p.source.rsplit(":", 1)[1]: p.message for p in store.problems}
    assert set(problems) == {"2", "3", "4", "5"}
    assert "not valid JSON" in problems["2"] and "no metrics" in problems["3"]
    assert "JSON object" in problems["4"] and "missing dataset" in problems["5"]
    assert len(load_runs(store)) == 1


def test_rows_missing_keys_do_not_crash(tmp_path):
    bare = {"seed": 0, "dataset": "d", "model": "m", "metrics": {"retrained/acc": 0.7}}
    write_store(tmp_path, [bare, run_row(1, status="failed")])
    runs = load_runs(tmp_path, status=None)
    assert list(runs["status"]) == ["ok", "failed"]
    assert runs.loc[0, "final/acc"] == 0.7  # falls back to retrained/acc
    assert runs.loc[1, "error_type"] == "RuntimeError" and runs.loc[1, "error_phase"] == "retrain"
    assert load_layers(tmp_path).empty and load_sensitivity(tmp_path).empty


def test_schema1_parts_are_derived_from_the_strategy_config():
    filt = derive_parts(
        {
            "strategy": {
                "_target_": "experiments.strategies.filters.FilterPruning",
                "name": "random_oneshot",
                "criterion": {"_target_": "pruning.criteria.Random", "seed": 0},
                "ratio": 0.5,
                "rounds": 1,
                "retrain": {"epochs": 2},
            },
            "baseline": {"epochs": 20},
        }
    )
    assert (filt["kind"], filt["criterion"], filt["schedule"], filt["ratio"], filt["ratio_policy"]) == (
        "filter",
        "random",
        "oneshot",
        "0.5",
        "uniform",
    )
    assert (filt["retrain"], filt["epochs_budget"], filt["baseline_epochs"]) == ("finetune", 2, 20)
    han = derive_parts(
        {
            "strategy": {
                "_target_": "experiments.strategies.weights.WeightPruning",
                "name": "han_iterative",
                "sparsity": {"fc1.weight": 0.9},
                "rounds": 3,
                "retrain": {"epochs": 8},
                "average": {"epochs": 8},
                "quantize_retrain": {"epochs": 2},
            }
        }
    )
    assert (han["kind"], han["criterion"], han["schedule"], han["ratio"]) == (
        "weight",
        "magnitude",
        "iterative",
        "per_layer",
    )
    assert han["epochs_budget"] == 3 * 8 + 8 + 2


def test_settings_that_differ_beyond_the_parts_are_named_not_pooled(tmp_path):
    def cfg(lr, seed):
        return {"seed": seed, "strategy": {"retrain": {"optimizer": {"lr": lr}}}, "paths": {"output_dir": f"o{seed}"}}

    rows = [run_row(s, config=cfg(lr, s), final_acc=acc) for lr, acc in ((0.01, 0.9), (0.05, 0.8)) for s in (0, 1)]
    write_store(tmp_path, rows)
    runs = load_runs(tmp_path)
    assert sorted(runs["variant"].unique()) == [
        "strategy.retrain.optimizer.lr=0.01",
        "strategy.retrain.optimizer.lr=0.05",
    ]
    table = summarise(runs)
    assert list(table["seeds"]) == [2, 2] and "variant" in table


def test_long_tables_carry_the_run_keys(tmp_path):
    full_store(tmp_path)
    sens = load_sensitivity(tmp_path)
    assert len(sens) == 6 * 2 * 3 * 3  # 6 l1 runs (2 ratios x 3 seeds) x 2 groups x 3 criteria x 3 scan ratios
    assert {"group", "ratio", "metric", "run_ratio", "criterion", "run_criterion", "seed"} <= set(sens.columns)
    assert set(sens["run_ratio"]) == {"0.3", "0.5"}  # the run's own ratio, kept apart from the scan's
    assert set(sens["run_criterion"]) == {"l1"} and set(sens["criterion"]) == {"l1", "random", "largest_l1"}
    assert set(load_filter_norms(tmp_path)["rank"]) == set(range(8))
    storage = load_storage(tmp_path)
    assert set(storage["layer"]) == {"fc1.weight", "fc2.weight"} and set(storage["experiment"]) == {
        "deep_compression_lenet300"
    }
    assert load_layers(tmp_path)["density"].tolist() == [0.08] * 3
    assert set(load_ratios(tmp_path)["group_ratio"]) == {0.5}


def test_a_table_that_is_not_a_list_is_reported(tmp_path):
    write_store(tmp_path, [run_row(0, tables={"layers": {"oops": 1}, **sensitivity_tables(0)})])
    store = read_store(tmp_path)
    assert [p.message for p in store.problems] == ["tables.layers is not a list of objects; that table is ignored"]
    assert load_layers(store).empty and not load_sensitivity(store).empty


def test_missing_store_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `python run.py` first"):
        read_store(tmp_path / "nope")


def test_wandb_offline_run_folders(tmp_path):
    files = (
        tmp_path
        / "outputs"
        / "2026-12-01"
        / "22-00-00_vgg_small_l1_oneshot_seed1"
        / "wandb"
        / "offline-run-20261201_220000-abc123"
        / "files"
    )
    files.mkdir(parents=True)
    (files / "wandb-summary.json").write_text(
        json.dumps({"baseline/acc": 0.92, "pruned/acc": 0.7, "retrained/acc": 0.91, "ratio/macs": 0.5, "_runtime": 3})
    )
    (files / "config.yaml").write_text(
        "_wandb:\n  value: {}\nseed:\n  value: 1\ndataset:\n  value: {name: fashion_mnist}\nmodel:\n  value: {name: vgg_small}\n"
        "strategy:\n  value: {name: l1_oneshot, criterion: l1, ratio: 0.5, rounds: 1, retrain: {epochs: 2}}\n"
    )
    store = read_store(tmp_path / "no-store", wandb_dir=tmp_path / "outputs")
    runs = load_runs(store)
    assert len(runs) == 1
    row = runs.iloc[0]
    assert (row["run_id"], row["seed"], row["strategy"], row["criterion"], row["final/acc"]) == (
        "abc123",
        1,
        "l1_oneshot",
        "l1",
        0.91,
    )
    assert str(row["time"]) == "2026-12-01 22:00:00"


def schema1_deep_compression_row(tmp_path, seed):
    """A row as schema 1 wrote it: no parts, no experiment; the preset is in the run's .hydra/overrides.yaml."""
    out = tmp_path / f"out{seed}"
    (out / ".hydra").mkdir(parents=True)
    (out / ".hydra" / "overrides.yaml").write_text(f"- experiment=deep_compression_lenet300\n- seed={seed}\n")
    return {
        "schema_version": 1,
        "run_id": f"v1-{seed}",
        "time": f"2026-11-0{seed + 1}T10:00:00",
        "status": "ok",
        "seed": seed,
        "dataset": "fashion_mnist",
        "model": "lenet300",
        "strategy": "deep_compression",
        "output_dir": str(out),
        "config": {
            "seed": seed,
            "baseline": {"epochs": 20},
            "strategy": {
                "_target_": "experiments.strategies.weights.WeightPruning",
                "name": "deep_compression",
                "sparsity": {"fc1.weight": 0.925},
                "rounds": 3,
                "retrain": {"epochs": 8},
                "average": {"epochs": 8},
                "quantize_retrain": {"epochs": 2},
            },
        },
        "metrics": {
            "baseline/acc": 0.90,
            "quantized/acc": 0.89,
            "retrained/acc": 0.895,
            "baseline/dense_bytes": 1_066_000,
            "quantized/storage_pruned_bytes": 100_000,
            "quantized/storage_quantized_bytes": 30_000,
            "quantized/storage_huffman_bytes": 26_000,
            "ratio/compressed_bytes": 1 / 41.0,
            "retrained/wall_s": 12.0,
        },
    }


def test_schema1_rows_get_experiment_parts_and_costs(tmp_path):
    write_store(tmp_path, [schema1_deep_compression_row(tmp_path, s) for s in (0, 1)])
    runs = load_runs(tmp_path)
    assert list(runs["experiment"]) == ["deep_compression_lenet300"] * 2
    assert list(runs["final/acc"]) == [0.89, 0.89]  # the quantized model is the final one
    assert runs.loc[0, "retrain/wall_s"] == 12.0 and runs.loc[0, "retrain/epochs"] == 34
    assert runs.loc[0, "delta/acc"] == pytest.approx(-0.01)


def test_wandb_online_project_through_the_public_api(tmp_path, monkeypatch):
    import sys
    import types

    run = types.SimpleNamespace(
        id="xyz",
        state="finished",
        created_at="2026-12-02T08:00:00",
        metadata={"host": "gpu-box"},
        summary={"final/acc": 0.88, "baseline/acc": 0.9, "_step": 3},
        config={
            "seed": 2,
            "dataset": {"name": "cifar10"},
            "model": {"name": "resnet56"},
            "strategy": {"name": "l1_oneshot", "criterion": "l1", "ratio": 0.3, "retrain": {"epochs": 1}},
        },
    )

    class Api:
        def runs(self, project):
            assert project == "me/prune"
            return [run]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=Api))
    runs = load_runs(read_store(tmp_path, wandb_project="me/prune"))
    row = runs.iloc[0]
    assert (row["run_id"], row["dataset"], row["ratio"], row["machine"], row["final/acc"]) == (
        "xyz",
        "cifar10",
        "0.3",
        "gpu-box",
        0.88,
    )
    assert row["source"] == "wandb:me/prune/xyz"
