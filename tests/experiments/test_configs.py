"""Every config option composes, instantiates and validates; registries match conf/."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

import pruning
from experiments.run.pipeline import run
from experiments.run.validation import ConfigError
from tests.experiments.conftest import FAST

CONF = Path(__file__).resolve().parents[2] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("strategy", options("strategy"))
def test_every_strategy_validates_on_a_small_model(compose_cfg, strategy):
    model_name = "lenet300" if strategy in ("han_iterative", "deep_compression") else "lenet5"
    cfg = compose_cfg(*FAST, f"strategy={strategy}", f"model={model_name}")
    model = instantiate(cfg.model, num_classes=10, in_channels=1, input_size=16)
    built = instantiate(cfg.strategy, _convert_="all")
    built.validate(model)
    assert built.name == strategy


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_preset_composes(compose_cfg, experiment):
    cfg = compose_cfg(f"experiment={experiment}")
    assert cfg.strategy.name and cfg.model.name


@pytest.mark.parametrize("dataset", options("dataset"))
def test_every_dataset_config_instantiates(compose_cfg, dataset):
    dm = instantiate(compose_cfg(f"dataset={dataset}").dataset)
    assert dm.num_classes >= 10 and dm.in_channels in (1, 3)


@pytest.mark.parametrize("criterion", pruning.criterion_names())
def test_every_registered_criterion_is_accepted_by_name(compose_cfg, criterion):
    cfg = compose_cfg(*FAST, f"strategy.criterion={criterion}")
    model = instantiate(cfg.model, num_classes=10, in_channels=1, input_size=16)
    instantiate(cfg.strategy, _convert_="all").validate(model)


def test_unknown_criterion_lists_choices(compose_cfg):
    cfg = compose_cfg(*FAST, "strategy.criterion=l3")
    with pytest.raises(ConfigError, match="strategy.criterion='l3': allowed values are .*'l1'"):
        run(cfg)
