"""Each part's settings: read from the config once, checked as they are built, and enough on
their own to run the part (no config needed below the pipeline)."""

from functools import partial

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from experiments.checks import ConfigError
from experiments.data import SyntheticDataModule
from experiments.run.baseline import BaselineSettings, obtain_baseline
from experiments.run.deploy import DeploySettings
from experiments.run.latency import LatencySettings, compare_to_baseline
from experiments.run.pipeline import RunSettings
from experiments.training.context import (
    BaselineRecipe,
    MeasureSettings,
    Phase,
    RunContext,
    TrainerSettings,
    measure_model,
)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_the_default_config_gives_each_part_its_settings(compose_cfg, tmp_path):
    cfg = compose_cfg()
    s = RunSettings.from_config(cfg)
    assert s.seed == 0 and s.trainer.seed == 0
    assert s.measure == MeasureSettings(latency_batch_sizes=(1, 64), latency_repeats=20)
    assert s.latency == LatencySettings(compare=True, ci=0.03, max_time_s=10.0, batch_sizes=(1, 64))
    assert s.deploy == DeploySettings(batch_sizes=(1, 64), repeats=20)
    recipe = s.baseline.recipe
    assert (recipe.epochs, recipe.lr_schedule) == (2, "cosine") and recipe.optimizer.func is torch.optim.SGD
    assert s.baseline.reuse is True and s.baseline.checkpoint is None
    assert s.baseline.cache_dir == tmp_path / ".cache" / "baselines"
    assert s.trainer.trainer["_target_"] == "lightning.Trainer" and s.trainer.csv["name"] == "curves"
    assert s.trainer.wandb["group"] == "l1_oneshot"  # resolved
    assert s.trainer.hyperparams == OmegaConf.to_container(cfg, resolve=True)
    assert RunSettings.from_config(compose_cfg("logger=none")).trainer.csv is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("measure.latency_batch_sizes=[1,0]", r"measure.latency_batch_sizes\[1\]=0: must be an integer >= 1"),
        ("measure.latency_batch_sizes=8", r"measure.latency_batch_sizes=8: must be a list of integers >= 1"),
        ("measure.latency_repeats=0", r"measure.latency_repeats=0: must be an integer >= 1"),
        ("baseline.reuse=maybe", r"baseline.reuse='maybe': allowed values are True, False"),
        ("baseline.optimizer._target_=torch.optim.Nope", r"baseline.optimizer cannot be instantiated"),
        ("~baseline.optimizer._target_", r"baseline.optimizer must be an optimizer node with _target_"),
        ("deploy.opset=3", r"deploy.opset=3: must be an integer >= 7, or null"),
        ("measure.latency_ci=0", r"measure.latency_ci=0: must be a number in \(0, 1\)"),
    ],
)
def test_a_bad_value_is_refused_where_its_settings_are_built(compose_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        RunSettings.from_config(compose_cfg(override))


def test_measure_model_times_the_batch_sizes_it_is_given():
    x = torch.zeros(2, 1, 8, 8)
    metrics = measure_model(tiny_model(), x, MeasureSettings(latency_batch_sizes=(1, 3), latency_repeats=1))
    assert {"latency_b1_ms", "latency_b3_ms", "params", "macs", "compressed_bytes"} <= set(metrics)
    assert "latency_b64_ms" not in metrics


def test_a_run_context_from_settings_alone_trains_tests_and_counts_steps(tmp_path):
    dm = SyntheticDataModule(num_classes=3, in_channels=1, input_size=8, n_train=64, n_test=16, batch_size=16)
    dm.setup()
    trainer = {
        "_target_": "lightning.Trainer",
        "accelerator": "cpu",
        "limit_train_batches": 2,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    ctx = RunContext(TrainerSettings(seed=1, trainer=trainer), dm, tmp_path)
    assert ctx.wandb_logger is None and ctx.loggers("baseline") is False
    assert ctx.steps_per_epoch() == 2
    recipe = BaselineRecipe(epochs=1, lr_schedule="constant", optimizer=partial(torch.optim.SGD, lr=0.1))
    settings = BaselineSettings(recipe=recipe, cache_dir=tmp_path / "cache", key_config={"seed": 1}, reuse=False)
    phase = obtain_baseline(settings, MeasureSettings((1,), 1), tiny_model(), ctx, torch.zeros(2, 1, 8, 8))
    assert phase.metrics["reused"] is False and 0 <= phase.metrics["acc"] <= 1 and "latency_b1_ms" in phase.metrics
    assert (tmp_path / "cache" / f"{phase.key}.pt").exists()


def test_the_latency_comparison_off_adds_nothing():
    phases = {"baseline": Phase("baseline", {"latency_b1_ms": 1.0})}
    x = torch.zeros(1, 1, 8, 8)
    assert compare_to_baseline(tiny_model(), tiny_model(), x, LatencySettings(compare=False), phases, "x") == {}
    assert phases["baseline"].metrics == {"latency_b1_ms": 1.0}
