"""baseline.epochs=auto: the plateau rule, the callback that applies it, the row and the cache key."""

import lightning as L
import pytest
import torch
from torch import nn

from experiments.checks import ConfigError
from experiments.run.baseline import BaselineSettings, baseline_key
from experiments.run.pipeline import run
from experiments.storage.results import read_rows
from experiments.training.plateau import PlateauRule, ValidationCurve
from tests.experiments.conftest import FAST

# a scripted validation curve: gains 35, 15, 5.2, 0.25, 0.16 then 0.07 pp over the last 3 epochs
CURVE = [0.5, 0.7, 0.8, 0.85, 0.851, 0.852, 0.8525, 0.8526, 0.8527, 0.8528, 0.8529]


def test_the_rule_is_reached_at_the_first_epoch_whose_window_gains_less_than_pp():
    rule = PlateauRule(pp=0.1, window=3, max_epochs=30)
    stops = [n for n in range(1, len(CURVE) + 1) if rule.reached(CURVE[:n])]
    assert stops[0] == 9  # best of epochs 7-9 (85.27%) - best of 1-6 (85.20%) = 0.07 pp < 0.1
    assert rule.gain_pp(CURVE[:8]) == pytest.approx(0.16)  # epoch 8 still gains 0.16 pp: not yet
    assert rule.gain_pp(CURVE[:3]) is None and not rule.reached(CURVE[:3])  # needs more than the window
    # the running best: a dip then a recovery to the old best is no gain, a single noisy low epoch no plateau
    assert PlateauRule(0.1, 2).gain_pp([0.5, 0.9, 0.7, 0.9]) == pytest.approx(0.0)
    verdict = rule.verdict(CURVE[:9])
    assert verdict["reached"] and verdict["epoch"] == 9 and "plateau reached at epoch 9" in verdict["text"]
    rising = rule.verdict(CURVE[:6])
    assert not rising["reached"] and rising["gain_pp"] == pytest.approx(5.2)
    assert "still rising by 5.20 pp over the last 3 epochs" in rising["text"]


class Scripted(L.LightningModule):
    """Logs the scripted validation accuracy of the current epoch; trains a single weight."""

    def __init__(self, curve):
        super().__init__()
        self.curve = curve
        self.w = nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - 1).pow(2).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", self.curve[min(self.current_epoch, len(self.curve) - 1)])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return [torch.zeros(1)] * 2

    def val_dataloader(self):
        return [torch.zeros(1)]


def fit_scripted(curve, rule):
    recorder = ValidationCurve(rule)
    trainer = L.Trainer(
        max_epochs=rule.max_epochs,
        callbacks=[recorder],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Scripted(curve))
    return recorder


def test_training_stops_at_the_plateau_epoch_and_at_the_cap_otherwise():
    stopped = fit_scripted(CURVE, PlateauRule(pp=0.1, window=3, max_epochs=30))
    assert stopped.epochs == 9 and stopped.curve == pytest.approx(CURVE[:9])
    capped = fit_scripted(CURVE, PlateauRule(pp=0.1, window=3, max_epochs=7))  # 0.25 pp gain at epoch 7
    assert capped.epochs == 7 and len(capped.curve) == 7
    assert not PlateauRule(0.1, 3, 7).verdict(capped.curve)["reached"]
    recorded = fit_scripted([0.1, 0.2, 0.3], PlateauRule(pp=0.1, window=1, max_epochs=3))
    assert recorded.epochs == 3 and recorded.curve == pytest.approx([0.1, 0.2, 0.3])  # rising: the cap


AUTO = [o for o in FAST if not o.startswith("baseline.epochs")] + ["baseline.epochs=auto", "threads=1"]


def test_an_auto_baseline_row_records_its_curve_and_verdict_and_scratch_e_repeats_its_epochs(compose_cfg, tmp_path):
    # pp = 1000: any curve is flat by it, so the rule stops at the first epoch it can judge (window + 1 = 2)
    rule = ["baseline.max_epochs=4", "baseline.plateau_window=1", "baseline.plateau_pp=1000"]
    row = run(compose_cfg(*AUTO, *rule, "strategy=l1_scratch_e"))
    training = row["baseline_training"]
    assert training["epochs"] == "auto" and training["epochs_trained"] == 2 and len(training["val_acc"]) == 2
    assert training["rule"] == {"plateau_pp": 1000.0, "plateau_window": 1, "max_epochs": 4}
    assert training["lr_schedule_epochs"] == 4  # the schedule spans the cap
    assert training["verdict"]["reached"] and training["verdict"]["epoch"] == 2
    assert row["parts"]["baseline_epochs"] == "auto"
    assert row["metrics"]["retrain/epochs"] == 2  # Scratch-E: the epochs the baseline trained
    again = run(compose_cfg(*AUTO, *rule))  # the cached baseline brings its curve along
    assert again["metrics"]["baseline/reused"] is True
    assert again["baseline_training"]["val_acc"] == training["val_acc"]
    assert read_rows(tmp_path / "results")[0]["baseline_training"]["verdict"]["epoch"] == 2


def test_a_fixed_epoch_row_reports_the_rule_on_its_curve(compose_cfg):
    row = run(compose_cfg(*FAST, "threads=1", "baseline.epochs=2", "baseline.plateau_window=1"))
    training = row["baseline_training"]
    assert training["epochs"] == 2 and training["epochs_trained"] == 2 and len(training["val_acc"]) == 2
    assert training["rule"]["max_epochs"] is None and training["verdict"]["window"] == 1
    assert row["parts"]["baseline_epochs"] == 2


def test_the_cache_key_of_a_fixed_baseline_ignores_the_rule_and_an_auto_key_holds_it(compose_cfg):
    def key(*overrides):
        return baseline_key(BaselineSettings.from_config(compose_cfg(*FAST, *overrides)))

    fixed = key()
    assert key("baseline.plateau_pp=0.5", "baseline.max_epochs=9") == fixed  # a fixed baseline: the same weights
    cfg = compose_cfg(*FAST)
    for k in ("plateau_pp", "plateau_window", "max_epochs"):
        assert k not in BaselineSettings.from_config(cfg).key_config["baseline"]
    auto = key("baseline.epochs=auto")
    assert auto != fixed and key("baseline.epochs=auto", "baseline.plateau_pp=0.2") != auto
    assert key("baseline.epochs=auto", "baseline.max_epochs=20") != auto


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("baseline.epochs=some", r"baseline.epochs='some': must be an integer >= 0 or auto"),
        ("baseline.plateau_pp=0", r"baseline.plateau_pp=0: must be a number > 0"),
        ("baseline.plateau_window=0", r"baseline.plateau_window=0: must be an integer >= 1"),
        ("baseline.max_epochs=3", r"baseline.max_epochs=3: must be an integer >= 4 \(the rule compares the last"),
        ("+trainer.check_val_every_n_epoch=2", r"trainer.check_val_every_n_epoch=2, set it to 1"),
        ("trainer.limit_val_batches=0", r"trainer.limit_val_batches=0 runs no validation"),
    ],
)
def test_bad_plateau_settings_are_refused_before_training(compose_cfg, tmp_path, override, message):
    overrides = [o for o in AUTO if not o.startswith(override.lstrip("+").split("=")[0])]
    if override.startswith("baseline.epochs"):
        overrides = [o for o in overrides if o != "baseline.epochs=auto"]
    with pytest.raises(ConfigError, match=message):
        run(compose_cfg(*overrides, override))
    assert not (tmp_path / ".cache").exists(), "training started before validation"
