"""Retraining recipe options: label smoothing, best-validation selection, AdamW, gradual
pruning (Zhu & Gupta) and RigL-style mask regrowth, through the library and the pipeline."""

from functools import partial
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

import pruning
from experiments.checks import ConfigError
from experiments.data import SyntheticDataModule
from experiments.run.pipeline import run
from experiments.storage.results import read_rows
from experiments.training.module import Classifier
from tests.experiments.conftest import FAST


def test_label_smoothing_is_the_training_loss():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    module = Classifier(model, None, label_smoothing=0.2)
    expected = F.cross_entropy(model(x), y, label_smoothing=0.2)
    assert torch.allclose(module.training_loss((x, y))[0], expected)
    assert not torch.allclose(expected, F.cross_entropy(model(x), y))


class Snapshots(L.Callback):
    """The weights and the logged validation accuracy at the end of each training epoch
    (after that epoch's validation)."""

    def __init__(self) -> None:
        self.states, self.accs = [], []

    def on_train_epoch_end(self, trainer, module) -> None:
        self.states.append({k: v.clone() for k, v in module.model.state_dict().items()})
        self.accs.append(float(trainer.callback_metrics["val/acc"]))


def val_accuracy(model, dm) -> float:
    x, y = dm.split("val")
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_best_val_selection_restores_the_best_epoch():
    dm = SyntheticDataModule(n_train=512, n_test=64, val_size=64, batch_size=32, input_size=8, in_channels=1)
    dm.setup()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    # a large constant lr makes the validation accuracy jump between epochs
    module = Classifier(model, partial(torch.optim.SGD, lr=2.0), select_best=True)
    snaps = Snapshots()
    trainer = L.Trainer(
        max_epochs=6,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[snaps],
    )
    trainer.fit(module, datamodule=dm)  # with the default sanity check, which never counts as an epoch
    accs = snaps.accs
    best = max(range(len(accs)), key=lambda i: (accs[i], -i))  # the first epoch reaching the best
    assert len(accs) == 6 and len(set(accs)) > 1  # the epochs differ, so the choice matters
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, snaps.states[best][name]), name
    assert val_accuracy(model, dm) == pytest.approx(max(accs), abs=1 / 64)  # one near-tie sample at most


def test_regrow_moves_weights_at_constant_sparsity():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.1, 0.0, 0.0]]))
    layer.weight.grad = torch.tensor([[0.0, 0.0, 0.2, -3.0]])
    model = nn.Sequential(layer)
    masks = pruning.Masks({"0.weight": torch.tensor([[True, True, False, False]])})
    new = pruning.unstructured.regrow(masks, model, 0.5)  # one of two kept weights moves
    # the smallest kept weight (-0.1) is dropped, the pruned one with the largest |grad| grown
    assert new["0.weight"].tolist() == [[True, False, False, True]]
    assert masks["0.weight"].tolist() == [[True, True, False, False]]  # input unchanged
    assert pruning.unstructured.regrow(masks, model, 0.0)["0.weight"].tolist() == masks["0.weight"].tolist()
    layer.weight.grad = None  # no gradient: the mask stays
    assert pruning.unstructured.regrow(masks, model, 0.5)["0.weight"].tolist() == masks["0.weight"].tolist()
    with pytest.raises(ValueError, match="fraction"):
        pruning.unstructured.regrow(masks, model, 1.5)


def weight_strategy(compose_cfg, *overrides):
    cfg = compose_cfg("model=lenet300", "strategy=han_iterative", *overrides)
    return instantiate(cfg.strategy, _convert_="all")


def test_gradual_hook_prunes_along_the_cubic_schedule(compose_cfg):
    strategy = weight_strategy(
        compose_cfg, "strategy.schedule=gradual", "strategy.sparsity=0.8", "strategy.gradual_every=10"
    )
    model = nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 10))
    rt = SimpleNamespace(steps_per_epoch=lambda: 50)
    hook = strategy.gradual_hook(rt, epochs=2)  # 100 steps: events every 10 steps over the first 50
    seen = []
    for step in range(1, 101):
        hook(model)
        if strategy.masks is not None:
            seen.append((step, float(strategy.masks.sparsity().total)))
    assert seen[0][0] == 10  # the first mask at the first event
    by_step = dict(seen)
    expected = [pruning.schedules.sparsity_schedule(e, 5, 0.8, kind="cubic") for e in range(1, 6)]
    assert [by_step[10 * e] for e in range(1, 6)] == pytest.approx(expected, abs=0.01)
    assert by_step[100] == pytest.approx(0.8, abs=0.01)  # reached at 50% and then held
    assert all(a <= b + 1e-9 for (_, a), (_, b) in zip(seen, seen[1:]))


def test_regrow_hook_keeps_every_layers_count(compose_cfg):
    strategy = weight_strategy(compose_cfg, "strategy.regrow=0.3", "strategy.regrow_every=2")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 4))
    strategy.tighten(model, sparsity=0.7)
    before = strategy.masks.counts()
    first = strategy.masks["0.weight"].clone()
    hook = strategy.regrow_hook(SimpleNamespace(steps_per_epoch=lambda: 10), epochs=1)
    for _ in range(4):
        model(torch.randn(8, 20)).sum().backward()
        hook(model)
    assert strategy.masks.counts() == before
    assert not torch.equal(strategy.masks["0.weight"], first)


@pytest.mark.parametrize(
    "override, message",
    [
        ("strategy.retrain.label_smoothing=1.0", "label_smoothing"),
        ("strategy.retrain.select=best", "select"),
        ("strategy.regrow=2", "strategy.regrow"),
        ("strategy.gradual_every=0", "gradual_every"),
        ("strategy.gradual_until=0", "gradual_until"),
    ],
)
def test_bad_recipe_values_fail_before_training(compose_cfg, override, message):
    cfg = compose_cfg(*FAST, "model=lenet300", "strategy=han_iterative", override)
    with pytest.raises(ConfigError, match=message):
        run(cfg)


def test_gradual_rejects_quality_and_regrowth(compose_cfg):
    for extra in (["strategy.sparsity=null", "strategy.quality=1.0"], ["strategy.regrow=0.2"]):
        cfg = compose_cfg(*FAST, "model=lenet300", "strategy=han_iterative", "strategy.schedule=gradual", *extra)
        with pytest.raises(ConfigError, match="gradual"):
            run(cfg)


def test_a_gradual_adamw_run_through_the_pipeline(compose_cfg):
    cfg = compose_cfg(
        *FAST,
        "model=lenet300",
        "strategy=han_iterative",
        "strategy.sparsity=0.9",
        "strategy.schedule=gradual",
        "strategy.gradual_every=1",
        "strategy.rounds=2",
        "strategy.retrain.optimizer._target_=torch.optim.AdamW",
        "strategy.retrain.optimizer.lr=0.001",
        "~strategy.retrain.optimizer.momentum",
        "strategy.retrain.label_smoothing=0.1",
        "strategy.retrain.select=best_val",
    )
    row = run(cfg)
    m = row["metrics"]
    assert row["status"] == "ok"
    assert "pruned/acc" not in m  # it prunes while it trains: there is no point before retraining
    assert m["retrained/nonzero_params"] == pytest.approx(m["baseline/params"] * 0.1, rel=0.01)
    assert m["retrain/steps"] == 4  # rounds x epochs x 2 batches, one run
    assert row["parts"]["schedule"] == "gradual"
    assert row["parts"]["recipe"] == "adamw lr0.001 wd0.0001 1ep smooth0.1 best_val gradual/1"


def test_a_diverging_baseline_stops_the_run_and_is_not_cached(compose_cfg, tmp_path):
    cfg = compose_cfg(
        *FAST, "model=lenet300", "strategy=han_iterative", "baseline.epochs=3", "baseline.optimizer.lr=1e30"
    )
    with pytest.raises(FloatingPointError, match="training diverged.*baseline.optimizer.lr"):
        run(cfg)
    assert not list((tmp_path / ".cache" / "baselines").glob("*.pt"))  # nothing cached
    row = read_rows(tmp_path / "results")[-1]
    assert row["status"] == "failed" and row["error"]["phase"] == "baseline"
    assert row["error"]["type"] == "TrainingDivergedError"
