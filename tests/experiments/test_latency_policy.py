"""The LatencyTarget ratio policy: validated before training, planned by the dry run."""

import pytest
import torch
from hydra.utils import instantiate

import pruning
from experiments.checks import ConfigError
from experiments.strategies.ratio_policy import LatencyTarget, placeholder_scan
from tests.experiments.conftest import FAST
from tests.experiments.test_strategies import planned


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("target", 1.5, r"strategy.ratio.target=1.5: must be a number in \(0, 1\)"),
        ("target", 0, r"strategy.ratio.target=0: must be a number in \(0, 1\)"),
        ("batch_size", 0, r"strategy.ratio.batch_size=0: must be an integer >= 1"),
        ("grid", 2.5, r"strategy.ratio.grid=2.5: must be an integer >= 1"),
        ("max_ratio", 1.0, r"strategy.ratio.max_ratio=1.0: must be a number in \(0, 1\)"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        LatencyTarget(**{key: value}).validate()


def test_config_validates_before_training(compose_cfg):
    cfg = compose_cfg(*FAST, "strategy=l1_latency", "strategy.ratio.target=1.5")
    model = instantiate(cfg.model, num_classes=10, in_channels=1, input_size=16)
    strategy = instantiate(cfg.strategy, _convert_="all")
    assert isinstance(strategy.ratio, LatencyTarget) and strategy.scan is not None
    with pytest.raises(ConfigError, match=r"strategy.ratio.target=1.5: must be a number in \(0, 1\)"):
        strategy.validate(model)


def test_dry_run_plans_the_counts_the_search_chose(compose_cfg):
    pruned, _, strategy = planned(
        compose_cfg,
        "strategy=l1_latency",
        "strategy.ratio.target=0.9",
        "strategy.ratio.batch_size=8",
        "strategy.ratio.passes=1",
        size=16,
    )
    result = strategy.ratio.result
    assert result.channels and result.target == 0.9 and result.comparison.batch_size == 8
    x = torch.zeros(1, 1, 16, 16)
    after = pruning.group_channels(pruned, x)
    for group, kept in result.channels.items():
        assert after[group][0] == kept and kept % 8 == 0
    m = strategy.metrics()  # what the results row gets
    assert m["latency/target"] == 0.9 and m["latency/b8/predicted_ratio"] == result.predicted_ratio
    assert m["latency/b8/search_measured_ratio"] == result.comparison.ratio and m["latency/search_passes"] == 1
    assert strategy.ratios_used == pytest.approx(
        {g: 1 - result.channels.get(g, c) / c for g, c in strategy.channels.items()}
    )


def test_unreachable_target_is_a_config_error_with_the_best_ratio():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16 * 14 * 14, 10)
    )
    x = torch.randn(1, 1, 16, 16)
    scan = placeholder_scan(pruning.group_channels(model, x), [0.5])
    with pytest.raises(ConfigError, match=r"strategy.ratio.target=0.05: unreachable; .*measured a latency ratio of"):
        LatencyTarget(target=0.05, max_time_s=1.0)(model, x, scan)


def test_round_to_auto_flows_from_the_config_to_the_plan(compose_cfg):
    cfg = compose_cfg(*FAST, "strategy.round_to=fast")
    model = instantiate(cfg.model, num_classes=10, in_channels=1, input_size=16)
    with pytest.raises(ConfigError, match="strategy.round_to='fast': must be an integer >= 1 or 'auto'"):
        instantiate(cfg.strategy, _convert_="all").validate(model)
    _, _, strategy = planned(compose_cfg, "strategy.round_to=auto", "strategy.ratio=0.3", size=16)
    plain = pruning.planned_channels(
        instantiate(
            compose_cfg("dataset=synthetic", "model=vgg_small").model, num_classes=10, in_channels=1, input_size=16
        ),
        torch.zeros(2, 1, 16, 16),
        0.3,
    )
    assert strategy.channels == {g: c for g, (c, _) in plain.items()}
    for g, k in strategy.targets.items():  # never fewer channels than the ratio asks; a multiple of 8/16 or k
        want = plain[g][1]
        assert k in {want, -(-want // 8) * 8, -(-want // 16) * 16}


def test_dry_run_leaves_a_target_near_its_predicted_floor_to_the_real_search():
    """The dry run's one quick pass on the untrained copy refuses a target far below its predicted
    floor, but one just below it (timing noise on a busy machine) is decided after the baseline."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16 * 14 * 14, 10)
    )
    x = torch.randn(1, 1, 16, 16)
    scan = placeholder_scan(pruning.group_channels(model, x), [0.5])
    with pytest.raises(ConfigError) as far:
        LatencyTarget(target=0.05, max_time_s=1.0)(model, x, scan)
    best = far.value.__cause__.best
    near = min(0.99, best * 0.9)
    ratios = LatencyTarget(target=near, max_time_s=1.0, max_ratio=0.8)(model, x, scan)  # no ConfigError
    assert set(ratios) == set(pruning.group_channels(model, x)) and all(0 <= r <= 0.8 for r in ratios.values())
