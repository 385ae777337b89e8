"""A run's numbers depend on its config and seed only, not on where its baseline came from."""

from __future__ import annotations

import pytest
import torch

from experiments.run.pipeline import run
from tests.experiments.conftest import FAST

# augmentation on and two retraining epochs: every RNG stream of the retrain phase is used
OVERRIDES = (*FAST, "dataset.augment=true", "strategy.retrain.epochs=2", "measure.latency_batch_sizes=[1]")


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_cached_or_resumed_baseline_gives_the_same_retrained_numbers(compose_cfg, tmp_path):
    """A run whose baseline is trained and an identical run whose baseline comes from the
    cache (as after a run killed once its baseline was cached, then started again) give
    exactly the same retrained accuracy, loss and weights."""
    fresh = run(compose_cfg(*OVERRIDES))
    fresh_weights = weights(tmp_path / "out" / "model.pt")
    cached = run(compose_cfg(*OVERRIDES))
    a, b = fresh["metrics"], cached["metrics"]
    assert a["baseline/reused"] is False and b["baseline/reused"] is True
    for key in ("baseline/acc", "baseline/loss", "pruned/acc", "pruned/loss", "retrained/acc", "retrained/loss"):
        assert b[key] == a[key], key
    assert a["retrained/loss"] != pytest.approx(a["pruned/loss"])  # retraining really ran
    cached_weights = weights(tmp_path / "out" / "model.pt")
    assert cached_weights.keys() == fresh_weights.keys()
    assert all(torch.equal(cached_weights[k], v) for k, v in fresh_weights.items())
