"""Sparse execution modules and the measured dense-vs-sparse choice."""

import pytest
import torch
from torch import nn

from pruning.unstructured.masks import prune_weights
from pruning.unstructured.sparse import SparseConv2d, SparseLinear, sparsify, supports_sparse, to_sparse


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(64,), (1, 64), (1, 1, 64), (7, 64), (2, 5, 64)])  # batch 1 runs as mv
def test_sparse_linear_matches_dense(bias, shape):
    layer = nn.Linear(64, 32, bias=bias)
    prune_weights(layer, sparsity=0.9, include="weight")
    sparse = SparseLinear.from_dense(layer)
    assert sparse.nnz == int((layer.weight != 0).sum())
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), layer(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3),
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=1),
        dict(kernel_size=(3, 1), dilation=2, padding=(2, 0), bias=False),
    ],
)
def test_sparse_conv_matches_dense(kwargs):
    conv = nn.Conv2d(6, 10, **kwargs)
    prune_weights(conv, sparsity=0.8, include="weight")
    x = torch.randn(3, 6, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(SparseConv2d(conv)(x), conv(x), rtol=1e-5, atol=1e-5)


def test_unsupported_layers_stay_dense():
    assert not supports_sparse(nn.Conv2d(4, 4, 3, groups=2))
    assert not supports_sparse(nn.Conv2d(4, 4, 3, padding_mode="reflect"))
    assert not supports_sparse(nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="groups=1"):
        SparseConv2d(nn.Conv2d(4, 4, 3, groups=4))


def test_thread_setting_is_restored():
    before = torch.get_num_threads()
    layer = to_sparse(nn.Linear(16, 8), num_threads=1)
    with torch.no_grad():
        layer(torch.randn(2, 16))
    assert torch.get_num_threads() == before


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 64), nn.ReLU(), nn.Linear(64, 10))


def test_sparsify_keeps_outputs_and_reports_consistent_choices():
    model = mlp().eval()
    prune_weights(model, sparsity={"0": 0.96, "2": 0.96, "4": 0.2})
    x = torch.randn(1, 2048)
    with torch.no_grad():
        expected = model(x)
    choices = sparsify(model, x, repeats=5)
    assert set(choices) == {"0", "2", "4"}
    assert choices["4"].chosen == "dense" and "density" in choices["4"].reason  # 80% dense: not tried
    for name, choice in choices.items():
        module = model.get_submodule(name)
        assert isinstance(module, SparseLinear) == (choice.chosen == "sparse")
        if choice.sparse_ms is not None:
            assert (choice.chosen == "sparse") == (choice.sparse_ms * 1.2 <= choice.dense_ms)
            assert choice.as_dict()["speedup"] == pytest.approx(choice.dense_ms / choice.sparse_ms)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_sparsify_thresholds_force_either_way():
    x = torch.randn(4, 2048)
    never = mlp().eval()
    prune_weights(never, sparsity=0.95)
    assert all(c.chosen == "dense" for c in sparsify(never, x, min_speedup=1e9, repeats=2).values())
    always = mlp().eval()
    prune_weights(always, sparsity=0.95)
    with torch.no_grad():
        expected = always(x)
    choices = sparsify(always, x, min_speedup=1e-9, repeats=2)
    assert all(c.chosen == "sparse" for c in choices.values())
    with torch.no_grad():
        torch.testing.assert_close(always(x), expected, rtol=1e-4, atol=1e-5)


def test_layers_not_run_by_the_example_stay_dense():
    model = nn.ModuleDict({"used": nn.Linear(8, 8), "unused": nn.Linear(8, 8)})
    model.forward = lambda x: model["used"](x)
    choices = sparsify(model, torch.randn(1, 8), max_density=1.0, repeats=2)
    assert choices["unused"].chosen == "dense" and "not run" in choices["unused"].reason
