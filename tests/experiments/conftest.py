from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

CONF = str(Path(__file__).resolve().parents[2] / "conf")

# Tiny but real: synthetic data, two batches per epoch, both loggers on.
FAST = [
    "dataset=synthetic",
    "dataset.n_train=256",
    "dataset.n_test=128",
    "dataset.input_size=16",
    "model=lenet5",
    "baseline.epochs=1",
    "strategy.retrain.epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "measure.latency_repeats=2",
    "measure.latency_max_time_s=2",
]


@pytest.fixture
def compose_cfg(tmp_path):
    """Compose the real config (as run.py does) with paths under tmp_path."""

    def make(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "out")
            cfg.hydra.runtime.cwd = str(tmp_path)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    yield make
    GlobalHydra.instance().clear()
