"""Global filter pruning: one ranking over all groups of per-group normalised scores."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import pruning
from pruning.graph import build_graph
from pruning.structured.ranking import global_keeps, normalized_scores
from tests.pruning.test_structured import X, check_prune, seq_net


def scaled_net(scale: float) -> nn.Module:
    """seq_net with its first conv's weights multiplied by ``scale`` (L1 norms scale with it)."""
    net = seq_net()
    with torch.no_grad():
        net.features[0].weight.mul_(scale)
    return net


def test_normalised_scores_have_mean_abs_one_and_keep_the_order_within_a_group():
    net = seq_net()
    graph = build_graph(net, X)
    scores = normalized_scores(graph, pruning.criteria.get_criterion("l1"))
    raw = {g.index: pruning.criteria.L1()(g) for g in graph.groups if g.index in scores}
    for i, s in scores.items():
        assert s.abs().mean().item() == pytest.approx(1.0)
        assert torch.equal(torch.argsort(s), torch.argsort(raw[i].double()))


def test_global_removes_ratio_of_all_prunable_channels_where_the_normalised_scores_are_lowest():
    net = seq_net()
    graph = build_graph(net, X)
    crit = pruning.criteria.get_criterion("l1")
    keeps = global_keeps(graph, 0.4, crit)
    prunable = {g.index: g.n_prunable for g in graph.groups if g.n_prunable > 0}
    total = sum(prunable.values())
    assert sum(prunable[i] - k for i, k in keeps.items()) == math.floor(total * 0.4)
    # the removed channels are exactly the lowest normalised scores overall
    scores = normalized_scores(graph, crit)
    flat = sorted((float(v), i) for i, s in scores.items() for v in s)
    removed = {}
    for _, i in flat[: math.floor(total * 0.4)]:
        removed[i] = removed.get(i, 0) + 1
    assert {i: prunable[i] - removed.get(i, 0) for i in prunable} == keeps


def test_rescaling_a_layer_does_not_move_channels_between_groups():
    """Per-group normalisation: multiplying a layer's weights changes no global decision."""
    a = pruning.structured.global_channels(scaled_net(1.0), X, 0.4)
    b = pruning.structured.global_channels(scaled_net(100.0), X, 0.4)
    assert a == b


def test_max_ratio_caps_every_group_and_no_group_is_emptied():
    net = seq_net()
    planned = pruning.structured.global_channels(net, X, 0.7, max_ratio=0.5)
    for name, (n, kept) in planned.items():
        assert kept >= math.ceil(n * 0.5), name
    with pytest.raises(ValueError, match=r"max_ratio=1: must be a number in \(0, 1\)"):
        pruning.structured.global_channels(net, X, 0.5, max_ratio=1)


def test_round_to_rounds_each_group_up():
    planned = pruning.structured.global_channels(seq_net(), X, 0.5, round_to=4)
    assert all(kept % 4 == 0 or kept == n for n, kept in planned.values())


def test_prune_filters_global_is_exact_and_matches_its_plan():
    planned = pruning.structured.global_channels(seq_net(), X, 0.4)
    net, record = check_prune(seq_net(), X, 0.4, scope="global")
    after = pruning.group_channels(net, X.double())
    assert {g: c for g, (c, _) in after.items()} == {g: k for g, (_, k) in planned.items()}


def test_bad_scope_and_ratio_dicts_are_refused():
    with pytest.raises(ValueError, match="scope='layer': choose one of group, global"):
        pruning.prune_filters(seq_net(), X, 0.3, scope="layer")
    with pytest.raises(ValueError, match="scope='global' takes one ratio"):
        pruning.prune_filters(seq_net(), X, {"features.0": 0.3}, scope="global")
