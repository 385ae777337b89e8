"""Every config option composes, instantiates and validates; registries match conf/."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

import pruning
from experiments.checks import ConfigError
from experiments.run.pipeline import run
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


@pytest.mark.parametrize("dataset", [d for d in options("dataset") if d != "image_folder"])  # needs a root: see
def test_every_dataset_config_instantiates(compose_cfg, dataset):  # tests/experiments/test_image_folder.py
    dm = instantiate(compose_cfg(f"dataset={dataset}").dataset)
    assert dm.num_classes >= 10 and dm.in_channels in (1, 3)


@pytest.mark.parametrize("criterion", pruning.criteria.criterion_names())
def test_every_registered_criterion_is_accepted_by_name(compose_cfg, criterion):
    cfg = compose_cfg(*FAST, f"strategy.criterion={criterion}")
    model = instantiate(cfg.model, num_classes=10, in_channels=1, input_size=16)
    instantiate(cfg.strategy, _convert_="all").validate(model)


def test_unknown_criterion_lists_choices(compose_cfg):
    cfg = compose_cfg(*FAST, "strategy.criterion=l3")
    with pytest.raises(ConfigError, match="strategy.criterion='l3': allowed values are .*'l1'"):
        run(cfg)


# -- study designs: arms (conf/arm/) and the studies that sweep them ----------------------------
def study_arms(study: str) -> list[str]:
    from omegaconf import OmegaConf

    params = OmegaConf.load(CONF / "study" / f"{study}.yaml").get("hydra", {}).get("sweeper", {}).get("params", {})
    return str(params["arm"]).split(",") if "arm" in params else []


def test_every_study_sweeps_existing_arms_and_every_arm_is_in_a_study():
    studies = (
        "schedules",
        "criteria",
        "scratch",
        "sensitivity",
        "freeze",
        "greedy",
        "latency",
        "all",
        "operating_points",
    )
    used = {arm for study in studies for arm in study_arms(study)}
    assert used == set(options("arm")), (sorted(used - set(options("arm"))), sorted(set(options("arm")) - used))
    for study in studies:
        arms = study_arms(study)
        assert len(arms) == len(set(arms)) and "l1_oneshot" in arms, study


@pytest.mark.parametrize(
    "arm", [pytest.param(a, marks=pytest.mark.alone) if "latency" in a else a for a in options("arm")]
)
def test_every_arm_plans_on_vgg_small(compose_cfg, arm):
    from tests.experiments.test_strategies import planned

    _, steps, strategy = planned(compose_cfg, f"arm={arm}", "baseline.epochs=4", size=28)  # Fashion-MNIST's size
    assert steps and strategy.parts()["kind"] == "filter"


@pytest.mark.parametrize(
    "per_step, oneshot", [("l1_iterative-per_step", "l1_oneshot-e3x"), ("l1_layerwise-per_step", "l1_oneshot-e6x")]
)
@pytest.mark.parametrize("ratio", ["-r03", "", "-r07"])
def test_per_step_arms_have_a_oneshot_arm_with_the_same_total(compose_cfg, per_step, oneshot, ratio):
    from tests.experiments.test_strategies import planned, shapes

    a, _, sa = planned(compose_cfg, f"arm={per_step}{ratio}")
    b, _, sb = planned(compose_cfg, f"arm={oneshot}{ratio}")
    assert sa.parts()["epochs_budget"] == sb.parts()["epochs_budget"] > sa.parts()["retrain_epochs"]
    assert shapes(a) == shapes(b) and sa.parts()["ratio"] == sb.parts()["ratio"]


def test_scratch_pair_differs_only_in_the_initial_weights(compose_cfg):
    from tests.experiments.test_strategies import planned

    _, steps, strategy = planned(compose_cfg, "arm=l1_oneshot-e_baseline-lr_baseline", "baseline.epochs=4")
    finetune = strategy.parts()
    scratch = planned(compose_cfg, "arm=l1_scratch_e", "baseline.epochs=4")[2].parts()
    assert (finetune["epochs_budget"], finetune["retrain_lr"], finetune["optimizer"]) == ("baseline", 0.05, "SGD")
    assert strategy.retrain.epochs == 4 and steps[-2].steps == 4  # the baseline's 4 epochs (1 step each, dry)
    assert (scratch["retrain_lr"], scratch["optimizer"]) == (0.05, "SGD")
