"""Sparsity training terms: exact values and gradients on tiny nets, soft zeroing, and the cut after it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pruning
from pruning.structured.regularizers import lowest_channels
from tests.pruning.test_graph import Concat, Depthwise, OptionA, Residual, group_of

X = torch.randn(2, 3, 8, 8)


def chain() -> nn.Module:
    """conv(3->4, bias) - BN - ReLU - conv(4->3, bias) - BN - ReLU - flatten - Linear(3*8*8 -> 5)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 64, 5),
    )
    with torch.no_grad():  # BatchNorm away from its init: signs and sizes differ per channel
        for bn in (model[1], model[4]):
            bn.weight.copy_(torch.randn(bn.num_features))
            bn.bias.copy_(torch.randn(bn.num_features))
    return model


def hand_group_lasso(model: nn.Module) -> torch.Tensor:
    """The group lasso of ``chain()`` written out member by member."""
    conv0, bn1, conv3, bn4, fc = model[0], model[1], model[3], model[4], model[7]
    first = (
        conv0.weight.pow(2).sum((1, 2, 3))
        + conv0.bias.pow(2)
        + bn1.weight.pow(2)
        + bn1.bias.pow(2)
        + conv3.weight.pow(2).sum((0, 2, 3))  # the consumer's input columns
    ).sqrt()
    second = (
        conv3.weight.pow(2).sum((1, 2, 3))
        + conv3.bias.pow(2)
        + bn4.weight.pow(2)
        + bn4.bias.pow(2)
        + fc.weight.view(5, 3, 64).pow(2).sum((0, 2))  # 64 flattened inputs per channel
    ).sqrt()
    return first.sum() + second.sum()


def test_l1_penalty_is_the_sum_of_abs_gammas_and_its_gradient_their_sign():
    model = chain()
    gammas = pruning.structured.norm_scales(pruning.dependency_groups(model, X))
    assert [id(g) for g in gammas] == [id(model[1].weight), id(model[4].weight)]
    penalty = 1e-3 * pruning.structured.l1_penalty(gammas)
    want = 1e-3 * (model[1].weight.abs().sum() + model[4].weight.abs().sum())
    assert penalty.item() == pytest.approx(want.item(), rel=1e-6)
    penalty.backward()
    assert torch.allclose(model[1].weight.grad, 1e-3 * model[1].weight.sign())
    assert torch.allclose(model[4].weight.grad, 1e-3 * model[4].weight.sign())
    assert model[0].weight.grad is None  # only the scales are penalised
    assert pruning.structured.l1_penalty([]).item() == 0.0


def test_group_lasso_is_the_hand_computed_sum_over_every_member():
    model = chain()
    lasso = pruning.structured.GroupLasso(pruning.dependency_groups(model, X))
    value = lasso(model)
    want = hand_group_lasso(model)
    assert value.item() == pytest.approx(want.item(), rel=1e-6)
    params = list(model.parameters())
    grads = torch.autograd.grad(value, params, allow_unused=True)
    wants = torch.autograd.grad(hand_group_lasso(model), params, allow_unused=True)
    assert grads[-1] is None and wants[-1] is None  # the classifier's bias belongs to no channel
    for got, expected in zip(grads[:-1], wants[:-1]):
        assert torch.allclose(got, expected, atol=1e-7)
    # the analytic gradient of one filter: w_c / ||group channel c||
    norms = lasso.channel_norms()[0].detach()
    conv_grad = grads[0]
    assert torch.allclose(conv_grad, model[0].weight.detach() / norms.view(4, 1, 1, 1), atol=1e-7)
    # without biases and shifts
    no_bias = pruning.structured.GroupLasso(pruning.dependency_groups(model, X), bias=False)()
    assert no_bias.item() < value.item()


@pytest.mark.parametrize("make", [Residual, Depthwise, Concat, OptionA])
def test_group_lasso_sums_the_group_norm_criterion_over_prunable_channels(make):
    torch.manual_seed(1)
    model = make()
    groups = pruning.dependency_groups(model, X)
    criterion = pruning.criteria.GroupNorm()
    want = sum(float(criterion(g)[~g.frozen].sum()) for g in groups if g.n_prunable > 0)
    assert pruning.structured.GroupLasso(groups)().item() == pytest.approx(want, rel=1e-5)


def test_frozen_channels_are_not_penalised():
    model = OptionA()  # the zero-padded shortcut freezes 4 of the stream's 8 channels
    groups = pruning.dependency_groups(model, X)
    stream = group_of(groups, "stem")
    assert stream.n_prunable == 4
    lasso = pruning.structured.GroupLasso([stream])
    norms = pruning.criteria.GroupNorm()(stream)
    assert lasso().item() == pytest.approx(float(norms[~stream.frozen].sum()), rel=1e-5)
    assert lasso().item() < float(norms.sum())


def test_zeroed_channels_have_a_finite_gradient():
    model = chain()
    with torch.no_grad():
        model[3].weight[1] = 0
        model[3].bias[1] = 0
        model[4].weight[1] = 0
        model[4].bias[1] = 0
        model[7].weight.view(5, 3, 64)[:, 1] = 0
    value = pruning.structured.GroupLasso(pruning.dependency_groups(model, X))()
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert float(model[3].weight.grad[1].abs().sum()) == 0.0


def test_soft_pruning_zeroes_exactly_the_k_lowest_l2_filters_and_they_recover():
    model = chain()
    with torch.no_grad():
        scale = torch.tensor([3.0, 0.5, 2.0, 0.25]).view(4, 1, 1, 1)
        model[0].weight.mul_(scale / model[0].weight.pow(2).sum((1, 2, 3), keepdim=True).sqrt())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = pruning.dependency_groups(model, X)
    first = group_of(groups, "0")
    zeroed = pruning.structured.soft_prune_([first], {first.index: 2})
    assert sorted(zeroed[first.index].tolist()) == [1, 3]  # norms 0.5 and 0.25
    w, b = model[0].weight.detach(), model[0].bias.detach()
    assert float(w[[1, 3]].abs().sum()) == 0.0 and float(b[[1, 3]].abs().sum()) == 0.0
    assert torch.equal(w[[0, 2]], before["0.weight"][[0, 2]]) and torch.equal(b[[0, 2]], before["0.bias"][[0, 2]])
    for key in ("1.weight", "1.bias", "3.weight"):  # BatchNorm and the consumer are left as they were
        assert torch.equal(model.state_dict()[key], before[key])
    # nothing is masked: one SGD step moves the zeroed filters away from zero (a positive
    # BatchNorm shift lets their constant output through the ReLU, so they get a gradient)
    with torch.no_grad():
        model[1].bias.abs_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(model(X), torch.tensor([0, 1])).backward()
    optimizer.step()
    assert float(model[0].weight.detach()[[1, 3]].abs().sum()) > 0


def test_the_cut_after_soft_pruning_removes_the_zeroed_filters():
    model = chain()
    groups = pruning.dependency_groups(model, X)
    keep = {g.index: 2 if g.n_channels == 4 else 1 for g in groups if g.n_prunable}
    zeroed = pruning.structured.soft_prune_(groups, keep)
    survivors = {
        g.index: sorted(set(range(g.n_channels)) - set(zeroed[g.index].tolist())) for g in groups if g.n_prunable
    }
    first, second = (group_of(groups, n) for n in ("0", "3"))
    w0 = model[0].weight.detach()[survivors[first.index]].clone()
    w3 = model[3].weight.detach()[survivors[second.index]][:, survivors[first.index]].clone()
    pruning.prune_to(model, X, {"0": 2, "3": 1}, "l2")
    assert torch.equal(model[0].weight.detach(), w0) and torch.equal(model[3].weight.detach(), w3)


def test_lowest_channels_matches_prune_to_ranking_with_ties():
    model = chain()
    with torch.no_grad():
        model[0].weight.copy_(torch.ones_like(model[0].weight))  # every filter ties
    g = group_of(pruning.dependency_groups(model, X), "0")
    gone = lowest_channels(g, 1, pruning.criteria.L2())
    pruning.prune_to(model, X, {"0": 1}, "l2")
    kept = sorted(set(range(4)) - set(gone.tolist()))
    assert kept == [0] and model[0].out_channels == 1


def test_soft_pruning_a_depthwise_group_zeroes_both_filters_to_a_zero_score():
    torch.manual_seed(0)
    model = Depthwise()
    g = group_of(pruning.dependency_groups(model, X), "pw1")
    zeroed = pruning.structured.soft_prune_([g], {g.index: 5})[g.index]
    assert len(zeroed) == 3
    assert float(model.pw1.weight.detach()[zeroed].abs().sum()) == 0.0
    assert float(model.dw.weight.detach()[zeroed].abs().sum()) == 0.0
    scores = pruning.criteria.L2()(g)
    assert float(scores[zeroed].abs().sum()) == 0.0 and bool(
        (scores[[i for i in range(8) if i not in zeroed]] > 0).all()
    )


def test_group_norm_criterion_ranks_by_the_coupled_norm():
    model = chain()
    g = group_of(pruning.dependency_groups(model, X), "3")
    conv3, bn4, fc = model[3], model[4], model[7]
    want = (
        conv3.weight.pow(2).sum((1, 2, 3))
        + conv3.bias.pow(2)
        + bn4.weight.pow(2)
        + bn4.bias.pow(2)
        + fc.weight.view(5, 3, 64).pow(2).sum((0, 2))
    ).sqrt()
    assert torch.allclose(pruning.criteria.GroupNorm()(g), want.detach().double())
    best = conv3.weight.detach()[int(want.argmax())].clone()
    pruning.prune_filters(model, X, {"3": 0.5}, criterion="group_norm")  # keeps 1 of 3: the largest norm
    assert model[3].out_channels == 1 and torch.equal(model[3].weight.detach()[0], best)
