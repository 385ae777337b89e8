"""Knowledge distillation from the dense baseline while retraining."""

import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments.run.pipeline import run
from experiments.training.module import Classifier
from tests.experiments.conftest import FAST


def test_distillation_loss_is_hintons_kl():
    torch.manual_seed(0)
    teacher = nn.Linear(4, 3)
    student = nn.Linear(4, 3)
    module = Classifier(student, None, teacher=teacher, distill=0.7, temperature=3.0)
    x = torch.randn(8, 4)
    s, t = student(x), teacher(x)
    p_t = F.softmax(t / 3, 1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / 3, 1))).sum(1).mean() * 9
    torch.testing.assert_close(module.distillation_loss(s, x), expected)
    assert float(module.distillation_loss(t, x)) == pytest.approx(0.0, abs=1e-6)  # student == teacher


def test_teacher_is_frozen_in_eval_mode_and_not_part_of_the_module():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    before = copy.deepcopy(teacher.state_dict())
    student = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    module = Classifier(student, lambda p: torch.optim.SGD(p, lr=0.1), teacher=teacher, distill=0.5)
    assert not any(k.startswith("_teacher") for k in module.state_dict())  # not checkpointed
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=16))
    assert not teacher.training
    for key, value in teacher.state_dict().items():  # BN statistics included: never updated
        assert torch.equal(value, before[key]), key


def test_pipeline_retrains_with_distillation(compose_cfg):
    cfg = compose_cfg(*FAST, "strategy.retrain.distill=0.5", "strategy.retrain.temperature=2.0")
    row = run(cfg)
    assert row["status"] == "ok"
    assert row["config"]["strategy"]["retrain"]["distill"] == 0.5
