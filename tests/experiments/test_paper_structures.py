"""Li et al. 2017 Table 1: the presets' pruned architectures have the paper's MAC and
parameter reductions (conv + linear weights, the paper's counting rule) within 0.1 pp."""

import pytest
import torch
from hydra.utils import instantiate

import pruning
from experiments.strategies.plan import Runtime, execute

TABLE1 = {  # preset: (MACs before, MAC reduction %, params before, param reduction %)
    "li2017_vgg16_a": (3.13e8, 34.2, 1.5e7, 64.0),
    "li2017_resnet56_a": (1.25e8, 10.4, 8.5e5, 9.4),
    "li2017_resnet56_b": (1.25e8, 27.6, 8.5e5, 13.7),
    "li2017_resnet110_a": (2.53e8, 15.9, 1.72e6, 2.3),
    "li2017_resnet110_b": (2.53e8, 38.6, 1.72e6, 32.4),
}


@pytest.mark.parametrize("preset", sorted(TABLE1))
def test_pruned_structure_matches_table1(compose_cfg, preset):
    cfg = compose_cfg(f"experiment={preset}")
    model = instantiate(cfg.model, num_classes=10, in_channels=3, input_size=32)
    strategy = instantiate(cfg.strategy, _convert_="all")
    strategy.validate(model)
    x = torch.randn(1, 3, 32, 32)
    before = pruning.count(model, x)
    rt = Runtime(example=x, build_model=lambda: None, strategy=strategy, seed=cfg.seed, dry=True)
    execute(strategy.plan(model, rt), model, rt)  # the preset's plan, cutting for real, no training
    after = pruning.count(model, x)
    macs0, mac_red, params0, param_red = TABLE1[preset]
    assert before.macs == pytest.approx(macs0, rel=0.01)
    assert before.params == pytest.approx(params0, rel=0.02)
    assert 100 * (1 - after.macs / before.macs) == pytest.approx(mac_red, abs=0.1)
    assert 100 * (1 - after.params / before.params) == pytest.approx(param_red, abs=0.1)
    assert model.eval()(x).shape == (1, 10)
