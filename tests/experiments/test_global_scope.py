"""strategy.scope=global: one ranking of every prunable channel, at a ratio or at matched MACs."""

import pytest
import torch

import pruning
from experiments.checks import ConfigError
from experiments.run.pipeline import run
from experiments.strategies.global_scope import global_planned
from tests.experiments.conftest import FAST
from tests.experiments.test_strategies import planned

X = torch.zeros(1, 1, 16, 16)


def test_global_plan_removes_the_global_ratio_and_differs_from_uniform(compose_cfg):
    glob, _, strategy = planned(compose_cfg, "strategy=l1_global", "strategy.match=null", "strategy.ratio=0.5")
    uniform, _, _ = planned(compose_cfg, "strategy.ratio=0.5")
    channels = strategy.planned.channels
    kept = {g: k for g, k in pruning.group_channels(glob, X).items()}
    removed = sum(c - kept[g][0] for g, c in channels.items())
    assert removed == int(sum(channels.values()) * 0.5)  # every group is fully prunable in vgg_small
    assert {g: c for g, (c, _) in pruning.group_channels(uniform, X).items()} != {g: c for g, (c, _) in kept.items()}
    assert strategy.parts()["scope"] == "global"
    assert all(kept[g][0] >= round(c * 0.1) for g, c in channels.items())  # max_ratio 0.9


def test_matched_macs_removes_at_least_the_uniform_macs_and_not_much_more(compose_cfg):
    glob, _, strategy = planned(compose_cfg, "strategy=l1_global", "strategy.ratio=0.5")
    uniform, _, _ = planned(compose_cfg, "strategy.ratio=0.5")
    g, u = pruning.count(glob, X).macs, pruning.count(uniform, X).macs
    assert g <= u and g > 0.9 * u
    assert strategy.parts()["scope"] == "global"


def test_global_planning_is_the_library_ranking(compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg("dataset=synthetic", "dataset.input_size=16", "dataset.in_channels=1", "model=vgg_small")
    model = instantiate(cfg.model, num_classes=10, in_channels=1, input_size=16)
    got = global_planned(model, X, 0.4, pruning.criteria.L1(), max_ratio=0.8)
    assert got == pruning.structured.global_channels(model, X, 0.4, "l1", max_ratio=0.8)


def test_global_scope_runs_end_to_end(compose_cfg):
    row = run(compose_cfg(*FAST, "strategy=l1_global"))
    assert row["status"] == "ok" and row["parts"]["scope"] == "global"
    assert row["metrics"]["ratio/macs"] < 1.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["strategy.scope=everywhere"], r"strategy.scope='everywhere': allowed values"),
        (["strategy.match=macs"], r"strategy.match=macs .* needs strategy.scope=global"),
        (["strategy=l1_global", "strategy.max_ratio=1.0"], r"strategy.max_ratio=1.0: must be a number in \(0, 1\)"),
        (["strategy=l1_global", "strategy.round_to=auto"], r"strategy.scope=global takes one float strategy.ratio"),
    ],
)
def test_bad_global_settings_are_rejected_before_training(compose_cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(compose_cfg(*FAST, *overrides))
    assert not (tmp_path / ".cache").exists()
