"""Stochastic weight averaging as the last retraining phase of connection pruning."""

import lightning as L
import pytest
import torch
from torch import nn

import pruning
from experiments.checks import ConfigError
from experiments.run.pipeline import run
from experiments.strategies.plan import refresh_batchnorm
from experiments.training.module import Classifier
from tests.experiments.conftest import FAST


class EpochSnapshots(L.Callback):
    """Copies of the model's state at the end of each training epoch, taken before averaging."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer, module) -> None:
        self.states.append({k: v.detach().clone() for k, v in module.model.state_dict().items()})


def test_average_is_the_mean_of_epoch_end_weights_and_keeps_masked_zeros():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    masks = pruning.prune_weights(model, sparsity=0.75)
    module = Classifier(
        model, lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9), average=True, after_step=[masks.apply_]
    )
    snapshots = EpochSnapshots()
    data = torch.utils.data.TensorDataset(torch.randn(96, 6), torch.randint(0, 3, (96,)))
    trainer = L.Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[snapshots],
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=16))
    assert len(snapshots.states) == 3
    for name, value in model.state_dict().items():
        expected = torch.stack([s[name] for s in snapshots.states]).mean(0)
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
        assert not torch.equal(value, snapshots.states[-1][name])  # really an average, not the last epoch
    for name, mask in masks.items():  # pruned weights are exactly zero in the average too
        assert torch.count_nonzero(dict(model.named_parameters())[name][~mask]) == 0
    assert masks.sparsity().total == pytest.approx(0.75, abs=0.01)


def test_refresh_batchnorm_recomputes_running_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    x = torch.randn(256, 4) * 3 + 1

    class Data:
        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(256)), batch_size=64)

    refresh_batchnorm(model, Data())
    with torch.no_grad():
        feats = model[0](x)
    torch.testing.assert_close(model[1].running_mean, feats.mean(0), rtol=1e-4, atol=1e-4)
    assert not model.training


def test_pipeline_averages_after_the_rounds(compose_cfg, tmp_path):
    cfg = compose_cfg(
        *FAST,
        "model=lenet300",
        "strategy=han_iterative",
        "strategy.sparsity=0.9",
        "strategy.rounds=1",
        "strategy.average={_target_: experiments.strategies.parts.Retrain, epochs: 2, "
        "lr_schedule: constant, optimizer: {_target_: torch.optim.SGD, _partial_: true, lr: 0.01}}",
    )
    row = run(cfg)
    m = row["metrics"]
    assert m["retrained/nonzero_params"] == pytest.approx(0.1 * m["baseline/params"], rel=0.01)
    assert (tmp_path / "out" / "curves" / "average" / "metrics.csv").exists()  # the phase ran, with its curves


def test_average_bad_values(compose_cfg):
    cfg = compose_cfg(
        *FAST,
        "model=lenet300",
        "strategy=han_iterative",
        "strategy.average={_target_: experiments.strategies.parts.Retrain, epochs: -1}",
    )
    with pytest.raises(ConfigError, match="strategy.average.epochs=-1"):
        run(cfg)
