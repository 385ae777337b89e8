"""Learning-rate rewinding: retraining replays the baseline's own lr schedule from the rewind epoch."""

import functools

import pytest
import torch
from torch import nn

from experiments.checks import ConfigError
from experiments.data import SyntheticDataModule
from experiments.run.pipeline import run
from experiments.strategies.parts import Retrain
from experiments.strategies.plan import Runtime, Train, rewind_start
from experiments.training.context import BaselineRecipe, RunContext, TrainerSettings
from experiments.training.module import Classifier, lr_factor
from tests.experiments.conftest import FAST

STEPS_PER_EPOCH = 3


class RecordingSGD(torch.optim.SGD):
    """SGD that records the learning rate of every step it takes."""

    def __init__(self, params, lrs, **kwargs):
        super().__init__(params, **kwargs)
        self.lrs = lrs

    def step(self, closure=None):
        self.lrs.append(self.param_groups[0]["lr"])
        return super().step(closure)


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8 * 8, 10))


def context(tmp_path):
    datamodule = SyntheticDataModule(input_size=8, n_train=256, n_test=64, batch_size=32)
    datamodule.setup()
    trainer = {
        "_target_": "lightning.Trainer",
        "accelerator": "cpu",
        "devices": 1,
        "limit_train_batches": STEPS_PER_EPOCH,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
    }
    return RunContext(TrainerSettings(seed=0, trainer=trainer), datamodule, tmp_path)


@pytest.mark.parametrize("schedule", ["cosine", "multistep"])
def test_rewinding_replays_the_baseline_lrs_from_the_rewind_epoch(tmp_path, schedule):
    ctx = context(tmp_path)
    baseline_lrs, rewind_lrs, finetune_lrs = [], [], []
    recipe = BaselineRecipe(
        epochs=5, lr_schedule=schedule, optimizer=functools.partial(RecordingSGD, lrs=baseline_lrs, lr=0.1)
    )
    model = tiny()
    ctx.fit(Classifier(model, recipe.optimizer, recipe.lr_schedule), "baseline", recipe.epochs)
    assert len(baseline_lrs) == 5 * STEPS_PER_EPOCH
    replayed = BaselineRecipe(5, schedule, functools.partial(RecordingSGD, lrs=rewind_lrs, lr=0.1))
    rt = Runtime(example=torch.zeros(2, 1, 8, 8), build_model=tiny, strategy=None, seed=0, baseline=replayed, ctx=ctx)
    fine_tuning = functools.partial(RecordingSGD, lrs=finetune_lrs, lr=0.01)  # what rewinding ignores
    Train("retrain", Retrain(epochs=2, optimizer=fine_tuning, lr_schedule="rewind", rewind_epoch=1)).run(model, rt)
    # epochs 2 and 3 of the baseline (steps 3..8), step by step, with the baseline's lr and nothing of the fine-tuning's
    assert rewind_lrs == pytest.approx(baseline_lrs[3:9], rel=1e-12) and finetune_lrs == []
    assert rewind_lrs == pytest.approx([0.1 * lr_factor(schedule, s, 15) for s in range(3, 9)], rel=1e-12)
    rewind_lrs.clear()
    Train("retrain", Retrain(epochs=2, optimizer=fine_tuning, lr_schedule="rewind")).run(model, rt)
    assert rewind_lrs == pytest.approx(baseline_lrs[9:15], rel=1e-12)  # default: the baseline's last 2 epochs
    assert rt.totals["retrain_epochs"] == 4


def test_an_auto_baseline_is_replayed_on_its_schedule_over_the_cap():
    recipe = BaselineRecipe(epochs=30, lr_schedule="cosine", optimizer=None, plateau=object()).trained(7)
    assert (recipe.epochs, recipe.schedule_length) == (7, 30)
    assert rewind_start(Retrain(epochs=2, lr_schedule="rewind"), recipe) == 5  # the 2 epochs it trained last
    assert rewind_start(Retrain(epochs=2, lr_schedule="rewind", rewind_epoch=28), recipe) == 28


def test_rewind_values_are_checked():
    recipe = BaselineRecipe(epochs=4, lr_schedule="cosine", optimizer=None)
    with pytest.raises(ConfigError, match=r"strategy.retrain.rewind_epoch=3: replaying 2 epoch\(s\) from epoch 3"):
        rewind_start(Retrain(epochs=2, lr_schedule="rewind", rewind_epoch=3), recipe)
    with pytest.raises(ConfigError, match=r"rewind_epoch=None: replaying 5 epoch\(s\) from epoch -1"):
        rewind_start(Retrain(epochs=5, lr_schedule="rewind"), recipe)
    with pytest.raises(
        ConfigError, match=r"strategy.retrain.rewind_epoch=1 is read only with strategy.retrain.lr_schedule=rewind"
    ):
        Retrain(epochs=2, lr_schedule="cosine", rewind_epoch=1, optimizer=torch.optim.SGD).validate()
    with pytest.raises(ConfigError, match=r"strategy.retrain.rewind_epoch=-1: must be an integer >= 0"):
        Retrain(epochs=2, lr_schedule="rewind", rewind_epoch=-1).validate()
    Retrain(epochs=2, lr_schedule="rewind").validate()  # no fine-tuning optimizer needed: the baseline's is used


def test_a_rewind_run_is_refused_before_training_and_runs_end_to_end(compose_cfg, tmp_path):
    fast = [o for o in FAST if not o.startswith(("baseline.epochs", "strategy.retrain.epochs"))] + ["threads=1"]
    cfg = compose_cfg(
        *fast,
        "baseline.epochs=2",
        "strategy.retrain.epochs=1",
        "arm=l1_oneshot-rewind",
        "strategy.retrain.rewind_epoch=2",
    )
    with pytest.raises(ConfigError, match="rewind_epoch=2: replaying 1 epoch"):
        run(cfg)
    assert not (tmp_path / ".cache").exists(), "training started before validation"
    row = run(compose_cfg(*fast, "baseline.epochs=2", "strategy.retrain.epochs=1", "arm=l1_oneshot-rewind"))
    parts = row["parts"]
    assert parts["lr_schedule"] == "rewind" and parts["retrain_lr"] == 0.05  # the baseline's optimizer
    assert row["metrics"]["retrain/epochs"] == 1
    assert row["metrics"]["retrain/rewind_epoch"] == 1 and row["metrics"]["baseline/epochs"] == 2  # its last epoch
