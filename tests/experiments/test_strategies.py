"""The strategy space: schedules reach one architecture, budgets, scratch, freeze, greedy, bad input."""

import pytest
import torch
from hydra.utils import instantiate

import pruning
from experiments.checks import ConfigError
from experiments.run.pipeline import run
from experiments.storage.results import read_rows
from experiments.strategies.plan import Runtime, Train, execute, split_budget
from experiments.strategies.ratio_policy import ScanTable, SensitivityMaxDrop, SensitivityTarget
from experiments.training.context import BaselineRecipe
from tests.experiments.conftest import FAST


def planned(compose_cfg, *overrides, model="vgg_small", size=16, channels=1):
    """Plan and execute (dry) a strategy on a fresh model: the model as the plan leaves it."""
    cfg = compose_cfg(
        "dataset=synthetic",
        f"dataset.input_size={size}",
        f"dataset.in_channels={channels}",
        f"model={model}",
        *overrides,
    )
    model_, steps, strategy, _ = dry_execute(cfg, channels, size)
    return model_, steps, strategy


def dry_execute(cfg, channels, size, prepare=None):
    """(model, steps, strategy, example) after the dry run of ``cfg``'s plan on a fresh model;
    ``prepare(rt, model, x)`` runs before planning (e.g. to give the runtime a known scan)."""
    build = lambda: instantiate(cfg.model, num_classes=10, in_channels=channels, input_size=size)  # noqa: E731
    model = build()
    x = torch.randn(2, channels, size, size)
    strategy = instantiate(cfg.strategy, _convert_="all")
    rt = Runtime(
        example=x,
        build_model=build,
        strategy=strategy,
        seed=cfg.seed,
        baseline=BaselineRecipe.from_config(cfg),
        dry=True,
        dense_counts=pruning.count(model, x),
    )
    strategy.validate(model)
    if prepare is not None:
        prepare(rt, model, x)
    steps = strategy.plan(model, rt)
    execute(steps, model, rt)
    return model, steps, strategy, x


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "model, size, channels", [("vgg_small", 16, 1), ("resnet20", 16, 3), ("mobilenetv2_cifar", 16, 3)]
)
def test_every_schedule_reaches_the_identical_architecture(compose_cfg, model, size, channels):
    results = {}
    for strategy in ("l1_oneshot", "l1_iterative", "l1_layerwise", "l1_greedy"):
        pruned, steps, _ = planned(
            compose_cfg, f"strategy={strategy}", "strategy.ratio=0.4", model=model, size=size, channels=channels
        )
        results[strategy] = (shapes(pruned), pruning.count(pruned, torch.zeros(1, channels, size, size)).macs)
    base = results["l1_oneshot"]
    assert all(r == base for r in results.values())
    # and the architecture really is smaller
    dense = instantiate(compose_cfg(f"model={model}").model, num_classes=10, in_channels=channels, input_size=size)
    assert base[1] < pruning.count(dense, torch.zeros(1, channels, size, size)).macs


def test_iterative_rounds_shrink_geometrically_to_the_planned_width():
    widths = [pruning.schedules.channel_schedule(64, 16, r, 3) for r in range(4)]
    assert widths == [64, 41, 26, 16]  # ceil(64 * 0.25 ** (r / 3)), exact at the end
    with pytest.raises(ValueError, match="kept=0"):
        pruning.schedules.channel_schedule(64, 0, 1, 3)


def test_budget_is_split_across_steps():
    assert split_budget(10, 3) == [3, 3, 4]
    assert sum(split_budget(7, 12)) == 7 and split_budget(7, 12)[-1] == 1
    assert split_budget(5, 1) == [5]


def test_schedules_split_one_budget(compose_cfg):
    for strategy, n_train in (
        ("l1_oneshot", 1),
        ("l1_iterative", 3),
        ("l1_layerwise", 6),
    ):  # vgg_small: 6 prunable groups
        _, steps, _ = planned(compose_cfg, f"strategy={strategy}", "strategy.retrain.epochs=6")
        trains = [s for s in steps if isinstance(s, Train)]
        assert len(trains) == n_train, strategy
        assert sum(s.steps for s in trains) == 6  # steps_per_epoch is 1 in a dry run


def test_measure_pruned_when_the_final_structure_is_reached(compose_cfg):
    _, steps, _ = planned(compose_cfg, "strategy=l1_iterative")
    labels = [s.label for s in steps]
    assert labels.index("pruned") == labels.index("round2/prune") + 1
    assert labels[-1] == "retrained" and "round0/pruned" in labels and "round1/retrained" in labels


def test_scratch_b_epochs_scale_with_macs_and_are_capped(compose_cfg):
    _, steps, strategy = planned(compose_cfg, "strategy=l1_scratch_b", "baseline.epochs=10", "strategy.ratio=0.3")
    train = [s for s in steps if isinstance(s, Train)][0]
    assert train.init == "reinit"
    cfg = compose_cfg("dataset=synthetic", "dataset.input_size=16", "model=vgg_small", "baseline.epochs=10")
    dense = instantiate(cfg.model, num_classes=10, in_channels=1, input_size=16)
    x = torch.zeros(1, 1, 16, 16)
    pruned = instantiate(cfg.model, num_classes=10, in_channels=1, input_size=16)
    pruning.prune_filters(pruned, x, 0.3)
    ratio = pruning.count(dense, x).macs / pruning.count(pruned, x).macs
    rt = Runtime(
        example=x,
        build_model=lambda: dense,
        strategy=strategy,
        seed=cfg.seed,
        baseline=BaselineRecipe.from_config(cfg),  # baseline.epochs=10
        dense_counts=pruning.count(dense, x),
    )
    assert strategy._scratch_epochs(pruned, rt) == min(20, int(10 * ratio))
    assert 10 < int(10 * ratio)  # 0.3 of the filters removes more than half of the MACs ...
    strategy.retrain.scratch_cap = 1.5
    assert strategy._scratch_epochs(pruned, rt) == 15  # ... so the cap decides
    strategy.retrain.mode = "scratch_e"
    assert strategy._scratch_epochs(pruned, rt) == 10


def test_greedy_scoring_ignores_kernels_of_removed_inputs():
    """conv2's filter 0 is large only through its kernel on conv1's channel 0, which conv1
    loses: independent scoring keeps filter 0, greedy scoring removes it."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 1, bias=False),
        torch.nn.ReLU(),
        torch.nn.Conv2d(2, 2, 1, bias=False),
        torch.nn.ReLU(),
        torch.nn.Conv2d(2, 3, 1, bias=False),
    )
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([0.1, 1.0]).view(2, 1, 1, 1))
        model[2].weight.copy_(torch.tensor([[5.0, 0.1], [0.0, 1.0]]).view(2, 2, 1, 1))
    x = torch.zeros(1, 1, 4, 4)
    import copy

    independent, greedy = copy.deepcopy(model), copy.deepcopy(model)
    pruning.prune_to(independent, x, {"0": 1, "2": 1}, "l1", scoring="independent")
    pruning.prune_to(greedy, x, {"0": 1, "2": 1}, "l1", scoring="greedy")
    assert independent[2].weight.flatten().tolist() == pytest.approx([0.1])  # kept filter 0, reading channel 1
    assert greedy[2].weight.flatten().tolist() == [1.0]  # kept filter 1


def test_random_criterion_follows_the_run_seed(compose_cfg):
    kept = []
    for seed in (0, 1):
        _, _, strategy = planned(compose_cfg, "strategy=random_oneshot", f"seed={seed}")
        kept.append(strategy.record.to_dict()["entries"][0]["keep"])
    assert kept[0] != kept[1]


class Dice(pruning.criteria.Criterion):
    """A criterion with its own randomness that no strategy knows of: the run seeds it through ``seeded``."""

    seen: list[int] = []

    def __init__(self, seed: int = 0):
        self.seed = seed

    def seeded(self, seed: int) -> "Dice":
        return Dice(seed)

    def __call__(self, group):
        Dice.seen.append(self.seed)
        return torch.rand(group.n_channels, generator=torch.Generator().manual_seed(self.seed), dtype=torch.float64)


def test_a_new_seeded_criterion_follows_the_run_seed(compose_cfg, monkeypatch):
    names, lookup = pruning.criteria.criterion_names, pruning.criteria.criterion_class
    monkeypatch.setattr(pruning.criteria, "criterion_names", lambda: sorted([*names(), "dice"]))
    monkeypatch.setattr(pruning.criteria, "criterion_class", lambda name: Dice if name == "dice" else lookup(name))
    monkeypatch.setattr(Dice, "seen", [])
    _, _, strategy = planned(compose_cfg, "strategy.criterion=dice", "seed=7")
    assert Dice.seen and set(Dice.seen) == {7} and strategy.parts()["criterion"] == "dice"


@pytest.mark.parametrize("criterion", pruning.criteria.criterion_names())
def test_every_criterion_plans_from_the_command_line(compose_cfg, criterion):
    pruned, _, _ = planned(compose_cfg, f"strategy.criterion={criterion}")
    assert pruning.count(pruned, torch.zeros(1, 1, 16, 16)).params < 60_000


def test_data_driven_criterion_runs_end_to_end(compose_cfg):
    row = run(compose_cfg(*FAST, "strategy.criterion=taylor"))
    assert row["parts"]["criterion"] == "taylor" and row["metrics"]["ratio/params"] < 0.5


def test_scan_policies_from_a_known_table(compose_cfg):
    cfg = compose_cfg("dataset=synthetic", "dataset.input_size=16", "model=vgg_small")
    model = instantiate(cfg.model, num_classes=10, in_channels=1, input_size=16)
    x = torch.zeros(1, 1, 16, 16)
    groups = list(pruning.group_channels(model, x))
    # group 0 is sensitive (loses 5 points per 0.25), the rest lose 1 point per 0.25
    rows = [
        {"group": g, "ratio": r, "kept": 0, "channels": 0, "metric": 0.9 - (0.2 if i == 0 else 0.04) * r}
        for i, g in enumerate(groups)
        for r in (0.25, 0.5, 0.75)
    ]
    scan = ScanTable(0.9, rows)
    ratios = SensitivityMaxDrop(max_drop=0.02)(model, x, scan)
    assert ratios[groups[0]] == 0.0 and all(ratios[g] == 0.5 for g in groups[1:])
    target = SensitivityTarget(reduction=0.5)
    alloc = target(model, x, scan)
    assert alloc[groups[0]] == 0.0  # the sensitive group is spared
    assert target._removed(model, x, alloc, pruning.count(model, x).macs) >= 0.5
    assert max(scan.sensitivity(), key=scan.sensitivity().get) == groups[0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["strategy=l1_layerwise", "strategy.rounds=3"], r"strategy.rounds=3 with strategy.schedule=layerwise"),
        (["strategy.freeze={most_sensitive: 2}"], r"strategy.freeze.most_sensitive needs a sensitivity scan"),
        (["strategy.freeze=[nope]"], r"strategy.freeze names 'nope'"),
        (["strategy.freeze=[conv1,conv2,fc1,fc2]"], r"freezes every trainable parameter"),
        (
            ["strategy=han_iterative", "model=lenet300", "strategy.retrain.mode=scratch_b"],
            r"strategy.retrain.mode=scratch_b: training from scratch",
        ),
        (["strategy=l1_sensitivity", "strategy.ratio.max_drop=-0.1"], r"strategy.ratio.max_drop=-0.1"),
        (
            [
                "strategy=l1_sensitivity",
                "strategy.ratio._target_=experiments.strategies.ratio_policy.SensitivityTarget",
                "~strategy.ratio.max_drop",
                "+strategy.ratio.reduction=0.995",
            ],
            r"can remove at most",
        ),
        (
            ["strategy=l1_scratch_e", "strategy.schedule=iterative", "strategy.rounds=2"],
            r"use strategy.schedule=oneshot",
        ),
        (["strategy.schedule=sideways"], r"strategy.schedule='sideways': allowed values"),
        (["strategy.scoring=lazy"], r"strategy.scoring='lazy': allowed values"),
    ],
)
def test_bad_strategy_combinations_are_rejected_before_training(compose_cfg, tmp_path, overrides, message):
    cfg = compose_cfg(*FAST, *overrides)
    with pytest.raises(ConfigError, match=message):
        run(cfg)
    assert not (tmp_path / ".cache").exists(), "training started before validation"
    assert read_rows(tmp_path / "results") == []


def test_freeze_keeps_named_layers_fixed_while_retraining(compose_cfg, tmp_path):
    import json
    from pathlib import Path

    cfg = compose_cfg(*FAST, "strategy.freeze=[conv1]", "strategy.retrain.epochs=2")
    row = run(cfg)
    assert row["parts"]["freeze"] == "list:conv1"
    out = Path(row["output_dir"])
    final = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    # the baseline's weights cut by the run's own record = the model before fine-tuning
    entry = torch.load(next((tmp_path / ".cache" / "baselines").glob("*.pt")), weights_only=True)
    before = instantiate(cfg.model, num_classes=10, in_channels=1, input_size=16)
    before.load_state_dict(entry["state_dict"])
    for step in json.loads((out / "pruning_records.json").read_text()):
        pruning.apply_record(before, {k: step[k] for k in ("version", "entries", "shapes")})
    assert torch.equal(final["conv1.weight"], before.state_dict()["conv1.weight"])  # frozen: untouched
    assert not torch.equal(final["fc1.weight"], before.state_dict()["fc1.weight"])  # the rest was retrained


def test_scratch_e_reinitialises_and_trains_baseline_epochs(compose_cfg):
    row = run(compose_cfg(*FAST, "strategy=l1_scratch_e", "baseline.epochs=2"))
    m = row["metrics"]
    assert row["parts"]["retrain"] == "scratch_e"
    assert m["retrain/epochs"] == 2 and m["retrain/steps"] == 4  # 2 batches an epoch (limit_train_batches)
