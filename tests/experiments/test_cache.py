"""The baseline cache: verified on load, keyed by what determines the weights, trained once."""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import signal
import struct
import threading
import time
import zipfile
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from experiments.run.baseline import BaselineSettings, architecture_fingerprint, baseline_key, obtain_baseline
from experiments.storage.cache import BaselineCache
from experiments.training.context import MeasureSettings, RunContext, TrainerSettings
from tests.experiments.conftest import FAST

LOG = "experiments.storage.cache"


def build(cfg):
    """Datamodule, freshly initialised model, example batch and context, as a run builds them."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.dataset)
    datamodule.setup()
    model = instantiate(
        cfg.model,
        num_classes=datamodule.num_classes,
        in_channels=datamodule.in_channels,
        input_size=datamodule.input_size,
    )
    ctx = RunContext(TrainerSettings.from_config(cfg), datamodule, Path(cfg.paths.output_dir))
    return datamodule, model, datamodule.example_inputs(2).cpu(), ctx


def baseline_cfg(compose_cfg):
    return compose_cfg(*FAST, "logger=none", "measure.latency_batch_sizes=[1]")


def baseline(cfg, model, ctx, example):
    """The baseline phase as the pipeline obtains it, from the settings it reads out of ``cfg``."""
    return obtain_baseline(BaselineSettings.from_config(cfg), MeasureSettings.from_config(cfg), model, ctx, example)


def key_of(cfg, model, identity) -> str:
    return baseline_key(BaselineSettings.from_config(cfg), model, identity)


def flip_bit(path: Path, mask: int = 0x40) -> str:
    """Flip one exponent bit of the first float of the largest tensor stored in ``path``."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        offset = info.header_offset + 30 + name_len + extra_len + 3  # the sign/exponent byte (little endian)
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))
    return info.filename


def test_a_flipped_bit_is_caught_named_and_retrained(compose_cfg, caplog):
    cfg = baseline_cfg(compose_cfg)
    _, model, example, ctx = build(cfg)
    first = baseline(cfg, model, ctx, example)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    assert first.metrics["reused"] is False
    cache = BaselineCache(cfg.paths.cache_dir)
    path = cache.path(first.key)
    assert first.cache_path == str(path) and cache.meta_path(first.key).exists()
    flip_bit(path)
    # torch.load alone does not notice: the flipped weight is huge
    entry = torch.load(path, weights_only=True)
    assert max(float(v.abs().max()) for v in entry["state_dict"].values() if v.is_floating_point()) > 1e30
    _, model, example, ctx = build(cfg)
    with caplog.at_level(logging.WARNING, logger=LOG):
        second = baseline(cfg, model, ctx, example)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in w and "fails its checksum" in w and "retraining" in w for w in warnings), warnings
    assert second.metrics["reused"] is False
    assert math.isfinite(second.metrics["loss"]) and second.metrics["loss"] < 10
    assert second.metrics["loss"] == first.metrics["loss"]  # retrained to the same weights
    assert all(torch.equal(trained[k], v) for k, v in model.state_dict().items())
    # the rewritten entry verifies again and is reused
    _, model, example, ctx = build(cfg)
    assert baseline(cfg, model, ctx, example).metrics["reused"] is True


def test_a_foreign_entry_under_the_key_is_named_and_retrained(compose_cfg, caplog):
    cfg = baseline_cfg(compose_cfg)
    datamodule, model, example, ctx = build(cfg)
    key = key_of(cfg, model, datamodule.data_identity())
    cache = BaselineCache(cfg.paths.cache_dir)
    foreign = {k: torch.zeros(*v.shape[:-1], v.shape[-1] + 1) if v.dim() else v for k, v in model.state_dict().items()}
    cache.store(key, foreign, {"train_wall_s": 1.0})  # a valid checksum, but not this model's shapes
    assert cache.load(key) is not None
    with caplog.at_level(logging.WARNING, logger=LOG):
        phase = baseline(cfg, model, ctx, example)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(cache.path(key)) in w and "does not fit the model" in w and "has shape" in w for w in warnings)
    assert phase.key == key and phase.metrics["reused"] is False
    assert math.isfinite(phase.metrics["loss"]) and phase.metrics["loss"] < 10
    assert cache.load(key, model.state_dict()) is not None  # replaced by the real baseline


def test_entries_without_a_checksum_or_under_another_key_are_not_used(tmp_path, caplog):
    cache = BaselineCache(tmp_path)
    sd = {"w": torch.randn(3, 3)}
    cache.store("a" * 16, sd, {"train_wall_s": 1.0})
    meta = json.loads(cache.meta_path("a" * 16).read_text())
    assert meta["sha256"] and meta["bytes"] == cache.path("a" * 16).stat().st_size and meta["key"] == "a" * 16
    os.replace(cache.path("a" * 16), cache.path("b" * 16))
    os.replace(cache.meta_path("a" * 16), cache.meta_path("b" * 16))
    with caplog.at_level(logging.WARNING, logger=LOG):
        assert cache.load("b" * 16) is None
        cache.meta_path("b" * 16).unlink()
        assert cache.load("b" * 16) is None
    messages = [r.getMessage() for r in caplog.records]
    assert "entry of key 'aaaaaaaaaaaaaaaa'" in messages[0] and str(cache.path("b" * 16)) in messages[0]
    assert "has no checksum file bbbbbbbbbbbbbbbb.json" in messages[1]


def test_the_key_follows_the_built_model_and_the_data(compose_cfg):
    cfg = baseline_cfg(compose_cfg)
    datamodule, model, _, _ = build(cfg)
    identity = datamodule.data_identity()
    key = key_of(cfg, model, identity)
    assert key_of(cfg, build(cfg)[1], identity) == key  # rebuilt: the same key
    changed = build(cfg)[1]
    first = next(name for name, m in changed.named_modules() if isinstance(m, nn.Conv2d))
    conv = changed.get_submodule(first)
    parent, _, attr = first.rpartition(".")
    setattr(
        changed.get_submodule(parent) if parent else changed,
        attr,
        nn.Conv2d(conv.in_channels, conv.out_channels + 1, conv.kernel_size),
    )
    assert architecture_fingerprint(changed) != architecture_fingerprint(model)
    assert key_of(cfg, changed, identity) != key  # same config, another architecture
    swapped = build(cfg)[1]
    relu = next(name for name, m in swapped.named_modules() if isinstance(m, nn.ReLU))
    parent, _, attr = relu.rpartition(".")
    setattr(swapped.get_submodule(parent) if parent else swapped, attr, nn.GELU())  # no weights change
    assert key_of(cfg, swapped, identity) != key
    assert key_of(cfg, model, {**identity, "sha256": "0" * 64}) != key  # other data
    assert key_of(cfg, model, identity) == key_of(
        compose_cfg(*FAST, "logger=none", "measure.latency_batch_sizes=[1]", "dataset.eval_batch_size=32"),
        model,
        identity,
    )  # evaluation settings do not determine the baseline


def pinned_config(cache_dir: Path, weights: str | None = None):
    return OmegaConf.create(
        {
            "seed": 3,
            "dataset": {
                "_target_": "experiments.data.SyntheticDataModule",
                "name": "synthetic",
                "n_train": 256,
                "batch_size": 64,
                "root": "/data",  # volatile keys: not in the key
                "num_workers": 2,
                "eval_batch_size": 128,
                "input_size": "${model.size}",  # resolved
            },
            "model": {"_target_": "experiments.models.lenet5", "name": "lenet5", "size": 16, "weights": weights},
            "baseline": {
                "epochs": 2,
                "reuse": True,
                "checkpoint": None,
                "lr_schedule": "cosine",
                "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9},
            },
            "trainer": {
                "_target_": "lightning.Trainer",
                "accelerator": "cpu",
                "devices": 1,
                "limit_train_batches": 2,
                "precision": "32-true",
                "enable_progress_bar": False,
            },
            "paths": {"cache_dir": str(cache_dir)},
        }
    )


def test_the_key_of_a_config_is_the_key_it_always_had(tmp_path):
    """Cached baselines stay findable only while a config keeps its key: a change here orphans
    every cached baseline, so change these values only to invalidate the cache on purpose."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 10))
    identity = {"sha256": "ab" * 32, "images": 256}
    (tmp_path / "w.pt").write_bytes(b"pinned weights")  # model.weights enters by content, not path
    settings = BaselineSettings.from_config(pinned_config(tmp_path))
    assert baseline_key(settings) == "0cea31619e44aa02"
    assert baseline_key(settings, model, identity) == "58fc88615b974c9a"
    weighted = BaselineSettings.from_config(pinned_config(tmp_path, str(tmp_path / "w.pt")))
    assert baseline_key(weighted, model, identity) == "23c181312830ddf6"


# -- concurrent runs --------------------------------------------------------------------------


def _worker(cfg: dict, role: str, workdir: str, training, go) -> None:
    """A run's baseline phase in its own process; ``fit`` is counted in ``trainings.txt``."""
    logging.basicConfig(filename=os.path.join(workdir, f"{role}.log"), level=logging.INFO, force=True)
    cfg = OmegaConf.create(cfg)
    torch.set_num_threads(1)

    class CountingContext(RunContext):
        def fit(self, module, phase, epochs, steps=None, callbacks=()):
            with open(os.path.join(workdir, "trainings.txt"), "a") as f:
                f.write(f"{role} {os.getpid()}\n")
            training.set()
            go.wait(120)
            return super().fit(module, phase, epochs, steps, callbacks)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.dataset)
    datamodule.setup()
    model = instantiate(
        cfg.model,
        num_classes=datamodule.num_classes,
        in_channels=datamodule.in_channels,
        input_size=datamodule.input_size,
    )
    ctx = CountingContext(TrainerSettings.from_config(cfg), datamodule, Path(workdir) / role)
    phase = baseline(cfg, model, ctx, datamodule.example_inputs(2).cpu())
    torch.save(
        {"state_dict": model.state_dict(), "reused": phase.metrics["reused"]}, os.path.join(workdir, f"{role}.pt")
    )


def _wait_for(predicate, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.alone
def test_two_runs_needing_the_same_baseline_train_it_once(compose_cfg, tmp_path):
    cfg = OmegaConf.to_container(baseline_cfg(compose_cfg), resolve=True)
    mp = multiprocessing.get_context("spawn")
    training, go = mp.Event(), mp.Event()
    first = mp.Process(target=_worker, args=(cfg, "first", str(tmp_path), training, go))
    first.start()
    second = None
    try:
        assert training.wait(180), "the first run never started training"
        second = mp.Process(target=_worker, args=(cfg, "second", str(tmp_path), training, go))
        second.start()
        log = tmp_path / "second.log"
        _wait_for(lambda: log.exists() and "waiting for baseline" in log.read_text(), "the second run to wait")
        assert f"being trained by pid {first.pid}" in log.read_text()
        go.set()
        first.join(180)
        second.join(180)
    finally:
        go.set()
        for p in (first, second):
            if p is not None and p.is_alive():
                p.kill()
    assert first.exitcode == 0 and second.exitcode == 0
    assert (tmp_path / "trainings.txt").read_text().split() == ["first", str(first.pid)]  # trained once
    a, b = (torch.load(tmp_path / f"{role}.pt", weights_only=True) for role in ("first", "second"))
    assert a["reused"] is False and b["reused"] is True
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
    assert len(list(Path(cfg["paths"]["cache_dir"]).glob("*.pt"))) == 1


@pytest.mark.alone
def test_the_claim_of_a_dead_trainer_is_taken_over(tmp_path, caplog):
    cache = BaselineCache(tmp_path)
    ctx = multiprocessing.get_context("fork")
    held = ctx.Event()

    def hold() -> None:
        with cache.claim("k"):
            held.set()
            time.sleep(60)

    holder = ctx.Process(target=hold)
    holder.start()
    got: list[bool] = []
    try:
        assert held.wait(30)

        def claim() -> None:
            with cache.claim("k") as waited:
                got.append(waited)

        with caplog.at_level(logging.INFO, logger=LOG):
            waiter = threading.Thread(target=claim)
            waiter.start()
            _wait_for(lambda: any("waiting for baseline k" in r.getMessage() for r in caplog.records), "the wait", 30)
            assert not got  # blocked while the trainer lives
            os.kill(holder.pid, signal.SIGKILL)  # killed mid-training: the OS drops its flock
            waiter.join(30)
    finally:
        if holder.is_alive():
            holder.kill()
        holder.join(30)
    assert got == [True]
    assert any(f"being trained by pid {holder.pid}" in r.getMessage() for r in caplog.records)
    assert cache.claim_path("k").read_text().strip() == str(os.getpid())
