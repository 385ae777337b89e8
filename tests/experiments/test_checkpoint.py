"""Trained weights from files: baseline.checkpoint and model=tv model.weights, down to a whole run."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from omegaconf import OmegaConf

from experiments.models import torchvision_model
from experiments.models.checkpoint import CheckpointError, load_weights, read_state_dict
from tests.experiments.test_image_folder import make_images


def resnet18(num_classes: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=num_classes)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_plain_lightning_and_wrapped_files_load_the_same_weights(tmp_path):
    source = resnet18(seed=1)
    state = source.state_dict()
    torch.save(state, tmp_path / "plain.pt")
    lightning = {
        "state_dict": {**{f"model.{k}": v for k, v in state.items()}},
        "pytorch-lightning_version": "2.5.0",
        "epoch": 3,
    }
    torch.save(lightning, tmp_path / "run.ckpt")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")
    torch.save({"state_dict": state, "metrics": {"train_wall_s": 1.0}}, tmp_path / "cache_entry.pt")
    for name, fmt in (
        ("plain.pt", "state_dict"),
        ("run.ckpt", "lightning"),
        ("ddp.pt", "state_dict"),
        ("cache_entry.pt", "wrapped state_dict"),
    ):
        target = resnet18(seed=2)
        assert not same_weights(target, source)
        info = load_weights(target, tmp_path / name, "baseline.checkpoint")
        assert same_weights(target, source), name
        assert info["format"] == fmt
        assert info["sha256"] == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()


def test_a_file_that_does_not_fit_names_the_keys_and_the_path_and_changes_nothing(tmp_path):
    state = resnet18(num_classes=10).state_dict()
    state.pop("layer1.0.bn1.running_mean")
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "other.pt")
    target = resnet18(num_classes=3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_weights(target, tmp_path / "other.pt", "baseline.checkpoint")
    message = str(err.value)
    assert f"baseline.checkpoint='{tmp_path / 'other.pt'}'" in message
    assert "missing keys (1): layer1.0.bn1.running_mean" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "shape mismatches (2): fc.weight: file [10, 512], model [3, 512], fc.bias: file [10], model [3]" in message
    assert "classifier 'fc' has 10 outputs but the dataset has 3 classes" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_missing_corrupt_and_unsafe_files_are_clear_errors(tmp_path):
    model = resnet18()
    with pytest.raises(CheckpointError, match=r"baseline.checkpoint='/nope.pt': no such file"):
        load_weights(model, "/nope.pt", "baseline.checkpoint")
    torch.save(model.state_dict(), tmp_path / "full.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"cut.pt'.*cannot be loaded with torch.load\(weights_only=True\)"):
        read_state_dict(tmp_path / "cut.pt", "baseline.checkpoint")
    torch.save({"model": model}, tmp_path / "pickled_module.pt")  # a whole nn.Module: not weights only
    with pytest.raises(CheckpointError, match=r"torch.save\(model.state_dict\(\), PATH\)"):
        read_state_dict(tmp_path / "pickled_module.pt", "model.weights")
    torch.save({"lr": 0.1}, tmp_path / "hparams.pt")
    with pytest.raises(CheckpointError, match=r"not a state dict of tensors \(lr are not tensors\)"):
        read_state_dict(tmp_path / "hparams.pt", "baseline.checkpoint")


def test_tv_model_weights_load_strictly_and_key_the_cache_by_content(tmp_path, compose_cfg):
    source = resnet18(num_classes=4, seed=3)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    built = torchvision_model(num_classes=4, in_channels=3, input_size=32, weights=str(tmp_path / "r18.pth"))
    assert same_weights(built, source)
    with pytest.raises(CheckpointError, match=r"model.weights=.*classifier 'fc' has 4 outputs but the dataset has 10"):
        torchvision_model(num_classes=10, in_channels=3, input_size=32, weights=str(tmp_path / "r18.pth"))
    from experiments.run.baseline import BaselineSettings, baseline_key_parts

    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "same.pth").write_bytes((tmp_path / "r18.pth").read_bytes())
    keys = [
        baseline_key_parts(BaselineSettings.from_config(compose_cfg("model=tv", f"model.weights={path}")))["model"]
        for path in (tmp_path / "r18.pth", tmp_path / "copy" / "same.pth")
    ]
    assert keys[0] == keys[1] == {"name": "resnet18", "weights": {"sha256": hashlib.sha256(
        (tmp_path / "r18.pth").read_bytes()).hexdigest()}, "_target_": "experiments.models.torchvision_model"}  # fmt: skip
    # unset options leave the key as it was before they existed
    plain = baseline_key_parts(BaselineSettings.from_config(compose_cfg("model=tv")))
    assert "weights" not in plain["model"] and "checkpoint" not in plain["baseline"]


def evaluate(model: torch.nn.Module, dm) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on the test split, by hand."""
    model.eval()
    correct, loss, n = 0, 0.0, 0
    with torch.no_grad():
        for x, y in dm.test_dataloader():
            logits = model(x)
            correct += int((logits.argmax(1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            n += len(y)
    return correct / n, loss / n


def test_one_run_prunes_fine_tunes_and_measures_a_resnet18_checkpoint_on_an_image_folder(compose_cfg, tmp_path):
    """The whole pipeline from a user's image folder and a torchvision resnet18 state dict."""
    from hydra.utils import instantiate

    from experiments.run.pipeline import run

    make_images(tmp_path / "imgs" / "train", per_class=8)
    make_images(tmp_path / "imgs" / "val", per_class=3, seed=1)
    checkpoint = tmp_path / "resnet18.pth"
    torch.save(resnet18(seed=4).state_dict(), checkpoint)
    cfg = compose_cfg(
        "dataset=image_folder",
        f"dataset.root={tmp_path}/imgs",
        "dataset.image_size=32",
        "dataset.num_workers=0",
        "dataset.batch_size=8",
        "model=tv",
        "model.name=resnet18",
        f"baseline.checkpoint={checkpoint}",
        "strategy.ratio=0.5",
        "strategy.retrain.epochs=1",
        "trainer.enable_progress_bar=false",
        "logger=[csv]",
        "measure.latency_repeats=2",
        "measure.latency_max_time_s=2",
        "measure.latency_batch_sizes=[1]",
    )
    row = run(cfg)
    m = row["metrics"]
    # the baseline is the checkpoint, evaluated and not trained
    dm = instantiate(cfg.dataset)
    reference = resnet18(seed=4)
    acc, loss = evaluate(reference, dm)
    assert m["baseline/acc"] == pytest.approx(acc) and m["baseline/loss"] == pytest.approx(loss, rel=1e-5)
    assert m["baseline/wall_s"] == 0.0 and m["baseline/reused"] is False
    assert row["baseline_source"]["from"] == "checkpoint"
    assert row["baseline_source"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert not (tmp_path / "out" / "curves" / "baseline").exists()  # no training curve: nothing trained
    assert not list((tmp_path / ".cache" / "baselines").glob("*.pt"))  # and nothing cached
    # pruned, fine-tuned and measured
    assert m["pruned/params"] < m["baseline/params"] and m["retrained/params"] == m["pruned/params"]
    assert m["ratio/params"] == pytest.approx(m["retrained/params"] / m["baseline/params"]) and m["ratio/params"] < 0.5
    assert m["retrain/steps"] == 3 and math.isfinite(m["retrained/loss"])
    assert row["data"]["images"] == {"train": 22, "val": 2, "test": 9} and row["data"]["classes"] == 3
    assert row["data_source"] == str((tmp_path / "imgs").resolve()) and row["status"] == "ok"
    assert OmegaConf.to_container(cfg.baseline)["checkpoint"] == str(checkpoint)


def test_a_checkpoint_saved_by_lightning_from_our_classifier_loads(tmp_path):
    import functools

    import lightning as L

    from experiments.data import SyntheticDataModule
    from experiments.training.module import Classifier

    dm = SyntheticDataModule(num_classes=3, in_channels=1, input_size=8, n_train=64, n_test=16, batch_size=16)
    torch.manual_seed(0)
    trained = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    module = Classifier(trained, functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9), "cosine")
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, default_root_dir=str(tmp_path), accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    torch.manual_seed(1)
    fresh = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    assert not same_weights(fresh, trained)
    assert load_weights(fresh, tmp_path / "last.ckpt", "baseline.checkpoint")["format"] == "lightning"
    assert same_weights(fresh, trained)
