import pytest
import torch

import pruning
from experiments.checks import ConfigError
from experiments.run.pipeline import run
from tests.experiments.conftest import FAST


def test_han_iterative_keeps_pruned_weights_exactly_zero(compose_cfg, tmp_path):
    cfg = compose_cfg(
        *FAST,
        "model=lenet300",
        "strategy=han_iterative",
        "strategy.sparsity=0.9",
        "strategy.rounds=2",
        "strategy.retrain.epochs=1",
    )
    row = run(cfg)
    m = row["metrics"]
    total = m["baseline/params"]
    # round 1 of 2 on a geometric schedule reaches 1 - sqrt(0.1) sparsity; round 2 reaches 0.9,
    # where "pruned" is measured (the final structure, before its retraining)
    assert m["round0/pruned/nonzero_params"] == pytest.approx(total * 0.1**0.5, rel=0.01)
    assert m["pruned/nonzero_params"] == pytest.approx(total * 0.1, rel=0.01)
    assert m["retrained/nonzero_params"] == pytest.approx(total * 0.1, rel=0.01)
    assert m["retrained/params"] == total  # masks do not change shapes...
    assert m["retrained/compressed_bytes"] < 0.25 * m["baseline/dense_bytes"]  # ...but the sparse file is small


@pytest.mark.parametrize("lossless", [True, False])
def test_deep_compression_round_trip_is_exact(compose_cfg, tmp_path, lossless):
    extra = ["strategy.storage.codebook_dtype=fp32", "strategy.storage.rest=exact"] if lossless else []
    cfg = compose_cfg(
        *FAST,
        "model=lenet300",
        "strategy=deep_compression",
        "strategy.rounds=1",
        "strategy.quantize_retrain.epochs=1",
        *extra,
    )
    row = run(cfg)
    m = row["metrics"]
    if lossless:
        assert m["quantized/storage_max_abs_diff"] == 0.0  # the file reproduces the model exactly
    else:  # fp16 codebooks and biases move the outputs by rounding only
        assert 0.0 < m["quantized/storage_max_abs_diff"] < 1e-2
    assert m["quantized/compressed_bytes"] < m["retrained/compressed_bytes"]
    out = tmp_path / "out"
    assert (out / "model.pkdc").stat().st_size == m["quantized/compressed_bytes"]
    state = pruning.load_compressed(out / "model.pkdc")
    final = torch.load(out / "model.pt", weights_only=True)
    final = final.get("state_dict", final)
    for name, tensor in state.items():  # the tested, saved model is exactly the file's
        assert torch.equal(final[name], tensor), name
    for name in ("fc1.weight", "fc2.weight"):
        assert len(torch.unique(state[name][state[name] != 0])) <= 32  # 5-bit fc codebooks
    if not lossless:
        assert state["fc1.bias"].dtype == torch.float32  # stored as fp16, loaded as the model's dtype
        assert torch.equal(state["fc1.bias"], state["fc1.bias"].half().float())


@pytest.mark.parametrize(
    "override, message",
    [
        ("strategy.sparsity=1.5", r"strategy.sparsity=1.5: must be a number in \[0, 1\)"),
        (
            "strategy.storage.index_bits=17",
            r"strategy.storage.index_bits=17: must be an integer in \[1, 16\] or 'auto'",
        ),
        ("strategy.freeze=all", r"strategy.freeze='all': allowed values are"),
        ("strategy.storage.rest=int8", r"strategy.storage.rest='int8': allowed values are"),
        ("strategy.retrain.distill=1.5", r"strategy.retrain.distill=1.5: must be a number in \[0, 1\]"),
        ("strategy.quality=1.0", r"set exactly one of them"),
    ],
)
def test_weight_strategy_bad_values(compose_cfg, override, message):
    cfg = compose_cfg(*FAST, "model=lenet300", "strategy=han_iterative", override)
    with pytest.raises(ConfigError, match=message):
        run(cfg)


def test_freeze_fc_leaves_fc_weights_unchanged(compose_cfg):
    cfg = compose_cfg(
        *FAST,
        "model=lenet5",
        "strategy=han_iterative",
        "strategy.sparsity=0.5",
        "strategy.rounds=1",
        "strategy.freeze=fc",
    )
    from hydra.utils import instantiate

    strategy = instantiate(cfg.strategy, _convert_="all")
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 14 * 14, 3))
    assert strategy.frozen_names(model) == ["2"]  # every Linear, no conv
