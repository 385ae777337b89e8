"""The LightningModule's written-out training step against a plain PyTorch loop."""

import copy
from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments.data import TensorBatches
from experiments.training.module import Classifier, TrainingDivergedError


def _trainer(epochs: int = 1) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=3,
    )


def test_training_matches_a_plain_loop_bit_for_bit():
    torch.manual_seed(0)
    x, y = torch.randn(200, 12), torch.randint(0, 4, (200,))
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    reference = copy.deepcopy(model)
    optimizer = partial(torch.optim.SGD, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)

    seen = []

    class Recording(Classifier):
        def training_step(self, batch, batch_idx):
            seen.append(batch)
            return super().training_step(batch, batch_idx)

    _trainer(epochs=2).fit(Recording(model, optimizer), train_dataloaders=TensorBatches(x, y, 32, shuffle=True, seed=3))

    assert len(seen) == 14  # 7 batches x 2 epochs
    opt = optimizer(reference.parameters())
    for xb, yb in seen:
        loss = F.cross_entropy(reference(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_batches_move_as_tensor_pairs_and_other_collections_through_lightning():
    module = Classifier(nn.Linear(2, 2), None)
    cpu = torch.device("cpu")
    x, y = torch.randn(3, 2), torch.tensor([0, 1, 0])
    pair = module.transfer_batch_to_device((x, y), cpu, 0)
    assert type(pair) is tuple and pair[0] is x and pair[1] is y
    assert type(module.transfer_batch_to_device([x, y], cpu, 0)) is list
    moved = module.transfer_batch_to_device({"x": x, "y": y}, cpu, 0)  # not a pair: Lightning's walk
    assert set(moved) == {"x", "y"} and torch.equal(moved["x"], x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_training_naming_the_step(bad):
    x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.bias[0] = bad
    module = Classifier(model, partial(torch.optim.SGD, lr=0.1))
    with pytest.raises(TrainingDivergedError, match=r"at step 1 \(epoch 1\)"):
        _trainer().fit(module, train_dataloaders=TensorBatches(x, y, 16, shuffle=False))
