"""Criteria: exact scores on tiny groups, the registry, and every criterion end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruning
from pruning.criteria import combine_scores
from tests.pruning.test_graph import Depthwise, Residual, group_of

X = torch.randn(4, 3, 8, 8)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 64, 6),
        nn.ReLU(),
        nn.Linear(6, 2),
    )


def conv_group(model: nn.Module):
    return group_of(pruning.dependency_groups(model, X), "0")


def test_l1_is_the_filter_abs_sum_and_prunes_the_smallest():
    model = net()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([4.0, 1.0, 3.0, 2.0]).view(4, 1, 1, 1) / 27 * torch.ones(4, 3, 3, 3))
        model[0].weight[2, 0, 0, 0] = -model[0].weight[2, 0, 0, 0]  # signs do not matter
    scores = pruning.criteria.L1()(conv_group(model))
    assert torch.allclose(scores, torch.tensor([4.0, 1.0, 3.0, 2.0], dtype=torch.float64))
    pruning.prune_filters(model, X, {"0": 0.5})
    assert torch.allclose(model[0].weight.abs().sum((1, 2, 3)), torch.tensor([4.0, 3.0]))


def test_l2_and_largest_l1():
    model = net()
    g = conv_group(model)
    w = model[0].weight.detach().double()
    assert torch.allclose(pruning.criteria.L2()(g), w.pow(2).sum((1, 2, 3)).sqrt())
    assert torch.allclose(pruning.criteria.LargestL1()(g), -w.abs().sum((1, 2, 3)))


def test_depthwise_pair_is_scored_jointly():
    torch.manual_seed(0)
    model = Depthwise()
    g = group_of(pruning.dependency_groups(model, X), "pw1")
    dw = model.dw.weight.detach().double().abs().sum((1, 2, 3))
    pw = model.pw2.weight.detach().double().abs().sum((0, 2, 3))
    assert torch.allclose(pruning.criteria.L1()(g), dw * pw)


def test_residual_group_combines_members():
    torch.manual_seed(0)
    model = Residual()
    g = group_of(pruning.dependency_groups(model, X), "conv0")
    a = model.conv0.weight.detach().double().abs().sum((1, 2, 3))
    b = model.conv2.weight.detach().double().abs().sum((1, 2, 3))
    assert torch.allclose(pruning.criteria.L1()(g), (a + b) / 2)  # default: mean
    assert torch.allclose(pruning.criteria.L1(combine="sum")(g), a + b)
    assert torch.allclose(pruning.criteria.L1(combine="first")(g), a)
    assert torch.allclose(pruning.criteria.L1(combine="max")(g), torch.maximum(a, b))
    assert torch.allclose(pruning.criteria.L1(combine="prod")(g), a * b)
    with pytest.raises(ValueError, match="valid choices: mean, sum, max, prod, first"):
        pruning.criteria.L1(combine="median")


def test_combine_respects_presence():
    s = [
        (torch.tensor([1.0, 2.0, 0.0]), torch.tensor([True, True, False])),
        (torch.tensor([3.0, 0.0, 5.0]), torch.tensor([True, False, True])),
    ]
    assert combine_scores(s, "mean").tolist() == [2.0, 2.0, 5.0]
    assert combine_scores(s, "first").tolist() == [1.0, 2.0, 5.0]
    assert combine_scores(s, "prod").tolist() == [3.0, 2.0, 5.0]


def test_random_is_seeded():
    g = conv_group(net())
    assert torch.equal(pruning.criteria.Random(seed=3)(g), pruning.criteria.Random(seed=3)(g))
    assert not torch.equal(pruning.criteria.Random(seed=3)(g), pruning.criteria.Random(seed=4)(g))
    a, b = net(), net()
    pruning.prune_filters(a, X, 0.5, criterion=pruning.criteria.Random(seed=1))
    pruning.prune_filters(b, X, 0.5, criterion="random")
    assert a[0].out_channels == b[0].out_channels == 2


def test_bn_gamma():
    model = net()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -3.0, 0.25, 2.0]))
    assert pruning.criteria.BNGamma()(conv_group(model)).tolist() == [0.5, 3.0, 0.25, 2.0]
    fc = group_of(pruning.dependency_groups(model, X), "4")
    with pytest.warns(UserWarning, match="no BatchNorm"):
        assert pruning.criteria.BNGamma()(fc) is None
    with pytest.raises(ValueError, match="no BatchNorm"):
        pruning.criteria.BNGamma(missing="error")(fc)
    with pytest.warns(UserWarning):
        pruning.prune_filters(model, X, 0.5, criterion="bn_gamma")
    assert model[0].out_channels == 2 and model[4].out_features == 6  # fc group skipped
    assert torch.allclose(model[1].weight, torch.tensor([-3.0, 2.0]))


def test_fpgm_sum_of_distances():
    model = net()
    w = model[0].weight.detach().double().flatten(1)
    assert torch.allclose(pruning.criteria.FPGM()(conv_group(model)), torch.cdist(w, w).sum(1))


def conv_outputs(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model[0](X).double().transpose(0, 1).flatten(1)


def test_activation_statistics():
    model = net()
    groups = pruning.dependency_groups(model, X)
    g = group_of(groups, "0")
    a = conv_outputs(model)
    for crit, want in [
        (pruning.criteria.ActivationMean(X), a.mean(1)),
        (pruning.criteria.ActivationStd(X), a.std(1)),
        (pruning.criteria.APoZ(X), 1 - (a <= 0).double().mean(1)),
    ]:
        crit.prepare(model, groups)
        assert torch.allclose(crit(g), want)


def test_taylor_first_order():
    model = net().eval()
    y = torch.tensor([0, 1, 1, 0])
    groups = pruning.dependency_groups(model, X)
    g = group_of(groups, "0")
    crit = pruning.criteria.Taylor(X, y)
    crit.prepare(model, groups)
    loss = F.cross_entropy(model(X), y)
    conv, bn, fc = model[0], model[1], model[4]
    gc, gb, gf = torch.autograd.grad(loss, [conv.weight, bn.weight, fc.weight])
    want = ((conv.weight * gc).sum((1, 2, 3)) + bn.weight * gb + (fc.weight * gf).view(6, 4, 64).sum((0, 2))).abs()
    assert torch.allclose(crit(g), want.double().detach())


def test_registry():
    names = pruning.criteria.criterion_names()
    assert set(names) >= {
        "l1",
        "l2",
        "random",
        "largest_l1",
        "bn_gamma",
        "fpgm",
        "activation_mean",
        "activation_std",
        "apoz",
        "taylor",
    }
    with pytest.raises(ValueError, match="already registered"):
        pruning.register_criterion("l1")(type("Dup", (pruning.criteria.Criterion,), {}))
    with pytest.raises(ValueError, match=r"needs calibration data.*pruning.criteria.Taylor\(inputs, targets"):
        pruning.criteria.get_criterion("taylor")
    with pytest.raises(ValueError, match=r"needs calibration data.*ActivationMean\(calibration_inputs\)"):
        pruning.prune_filters(net(), X, 0.5, criterion="activation_mean")


def make(name: str):
    cls = pruning.criteria.criterion_class(name)
    if name == "taylor":
        return cls(X, torch.tensor([0, 1, 1, 0]))
    return cls(X) if cls.needs_data else cls()


@pytest.mark.parametrize("name", pruning.criteria.criterion_names())
def test_every_criterion_prunes_a_residual_net(name):
    torch.manual_seed(0)
    model = Residual()
    pruning.prune_filters(model, X, 0.5, criterion=make(name))
    assert model.conv0.out_channels == model.conv2.out_channels == 4 and model.conv1.out_channels == 3
    assert model(X).shape == (4, 4)


def test_a_plain_callable_is_a_criterion():
    model = net()
    pruning.prune_filters(model, X, {"0": 0.5}, criterion=lambda group: torch.arange(group.n_channels).double())
    assert torch.equal(model[1].running_mean, torch.zeros(2)) and model[0].out_channels == 2


@pytest.mark.parametrize("shape", [(5, 7), (300, 1000), (1100, 9 * 64), (7, 70000)])
def test_row_l1_is_the_abs_row_sum_in_blocks(shape):
    """Large weights are summed block by block through a small buffer; the rows of a view
    stored as columns (an input-channel view) take the plain path. Same sums either way."""
    from pruning.criteria import row_l1

    w = torch.randn(*shape)
    for rows in (w, w.t().contiguous().t(), w[:, ::2]):
        torch.testing.assert_close(row_l1(rows), rows.abs().sum(1), rtol=1e-6, atol=0)
