"""The L5-skip arms remove at least their uniform arm's MACs (``strategy.match=macs``), whichever groups the scan spares."""

import itertools

import pytest
import torch

import pruning
from experiments.strategies.ratio_policy import ScanTable
from tests.experiments.test_strategies import dry_execute, planned

SIZE = 28  # Fashion-MNIST's images: the study's vgg_small


def known_scan(groups: list[str], sensitive: tuple[str, ...]) -> ScanTable:
    """A scan that ranks ``sensitive`` first (they lose far more accuracy than the others)."""
    rows = [
        {"group": g, "ratio": r, "kept": 0, "channels": 0, "metric": 0.9 - (0.2 if g in sensitive else 0.02) * r}
        for g in groups
        for r in (0.25, 0.5, 0.75)
    ]
    return ScanTable(0.9, rows)


def spared_macs(cfg, sensitive: tuple[str, ...]) -> tuple[int, list[str]]:
    """(MACs of vgg_small as the skip strategy of ``cfg`` plans it when the scan ranks ``sensitive`` first, the
    groups spared)."""

    def known(rt, model, x):
        rt.scan = known_scan(list(pruning.group_channels(model, x)), sensitive)

    model, _, strategy, x = dry_execute(cfg, 1, SIZE, prepare=known)
    return pruning.count(model, x).macs, list(strategy.spared)


@pytest.mark.parametrize(
    "arm, uniform, k",
    [
        ("l1_skip_sensitive", "l1_oneshot", 1),
        pytest.param("l1_skip_sensitive-k2-r03", "l1_oneshot-r03", 2, marks=pytest.mark.slow),  # 15 choices
    ],
)
def test_the_skip_arm_keeps_no_more_macs_than_uniform_whichever_groups_it_spares(compose_cfg, arm, uniform, k):
    x = torch.randn(2, 1, SIZE, SIZE)
    uniform_model = planned(compose_cfg, f"arm={uniform}", size=SIZE)[0]
    uniform_macs = pruning.count(uniform_model, x).macs
    dense_macs = pruning.count(planned(compose_cfg, f"arm={uniform}", "strategy.ratio=0.01", size=SIZE)[0], x).macs
    groups = list(pruning.group_channels(uniform_model, x))
    vgg = ("dataset=synthetic", f"dataset.input_size={SIZE}", "dataset.in_channels=1", f"arm={arm}")
    cfg, nearest = compose_cfg(*vgg), compose_cfg(*vgg, "strategy.match=null")
    assert cfg.strategy.match == "macs"
    closest_kept_more = False
    for sensitive in itertools.combinations(groups, k):
        macs, spared = spared_macs(cfg, sensitive)
        assert sorted(spared) == sorted(sensitive)
        assert macs <= uniform_macs, (sensitive, macs, uniform_macs)
        assert uniform_macs - macs <= 0.005 * dense_macs  # and hardly below: the same operating point
        if k == 1:
            closest_kept_more |= spared_macs(nearest, sensitive)[0] > uniform_macs  # the nearest MACs, either side
    if k == 1:
        assert closest_kept_more  # what L5-skip compared before: a spared model with more MACs than uniform
