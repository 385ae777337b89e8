"""Connection pruning masks (Han 2015), their enforcement and checkpointing; schedules."""

import math

import pytest
import torch
from torch import nn

from pruning.schedules import sparsity_schedule
from pruning.unstructured.masks import Masks, adjusted_dropout, prune_weights, select_parameters


def lenet_300_100() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )


def small_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 10))


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def test_layer_sparsity_is_exact_and_prunes_smallest():
    model = lenet_300_100()
    masks = prune_weights(model, sparsity=0.9)
    assert list(masks) == ["1.weight", "3.weight", "5.weight"]  # no biases by default
    for name, p in model.named_parameters():
        if name in masks:
            n = p.numel()
            assert masks.counts()[name] == (n - round(0.9 * n), n)
            assert int((p != 0).sum()) == n - round(0.9 * n)
            assert torch.all(p[~masks[name]] == 0)
        else:
            assert torch.all(p != 0), f"{name} must not be pruned"


def test_pruned_weights_were_the_smallest():
    model = lenet_300_100()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = prune_weights(model, sparsity=0.7)
    for name, mask in masks.items():
        w = before[name].abs()
        assert w[~mask].max() <= w[mask].min()


def test_global_sparsity_counts_all_included_weights():
    model = lenet_300_100()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = prune_weights(model, sparsity=0.92, scope="global")
    total = sum(c.total for c in masks.counts().values())
    kept = sum(c.kept for c in masks.counts().values())
    assert kept == total - round(0.92 * total)
    assert masks.sparsity().total == pytest.approx(0.92, abs=1e-5)
    pruned_max = max(before[n].abs()[~m].max() for n, m in masks.items())
    kept_min = min(before[n].abs()[m].min() for n, m in masks.items())
    assert pruned_max <= kept_min
    assert len(set(round(s, 3) for s in masks.sparsity().layers.values())) > 1  # not uniform


def test_quality_rule_prunes_below_q_times_std():
    model = lenet_300_100()
    w = model[1].weight.detach().clone()
    masks = prune_weights(model, quality={"1": 1.5, "3": 0.5, "5": 0.0})
    expected = w.abs() > 1.5 * w.std()
    assert torch.equal(masks["1.weight"], expected)
    assert masks.counts()["5.weight"].kept == 1000  # q=0 keeps all non-zeros


def test_include_selects_biases_and_bn_only_when_asked():
    model = small_cnn()
    assert list(select_parameters(model)) == ["0.weight", "4.weight"]
    masks = prune_weights(model, sparsity=0.5, include=["*.bias", "1"])
    assert set(masks) == {"0.bias", "4.bias", "1.weight", "1.bias"}
    masks = prune_weights(model, sparsity=0.5, include=lambda n, p: n == "4.weight")
    assert list(masks) == ["4.weight"]


@pytest.mark.parametrize("bad", [1.0, 1.2, -0.1])
def test_sparsity_outside_unit_interval_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        prune_weights(lenet_300_100(), sparsity=bad)
    with pytest.raises(ValueError, match="'3.weight'"):
        prune_weights(lenet_300_100(), sparsity={"1": 0.5, "3": bad, "5": 0.5})


def test_argument_errors():
    model = lenet_300_100()
    with pytest.raises(ValueError, match="exactly one"):
        prune_weights(model)
    with pytest.raises(ValueError, match="exactly one"):
        prune_weights(model, sparsity=0.5, quality=1.0)
    with pytest.raises(ValueError, match="scope"):
        prune_weights(model, sparsity=0.5, scope="network")
    with pytest.raises(ValueError, match="global"):
        prune_weights(model, quality=1.0, scope="global")
    with pytest.raises(ValueError, match="'conv9' matches no parameter"):
        prune_weights(model, sparsity=0.5, include=["conv9"])
    with pytest.raises(ValueError, match="no sparsity given"):
        prune_weights(model, sparsity={"1": 0.5}, include=["1", "3"])
    with pytest.raises(ValueError, match="quality"):
        prune_weights(model, quality=-1.0)


def test_masks_for_unknown_or_misshapen_parameters_are_clear_errors():
    model = lenet_300_100()
    with pytest.raises(KeyError, match="unknown parameter 'fc9.weight'"):
        Masks({"fc9.weight": torch.ones(3, dtype=torch.bool)}).apply_(model)
    with pytest.raises(ValueError, match="shape"):
        Masks({"1.weight": torch.ones(3, 3, dtype=torch.bool)}).apply_(model)
    with pytest.raises(TypeError, match="bool"):
        Masks({"1.weight": torch.ones(300, 784)})


def test_masks_hold_under_retraining_with_momentum_and_weight_decay():
    model = lenet_300_100()
    masks = prune_weights(model, sparsity=0.8)
    names = set(dict(model.named_parameters()))
    assert not any(n.endswith(("_orig", "_mask")) for n in names)  # names are kept
    before = model[1].weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    handles = masks.hook_optimizer(opt, model)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    for _ in range(15):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    handles.remove()
    for name, p in model.named_parameters():
        if name in masks:
            assert torch.all(p[~masks[name]] == 0)
            assert not torch.any(torch.signbit(p[~masks[name]]))  # +0.0, exactly
    assert not torch.equal(before[masks["1.weight"]], model[1].weight[masks["1.weight"]])


def test_mask_grads_zeroes_pruned_gradients():
    model = lenet_300_100()
    masks = prune_weights(model, sparsity=0.5)
    model(torch.randn(4, 784)).sum().backward()
    masks.mask_grads_(model)
    assert torch.all(model[1].weight.grad[~masks["1.weight"]] == 0)
    assert torch.any(model[1].weight.grad[masks["1.weight"]] != 0)


def test_mask_counts_survive_checkpoint_save_and_resume(tmp_path):
    model = lenet_300_100()
    masks = prune_weights(model, sparsity={"1": 0.92, "3": 0.91, "5": 0.74})
    torch.save({"model": model.state_dict(), "masks": masks.state_dict()}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed_model = lenet_300_100()
    resumed_model.load_state_dict(ckpt["model"])
    resumed = Masks.from_state_dict(ckpt["masks"])
    assert resumed.counts() == masks.counts()
    assert resumed.sparsity() == masks.sparsity()
    other = Masks({})
    other.load_state_dict(ckpt["masks"])
    assert other.counts() == masks.counts()
    resumed.apply_(resumed_model)
    for name in masks:
        assert torch.equal(resumed[name], masks[name])
        assert int((dict(resumed_model.named_parameters())[name] != 0).sum()) == masks.counts()[name].kept


def test_iterative_pruning_is_nested():
    model = lenet_300_100()
    first = prune_weights(model, sparsity=0.5)
    second = prune_weights(model, sparsity=0.75)
    for name in first:
        assert not torch.any(second[name] & ~first[name])  # nothing pruned comes back


def test_penalty_over_masked_params():
    model = lenet_300_100()
    masks = prune_weights(model, sparsity=0.5)
    weights = [model[i].weight for i in (1, 3, 5)]
    assert masks.penalty(model, "l1").item() == pytest.approx(sum(w.abs().sum().item() for w in weights), rel=1e-5)
    assert masks.penalty(model, "l2").item() == pytest.approx(sum(w.pow(2).sum().item() for w in weights), rel=1e-5)
    masks.penalty(model, "l1").backward()
    assert torch.all(model[1].weight.grad[~masks["1.weight"]] == 0)
    with pytest.raises(ValueError, match="l1"):
        masks.penalty(model, "l3")


def test_adjusted_dropout_follows_han():
    model = lenet_300_100()
    masks = prune_weights(model, sparsity=0.75)
    kept, total = masks.counts()["3.weight"]
    assert adjusted_dropout(0.5, masks, "3") == pytest.approx(0.5 * math.sqrt(kept / total))
    assert adjusted_dropout(0.5, masks, "3.weight") == pytest.approx(0.25, rel=1e-3)
    with pytest.raises(KeyError, match="no mask"):
        adjusted_dropout(0.5, masks, "7")
    with pytest.raises(ValueError):
        adjusted_dropout(1.5, masks, "3")


def test_repr_and_sparsity_summary():
    masks = prune_weights(lenet_300_100(), sparsity=0.5)
    assert "50.00%" in repr(masks)
    assert set(masks.sparsity().layers) == set(masks)


# --- schedules -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "geometric", "cubic"])
def test_schedules_hit_endpoints_and_grow(kind):
    values = [sparsity_schedule(s, 5, 0.9, 0.2, kind) for s in range(6)]
    assert values[0] == pytest.approx(0.2) and values[-1] == pytest.approx(0.9)
    assert all(a < b for a, b in zip(values, values[1:]))


def test_schedule_shapes():
    assert sparsity_schedule(1, 2, 0.8) == pytest.approx(0.4)
    kept = [1 - sparsity_schedule(s, 4, 0.9375, kind="geometric") for s in range(5)]
    assert kept == pytest.approx([1, 0.5, 0.25, 0.125, 0.0625])  # the same share each step
    assert sparsity_schedule(1, 2, 0.8, kind="cubic") == pytest.approx(0.8 - 0.8 / 8)


def test_schedule_errors():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        sparsity_schedule(1, 2, 1.0)
    with pytest.raises(ValueError, match="step"):
        sparsity_schedule(3, 2, 0.5)
    with pytest.raises(ValueError, match="total"):
        sparsity_schedule(0, 0, 0.5)
    with pytest.raises(ValueError, match="kind"):
        sparsity_schedule(1, 2, 0.5, kind="exp")
