"""Sparsity training as strategy parts: slimming, group_norm and sfp plan, validate and run end to end."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import pruning
from experiments.checks import ConfigError
from experiments.run.pipeline import run
from experiments.strategies.plan import Prune, Train
from experiments.strategies.sparsity import (
    BatchNormL1,
    GroupNormSparsity,
    SoftFilterPruning,
    SparsityTraining,
    global_counts,
)
from tests.experiments.conftest import FAST
from tests.experiments.test_strategies import planned, shapes

METHODS = ("slimming", "group_norm", "sfp")
VGG = ["model=vgg_small", "dataset.input_size=16"]


@pytest.mark.parametrize(
    "model, size, channels", [("vgg_small", 16, 1), ("resnet20", 16, 3), ("mobilenetv2_cifar", 16, 3)]
)
def test_every_method_reaches_the_architecture_of_l1_oneshot(compose_cfg, model, size, channels):
    base, _, reference = planned(
        compose_cfg, "strategy=l1_oneshot", "strategy.ratio=0.4", model=model, size=size, channels=channels
    )
    for method in METHODS:
        pruned, steps, strategy = planned(
            compose_cfg, f"strategy={method}", "strategy.ratio=0.4", model=model, size=size, channels=channels
        )
        assert strategy.targets == reference.targets, method
        assert shapes(pruned) == shapes(base), method
        labels = [s.label for s in steps]
        at = labels.index("sparsity")
        assert labels[0] == "sparsity/share_before" and labels[at : at + 4] == [
            "sparsity",
            "sparse",
            "sparsity/share_after",
            "prune",
        ], method
        sparsity = next(s for s in steps if s.label == "sparsity")
        assert isinstance(sparsity, Train) and sparsity.epochs == strategy.sparsity.epochs
    _, steps, _ = planned(compose_cfg, "strategy=sfp")
    assert isinstance(steps[1], Prune) and steps[1].label == "soft_prune"  # zeroed before the first epoch


def test_parts_name_the_method_and_count_its_epochs_in_the_budget(compose_cfg):
    expected = {
        "slimming": ("bn_gamma", "bn_l1", 3e-2, 1, 1),
        "group_norm": ("group_norm", "group_lasso", 1e-1, 1, 1),
        "sfp": ("l2", "soft_filter", None, 2, 0),
    }
    for method, (criterion, sparsity, strength, epochs, retrain) in expected.items():
        _, _, strategy = planned(compose_cfg, f"strategy={method}")
        parts = strategy.parts()
        assert (parts["criterion"], parts["sparsity"], parts["sparsity_strength"]) == (criterion, sparsity, strength)
        assert parts["sparsity_epochs"] == epochs and parts["epochs_budget"] == epochs + retrain == 2
        assert parts["scope"] == "group" and parts["kind"] == "filter"


@dataclass
class Shrink(SparsityTraining):
    """A sparsity method no strategy knows of: a step of its own before its training, a term, its
    own checks and columns, and it needs normalisation scales."""

    decay: float = 0.5
    ran: list[list[str]] = field(default_factory=list, init=False)
    name = "shrink"
    needs_norm = True

    def check(self, criterion, scope):
        if scope != "group":
            raise ConfigError("strategy.scope: shrink works per group")

    def steps_before(self, groups, criterion):
        def apply(model, rt):
            self.ran.append([pruning.structured.group_name(g) for g, _ in groups(model, rt)])
            return {"kind": "shrink"}

        return [Prune("shrink", apply)]

    def strength(self):
        return self.decay

    def hooks(self, groups, keep, rt, criterion):
        return (lambda model: self.decay * pruning.structured.l1_penalty(pruning.structured.norm_scales(groups))), []


def test_a_new_sparsity_method_plans_through_the_declared_hooks(compose_cfg):
    shrink = [
        "strategy=slimming",
        f"strategy.sparsity._target_={__name__}.Shrink",
        "~strategy.sparsity.l1",
        "+strategy.sparsity.decay=0.25",
    ]
    _, steps, strategy = planned(compose_cfg, *shrink, "strategy.ratio=0.4")
    labels = [s.label for s in steps]
    assert labels[:6] == ["sparsity/share_before", "shrink", "sparsity", "sparse", "sparsity/share_after", "prune"]
    assert strategy.sparsity.ran == [list(strategy.targets)]  # the dry run cut the groups the plan prunes
    parts = strategy.parts()
    assert (parts["sparsity"], parts["sparsity_strength"], parts["sparsity_ramp"]) == ("shrink", 0.25, None)
    with pytest.raises(ConfigError, match="shrink works per group"):
        planned(compose_cfg, *shrink, "strategy.scope=global")
    with pytest.raises(ConfigError, match="no pruned group of this model has a BatchNorm"):
        planned(compose_cfg, *shrink, model="lenet5")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["strategy=slimming", "strategy.sparsity.l1=-1"], r"strategy.sparsity.l1=-1: must be a number >= 0"),
        (["strategy=group_norm", "strategy.sparsity.reg=-0.5"], r"strategy.sparsity.reg=-0.5: must be a number >= 0"),
        (["strategy=group_norm", "strategy.sparsity.ramp=1.5"], r"strategy.sparsity.ramp=1.5: must be a number in \[0, 1\]"),
        (["strategy=group_norm", "strategy.sparsity.bias=yes"], r"strategy.sparsity.bias='yes': must be true or false"),
        (["strategy=slimming", "strategy.sparsity.epochs=-1"], r"strategy.sparsity.epochs=-1: must be an integer >= 0"),
        (["strategy=sfp", "strategy.sparsity.lr_schedule=step"], r"strategy.sparsity.lr_schedule='step': allowed"),
        (["strategy=sfp", "~strategy.sparsity.optimizer"], r"strategy.sparsity.optimizer is missing"),
        (
            ["strategy=slimming", "strategy.scope=layer"],
            r"strategy.scope='layer': allowed values are 'group', 'global'",
        ),
        (["strategy=sfp", "strategy.criterion=bn_gamma"], r"strategy.criterion='bn_gamma' with soft filter pruning"),
        (["strategy=sfp", "strategy.scope=global"], r"strategy.scope=global with soft filter pruning"),
        (
            ["strategy=slimming", "strategy.scope=global", "strategy.schedule=iterative", "strategy.rounds=2"],
            r"strategy.scope=global with strategy.schedule=iterative",
        ),
        (["strategy=slimming", "model=lenet5"], r"strategy=slimming: no pruned group of this model has a BatchNorm"),
    ],
)
def test_bad_values_are_rejected_before_any_training(compose_cfg, tmp_path, overrides, message):
    cfg = compose_cfg(*FAST, *VGG, *overrides)
    with pytest.raises(ConfigError, match=message):
        run(cfg)
    assert not (tmp_path / ".cache").exists() and not (tmp_path / "results").exists()  # no baseline, no row


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 16, 3),
    )


X = torch.randn(2, 1, 4, 4)


def test_global_scope_ranks_every_gamma_at_once_and_keeps_one_channel_per_group():
    model = tiny()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.1, -0.2, 0.3, 0.4]))
        model[4].weight.copy_(torch.tensor([1.0, 2.0, 3.0, 0.05]))
    targets = {"0": 2, "3": 2}  # 4 channels go in all
    assert global_counts(model, X, targets, pruning.criteria.BNGamma()) == {"0": 1, "3": 3}  # 0.05, 0.1, 0.2, 0.3
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.01, 0.02, 0.03, 0.04]))
        model[4].weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert global_counts(model, X, targets, pruning.criteria.BNGamma()) == {"0": 1, "3": 4}  # never every channel


def groups_and_keep(model: nn.Module, keep: int = 2):
    groups = [g for g in pruning.dependency_groups(model, X) if g.n_prunable]
    return groups, {g.index: keep for g in groups}


def test_batchnorm_l1_hook_adds_l1_times_the_gamma_sum():
    model = tiny()
    groups, keep = groups_and_keep(model)
    penalty, after = BatchNormL1(l1=1e-3).hooks(groups, keep, SimpleNamespace(steps_per_epoch=lambda: 4), None)
    want = 1e-3 * (model[1].weight.abs().sum() + model[4].weight.abs().sum())
    assert penalty(model).item() == pytest.approx(want.item(), rel=1e-6) and after == []
    assert BatchNormL1(l1=0.0).hooks(groups, keep, None, None) == (None, [])


def test_group_norm_coefficient_ramps_linearly_over_the_sparsity_steps():
    part = GroupNormSparsity(reg=1e-2, ramp=0.5, epochs=2)
    assert [part.coefficient(s, 8) for s in (0, 2, 4, 8)] == pytest.approx([0.0, 5e-3, 1e-2, 1e-2])
    assert GroupNormSparsity(reg=1e-2, ramp=0.0).coefficient(0, 8) == pytest.approx(1e-2)
    model = tiny()
    groups, keep = groups_and_keep(model)
    penalty, (advance,) = part.hooks(groups, keep, SimpleNamespace(steps_per_epoch=lambda: 4), None)
    lasso = pruning.structured.GroupLasso(groups)().item()
    assert penalty(model).item() == 0.0
    for _ in range(2):
        advance(model)
    assert penalty(model).item() == pytest.approx(0.5e-2 * lasso, rel=1e-6)  # step 2 of a 4-step ramp


def test_sfp_hook_zeroes_at_every_epoch_end_only():
    model = tiny()
    groups, keep = groups_and_keep(model, keep=3)
    _, (hook,) = SoftFilterPruning(epochs=2).hooks(
        groups, keep, SimpleNamespace(steps_per_epoch=lambda: 3), pruning.criteria.L2()
    )
    zero_rows = lambda: int((model[0].weight.detach().flatten(1).abs().sum(1) == 0).sum())  # noqa: E731
    hook(model)
    hook(model)
    assert zero_rows() == 0
    hook(model)  # the third step ends the epoch
    assert zero_rows() == 1 and int((model[3].weight.detach().flatten(1).abs().sum(1) == 0).sum()) == 1


@pytest.mark.parametrize("method", METHODS)
def test_each_method_runs_the_pipeline_at_the_macs_of_l1_oneshot(compose_cfg, tmp_path, monkeypatch, method):
    # count the calls of each method's term: once per optimizer step (2 a epoch here); SFP zeroes in
    # the dry run, before the first epoch and at the end of the (one) epoch
    name = {"slimming": "l1_penalty", "group_norm": "GroupLasso", "sfp": "soft_prune_"}[method]
    calls = []
    original = getattr(pruning.structured, name)
    if method == "group_norm":

        class Counted(original):
            def __call__(self, model=None):
                calls.append(1)
                return super().__call__(model)

        monkeypatch.setattr(pruning.structured, name, Counted)
    else:
        monkeypatch.setattr(pruning.structured, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    cfg = compose_cfg(*FAST, *VGG, f"strategy={method}", "strategy.sparsity.epochs=1")
    row = run(cfg)
    assert len(calls) == (3 if method == "sfp" else 2)
    assert row["status"] == "ok" and row["strategy"] == method
    parts, m = row["parts"], row["metrics"]
    assert parts["sparsity_epochs"] == 1 and parts["epochs_budget"] == 2  # 1 sparsity + 1 fine-tuning epoch
    assert m["retrain/epochs"] == pytest.approx(2.0) and m["retrain/steps"] == 4  # 2 batches per epoch
    assert "sparse/acc" in m and "pruned/acc" in m
    share, before = m["sparse/removed_share"], m["sparse/removed_share_before"]
    assert 0 < before < 1 and 0 <= share < 1
    rows = row["tables"]["sparsity"]
    assert len(rows) == 6 and m["sparse/removed_share"] == pytest.approx(
        sum(r["removed_share_after"] for r in rows) / 6
    )
    if method == "sfp":  # the filters zeroed at the end of the last epoch are the ones the cut removes
        assert share == 0.0 and m["sparse/nonzero_params"] < m["sparse/params"]
    else:
        assert m["sparse/nonzero_params"] == m["sparse/params"]
    reference = planned(compose_cfg, "strategy=l1_oneshot")[0]
    assert m["retrained/macs"] == pruning.count(reference, torch.zeros(1, 1, 16, 16)).macs
    records = json.loads((tmp_path / "out" / "pruning_records.json").read_text())
    assert [r["step"] for r in records] == (["soft_prune", "prune"] if method == "sfp" else ["prune"])
