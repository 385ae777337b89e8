"""The lesson designs' parts: retraining budgets, BatchNorm recalibration, sparing sensitive
groups, per-criterion scans, freezing with BatchNorm updates, and the study configs."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

import pruning
from experiments.checks import ConfigError
from experiments.run.pipeline import run
from experiments.storage.results import read_rows
from experiments.strategies.plan import Runtime, Train, execute, recalibrate_batchnorm
from experiments.strategies.ratio_policy import ScanTable
from experiments.strategies.skip import macs_removed
from experiments.training.context import BaselineRecipe
from tests.experiments.conftest import FAST
from tests.experiments.test_strategies import planned, shapes

CONF = Path(__file__).resolve().parents[2] / "conf"
VGG = [o for o in FAST if not o.startswith("model=")] + ["model=vgg_small", "logger=[csv]"]
STEPS_PER_EPOCH = 2  # FAST: limit_train_batches=2


# -- budgets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy, n", [("l1_oneshot", 1), ("l1_iterative", 3), ("l1_layerwise", 6)])
def test_per_step_budget_gives_every_step_the_epochs(compose_cfg, strategy, n):
    _, steps, s = planned(
        compose_cfg, f"strategy={strategy}", "strategy.retrain.epochs=2", "strategy.retrain.budget=per_step"
    )
    trains = [t for t in steps if isinstance(t, Train)]
    assert [t.steps for t in trains] == [2] * n  # steps_per_epoch is 1 in a dry run
    assert s.parts()["epochs_budget"] == 2 * n and s.parts()["budget"] == "per_step"
    _, steps, s = planned(compose_cfg, f"strategy={strategy}", "strategy.retrain.epochs=6")
    assert sum(t.steps for t in steps if isinstance(t, Train)) == 6 and s.parts()["epochs_budget"] == 6


def test_both_budgets_reach_the_identical_architecture(compose_cfg):
    arch = {
        (strategy, budget): shapes(
            planned(compose_cfg, f"strategy={strategy}", "strategy.ratio=0.7", f"strategy.retrain.budget={budget}")[0]
        )
        for strategy in ("l1_oneshot", "l1_iterative", "l1_layerwise")
        for budget in ("total", "per_step")
    }
    assert len({str(sorted(a.items())) for a in arch.values()}) == 1


def test_per_step_retrain_steps_match_the_oneshot_arm_with_the_total(compose_cfg, tmp_path):
    per_step = run(compose_cfg(*FAST, "strategy=l1_iterative", "strategy.retrain.budget=per_step"))
    oneshot = run(compose_cfg(*FAST, "strategy=l1_oneshot", "strategy.retrain.epochs=3"))
    total = run(compose_cfg(*FAST, "strategy=l1_iterative"))
    assert per_step["metrics"]["retrain/steps"] == 3 * 1 * STEPS_PER_EPOCH  # 3 rounds x 1 epoch x 2 batches
    assert oneshot["metrics"]["retrain/steps"] == per_step["metrics"]["retrain/steps"]
    assert total["metrics"]["retrain/steps"] == 1 * STEPS_PER_EPOCH
    assert per_step["parts"]["epochs_budget"] == oneshot["parts"]["epochs_budget"] == 3
    assert per_step["metrics"]["retrained/params"] == oneshot["metrics"]["retrained/params"]


# -- BatchNorm recalibration ---------------------------------------------------------------------
def test_recalibration_sets_running_statistics_to_the_batch_average():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.ReLU())
    x = torch.randn(12, 1, 6, 6) * 2 + 1
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    recalibrate_batchnorm(model, x, batch_size=4)
    with torch.no_grad():
        y = model[0](x)
    chunks = y.split(4)
    mean = torch.stack([c.mean((0, 2, 3)) for c in chunks]).mean(0)
    var = torch.stack([c.var((0, 2, 3), unbiased=True) for c in chunks]).mean(0)
    assert torch.allclose(model[1].running_mean, mean, atol=1e-6)
    assert torch.allclose(model[1].running_var, var, atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_recalibrate_bn_changes_pruned_statistics_not_weights(compose_cfg, tmp_path):
    rows, models = {}, {}
    for n in (0, 2):  # both runs write the same output folder: read each model as it is written
        rows[n] = run(compose_cfg(*VGG, "strategy.retrain.mode=none", f"strategy.recalibrate_bn={n}"))
        models[n] = torch.load(Path(rows[n]["output_dir"]) / "model.pt", weights_only=True)["state_dict"]
    m = rows[2]["metrics"]
    assert rows[2]["parts"]["recalibrate_bn"] == 2 and rows[0]["parts"]["recalibrate_bn"] == 0
    # the stale-statistics measurement of the recalibrated run is the unrecalibrated run's "pruned"
    assert m["pruned_stale_bn/loss"] == pytest.approx(rows[0]["metrics"]["pruned/loss"])
    assert m["pruned/loss"] != pytest.approx(m["pruned_stale_bn/loss"])
    stats = [k for k in models[0] if "running_" in k]
    assert stats and any(not torch.equal(models[0][k], models[2][k]) for k in stats)
    assert all(
        torch.equal(models[0][k], models[2][k]) for k in models[0] if "running_" not in k and "num_batches" not in k
    )


# -- sparing the most sensitive groups ---------------------------------------------------------
def _known_scan(groups, sensitive):
    rows = [
        {"group": g, "ratio": r, "kept": 0, "channels": 0, "metric": 0.9 - (0.2 if g in sensitive else 0.02) * r}
        for g in groups
        for r in (0.25, 0.5, 0.75)
    ]
    return ScanTable(0.9, rows)


@pytest.mark.parametrize("k", [1, 2])
def test_skip_sensitive_spares_k_groups_and_matches_uniform_macs(compose_cfg, k):
    cfg = compose_cfg(
        "dataset=synthetic",
        "dataset.input_size=16",
        "dataset.in_channels=1",
        "model=vgg_small",
        "strategy=l1_freeze_sensitive",
        "strategy.freeze=null",
        f"strategy.skip_sensitive={k}",
        "strategy.ratio=0.5",
    )
    build = lambda: instantiate(cfg.model, num_classes=10, in_channels=1, input_size=16)  # noqa: E731
    model, x = build(), torch.randn(2, 1, 16, 16)
    groups = list(pruning.group_channels(model, x))
    sensitive = [groups[3], groups[1]][:k]  # the scan ranks these most sensitive
    strategy = instantiate(cfg.strategy, _convert_="all")
    strategy.validate(model)
    dense = pruning.count(model, x)
    rt = Runtime(example=x, build_model=build, strategy=strategy, seed=cfg.seed, dry=True, dense_counts=dense)
    rt.scan = _known_scan(groups, sensitive)
    uniform = macs_removed(model, x, 0.5)
    execute(strategy.plan(model, rt), model, rt)
    after = pruning.group_channels(model, x)
    assert sorted(strategy.spared) == sorted(sensitive)
    assert all(after[g][0] == pruning.group_channels(build(), x)[g][0] for g in sensitive)  # unpruned
    rest = {strategy.ratios_used[g] for g in groups if g not in sensitive}
    assert min(rest) > 0.5  # the others pruned harder (one common ratio, floored per group)
    removed = dense.macs - pruning.count(model, x).macs
    assert abs(removed - uniform) <= 0.02 * dense.macs  # matched on MACs, within half a channel
    assert strategy.parts()["skip_sensitive"] == k and strategy.tables(model)["spared"] == strategy.spared


def test_skip_sensitive_runs_end_to_end(compose_cfg):
    row = run(compose_cfg(*VGG, "strategy=l1_freeze_sensitive", "strategy.freeze=null", "strategy.skip_sensitive=1"))
    uniform = run(compose_cfg(*VGG, "strategy=l1_oneshot"))
    spared = row["tables"]["spared"]
    assert len(spared) == 1 and row["tables"]["ratios"][spared[0]] == 0
    gap = row["metrics"]["retrained/macs"] - uniform["metrics"]["retrained/macs"]
    assert abs(gap) <= 0.02 * row["metrics"]["baseline/macs"]


def test_skip_sensitive_that_some_scan_could_make_infeasible_fails_before_training(compose_cfg, tmp_path):
    """On vgg_small the first two groups hold most MACs: sparing both cannot match uniform 0.5,
    so k=2 is refused by the dry run whatever the scan will say."""
    with pytest.raises(ConfigError, match=r"strategy.skip_sensitive=2 with strategy.ratio=0.5: if the scan ranks"):
        run(compose_cfg(*VGG, "strategy=l1_skip_sensitive", "strategy.skip_sensitive=2"))
    assert not (tmp_path / ".cache").exists()


# -- per-criterion scans -----------------------------------------------------------------------
def test_scans_per_criterion_are_stored_with_a_criterion_column(compose_cfg):
    criteria = ["random", "largest_l1", "taylor"]
    row = run(
        compose_cfg(
            *VGG,
            "strategy.retrain.mode=none",
            "+strategy.scan={_target_: experiments.strategies.parts.Scan, ratios: [0.3, 0.6], images: 64, "
            f"criteria: [{','.join(criteria)}]}}",
        )
    )
    table = row["tables"]["sensitivity_criteria"]
    assert {r["criterion"] for r in table} == {"l1", *criteria}
    groups = {r["group"] for r in row["tables"]["sensitivity"]}
    for name in ("l1", *criteria):
        mine = [r for r in table if r["criterion"] == name]
        assert len(mine) == len(groups) * 2 and {r["ratio"] for r in mine} == {0.3, 0.6}
        assert all(0 <= r["metric"] <= 1 and r["base_metric"] == mine[0]["base_metric"] for r in mine)
    assert [r["metric"] for r in table if r["criterion"] == "l1"] == [r["metric"] for r in row["tables"]["sensitivity"]]
    assert all(r["criterion"] == "l1" for r in row["tables"]["sensitivity"])


# -- freezing with BatchNorm updates -----------------------------------------------------------
@pytest.mark.parametrize("mode", ["fixed", "update"])
def test_freeze_bn_update_moves_statistics_not_weights(compose_cfg, tmp_path, mode):
    import json

    cfg = compose_cfg(*VGG, "strategy.freeze=[features.0,features.1]", f"strategy.freeze_bn={mode}")
    row = run(cfg)
    assert row["parts"]["freeze_bn"] == mode
    out = Path(row["output_dir"])
    final = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    entry = torch.load(next((tmp_path / ".cache" / "baselines").glob("*.pt")), weights_only=True)
    before = instantiate(cfg.model, num_classes=10, in_channels=1, input_size=16)
    before.load_state_dict(entry["state_dict"])
    for step in json.loads((out / "pruning_records.json").read_text()):
        pruning.apply_record(before, {k: step[k] for k in ("version", "entries", "shapes")})
    start = before.state_dict()
    for key in ("features.0.weight", "features.1.weight", "features.1.bias"):
        assert torch.equal(final[key], start[key]), key  # frozen weights never move
    moved = not torch.equal(final["features.1.running_mean"], start["features.1.running_mean"])
    assert moved == (mode == "update")
    assert not torch.equal(final["features.3.weight"], start["features.3.weight"])  # the rest retrained


# -- scratch and row fields --------------------------------------------------------------------
def test_uncapped_scratch_b_trains_the_mac_matched_epochs(compose_cfg):
    _, _, strategy = planned(
        compose_cfg,
        "strategy=l1_scratch_b",
        "baseline.epochs=10",
        "strategy.ratio=0.5",
        "strategy.retrain.scratch_cap=null",
    )
    cfg = compose_cfg("dataset=synthetic", "dataset.input_size=16", "model=vgg_small", "baseline.epochs=10")
    x = torch.zeros(1, 1, 16, 16)
    dense = instantiate(cfg.model, num_classes=10, in_channels=1, input_size=16)
    pruned = instantiate(cfg.model, num_classes=10, in_channels=1, input_size=16)
    pruning.prune_filters(pruned, x, 0.5)
    rt = Runtime(
        example=x,
        build_model=lambda: dense,
        strategy=strategy,
        seed=cfg.seed,
        baseline=BaselineRecipe.from_config(cfg),  # baseline.epochs=10
        dense_counts=pruning.count(dense, x),
    )
    matched = int(10 * pruning.count(dense, x).macs / pruning.count(pruned, x).macs)
    assert matched > 20 and strategy._scratch_epochs(pruned, rt) == matched  # more than l1_scratch_b's 2x cap
    assert strategy.parts()["scratch_cap"] is None


def test_rows_name_the_retraining_optimizer_and_lr(compose_cfg):
    ft = planned(compose_cfg, "strategy=l1_oneshot", "strategy.retrain.optimizer.lr=0.05")[2].parts()
    scratch = planned(compose_cfg, "strategy=l1_scratch_e", "baseline.optimizer.lr=0.07")[2].parts()
    none = planned(compose_cfg, "strategy.retrain.mode=none")[2].parts()
    assert (ft["optimizer"], ft["retrain_lr"]) == ("SGD", 0.05)
    assert (scratch["optimizer"], scratch["retrain_lr"]) == ("SGD", 0.07)  # scratch trains with the baseline's
    assert none["retrain_lr"] is None and none["epochs_budget"] is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["strategy.retrain.budget=sometimes"], r"strategy.retrain.budget='sometimes': allowed values are 'total'"),
        (["strategy.freeze_bn=update"], r"strategy.freeze_bn=update needs strategy.freeze"),
        (["strategy.freeze=[conv1]", "strategy.freeze_bn=thaw"], r"strategy.freeze_bn='thaw': allowed values"),
        (["strategy.recalibrate_bn=4"], r"strategy.recalibrate_bn=4: the model has no BatchNorm layer"),
        (["strategy.recalibrate_bn=-1"], r"strategy.recalibrate_bn=-1: must be an integer >= 0"),
        (["strategy.skip_sensitive=1"], r"strategy.skip_sensitive needs a sensitivity scan"),
        (
            ["strategy=l1_sensitivity", "strategy.skip_sensitive=1"],
            r"strategy.skip_sensitive=1 needs one strategy.ratio",
        ),
        (["strategy=l1_freeze_sensitive", "strategy.skip_sensitive=3"], r"the model has 3 prunable groups"),
        (["strategy=l1_sensitivity", "strategy.scan.criteria=[l3]"], r"strategy.scan.criteria='l3': allowed values"),
        (["strategy=l1_sensitivity_macs", "strategy.ratio.resource=flops"], r"strategy.ratio.resource='flops'"),
        (
            ["strategy=l1_scratch_b", "strategy.retrain.scratch_cap=0.5"],
            r"scratch_cap=0.5: must be a number >= 1, or null",
        ),
    ],
)
def test_bad_design_keys_are_rejected_before_training(compose_cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(compose_cfg(*FAST, *overrides))
    assert not (tmp_path / ".cache").exists(), "training started before validation"
    assert read_rows(tmp_path / "results") == []


# -- a study sweep end to end ------------------------------------------------------------------
@pytest.mark.slow
def test_study_sweeps_its_arms_and_rows_name_them(tmp_path):
    """study=freeze on tiny data: one row per arm, named by the arm, each with its parts."""
    from tests.experiments.test_pipeline import _run_py

    tiny = [o for o in VGG if not o.startswith("logger=")] + [  # the study's W&B group needs the wandb logger
        "measure.latency_batch_sizes=[1]",
        "measure.compare_latency=false",
        "deploy.onnx=false",
        "baseline.epochs=1",
        "threads=1",
        "hydra.launcher.n_jobs=1",
        "seed=0",
    ]
    proc = _run_py("-m", "study=freeze", *tiny, f"hydra.sweep.dir={tmp_path}/multirun", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["arm"]: r for r in read_rows(tmp_path / "results")}
    assert sorted(rows) == sorted(
        [
            "l1_oneshot",
            "l1_skip_sensitive",
            "l1_oneshot-r03",
            "l1_skip_sensitive-k2-r03",
            "l1_freeze_sensitive",
            "l1_freeze_sensitive-bn_update",
        ]
    )
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["l1_skip_sensitive"]["parts"]["skip_sensitive"] == 1 and rows["l1_skip_sensitive"]["tables"]["spared"]
    k2, uniform = rows["l1_skip_sensitive-k2-r03"], rows["l1_oneshot-r03"]
    assert len(k2["tables"]["spared"]) == 2 and k2["parts"]["ratio"] == uniform["parts"]["ratio"] == "0.3"
    assert (
        abs(k2["metrics"]["retrained/macs"] - uniform["metrics"]["retrained/macs"])
        <= 0.02 * k2["metrics"]["baseline/macs"]
    )
    assert rows["l1_freeze_sensitive-bn_update"]["parts"]["freeze_bn"] == "update"
    assert rows["l1_freeze_sensitive"]["parts"]["freeze_bn"] == "fixed"
    same = {
        rows[a]["metrics"]["retrained/params"]
        for a in ("l1_oneshot", "l1_freeze_sensitive", "l1_freeze_sensitive-bn_update")
    }
    assert len(same) == 1
    assert all(r["parts"]["retrain_lr"] == 0.01 and r["parts"]["optimizer"] == "SGD" for r in rows.values())
