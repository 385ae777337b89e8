"""pruning.sensitivity: equal to the naive copy-prune-evaluate loop, model untouched, errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruning
from experiments.models import MODELS
from pruning.evaluation import evaluate
from pruning.structured.scan import SensitivityTable, sensitivity
from tests.pruning import test_structured as structured_tests


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    return structured_tests.randomize_bn(model, seed, bias_std=0.3)


def zoo(name: str) -> nn.Module:
    """A zoo net for 16x16 inputs (MobileNetV2 at half width: fast on one core)."""
    torch.manual_seed(0)
    options = {"width": 0.5} if name == "mobilenetv2_cifar" else {}
    return randomize_bn(MODELS[name](num_classes=10, in_channels=3, input_size=16, **options)).eval()


def labelled(model: nn.Module, n_batches: int = 2, rows: int = 4, side: int = 16, seed: int = 1) -> list:
    """Random images labelled by the dense model (dense accuracy 1.0)."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(rows, 3, side, side, generator=g) for _ in range(n_batches)]
    with torch.no_grad():
        return [(x, model(x).argmax(1)) for x in xs]


def naive(
    model: nn.Module, x: torch.Tensor, batches: list, group: str, ratio: float, metric=None, criterion="l1"
) -> tuple[float, nn.Module]:
    """What Distiller/NNI do: copy, prune the group, evaluate the whole net."""
    pruned = copy.deepcopy(model)
    pruning.prune_filters(pruned, x, {group: ratio}, criterion)
    return evaluate(pruned, batches, metric), pruned


def fingerprint(out: torch.Tensor, y: torch.Tensor) -> float:
    """A metric that moves with every logit (so equal values mean equal logits)."""
    w = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view(out.shape)
    return float((out.double() * w).sum())


X = torch.randn(1, 3, 16, 16)
TOL = dict(rel=1e-5, abs=1e-4)  # float32: stacked and single batches may sum in different orders
MOBILE_GROUPS = ["features.0.conv", "features.2.project.conv", "features.4.project.conv", "features.18.conv"]


@pytest.mark.parametrize(
    "name,groups,ratios",
    [
        ("vgg_small", None, (0.3, 0.7)),
        ("resnet20", ["conv1", "layer1.0.conv1", "layer2.2.conv1", "layer3.1.conv1"], (0.5, 0.9)),
        ("mobilenetv2_cifar", MOBILE_GROUPS, (0.25, 0.6)),
    ],
)
def test_matches_naive_loop_rows_kept_costs_and_logits(name, groups, ratios):
    model = zoo(name)
    batches = labelled(model)
    table = sensitivity(model, X, batches, ratios, groups=groups, metric=fingerprint)
    acc = sensitivity(model, X, batches, ratios, groups=groups)
    dense = pruning.count(model, X)
    assert (table.base_macs, table.base_params) == (dense.macs, dense.params)
    assert table.base_metric == pytest.approx(evaluate(model, batches, fingerprint), **TOL)
    assert acc.base_metric == 1.0
    expected = groups or list(pruning.group_channels(model, X))
    assert list(table.curves()) == expected and len(table.rows) == len(expected) * len(ratios)
    planned_ok = 0
    for row, arow in zip(table.rows, acc.rows):
        value, pruned = naive(model, X, batches, row["group"], row["ratio"], fingerprint)
        assert row["metric"] == pytest.approx(value, **TOL)  # logits equal to float32 round-off
        assert arow["metric"] == evaluate(pruned, batches)  # same accuracy, exactly
        counts = pruning.count(pruned, X)
        assert (row["macs_removed"], row["params_removed"]) == (dense.macs - counts.macs, dense.params - counts.params)
        assert row["kept"] == pruning.planned_channels(model, X, {row["group"]: row["ratio"]})[row["group"]][1]
        planned_ok += row["kept"] < row["channels"] and row["macs_removed"] > 0
    assert planned_ok == len(table.rows)  # every row removed something


def test_logits_equal_pruned_model_on_coupled_groups():
    """One ratio, one group: the outputs the metric sees are the pruned model's, batch by batch."""
    for name, group in [
        ("resnet20", "conv1"),
        ("mobilenetv2_cifar", "features.2.expand.conv"),
        ("vgg_small", "features.14"),
    ]:
        model = zoo(name)
        batches = labelled(model, n_batches=2, rows=3)
        seen = []
        sensitivity(model, X, batches, [0.6], groups=[group], metric=lambda o, y: seen.append(o.clone()) or 0.0)
        _, pruned = naive(model, X, batches, group, 0.6)
        with torch.no_grad():
            want = [pruned(x) for x, _ in batches]
        assert len(seen) == 2 + 2  # the two batches pruned, then unpruned for the base metric
        assert max((a - b).abs().max().item() for a, b in zip(seen[:2], want)) < 1e-5


def test_coupled_groups_are_scanned_as_one():
    model = zoo("resnet20")
    table = sensitivity(model, X, labelled(model), [0.5], groups=["conv1", "layer2.0.conv2", "layer1.0.conv1"])
    rows = {r["group"]: r for r in table.rows}
    assert list(rows) == ["conv1", "layer1.0.conv1"]  # layer2.0.conv2 is in conv1's residual stream
    stream = rows["conv1"]
    assert (stream["channels"], stream["kept"]) == (64, 56)  # 64 stream channels, 16 prunable (stage 1): 8 cut
    assert stream["metric"] < table.base_metric  # the stream's consumers all lose the channels
    # 8 of the stem's filters; the inputs/outputs of every stream conv (16 per 3x3 in stage 1,
    # 32 in stage 2, 64 in stage 3: 6 convs each) and 8 inputs of the classifier
    assert stream["params_removed"] == 8 * 27 + 6 * 8 * 9 * (16 + 32 + 64) + 8 * 10 == 48680
    model2 = zoo("mobilenetv2_cifar")
    dw = sensitivity(model2, X, labelled(model2), [0.5], groups=["features.1.depthwise.conv"]).rows[0]
    assert (dw["group"], dw["channels"], dw["kept"]) == ("features.0.conv", 16, 8)
    # 8 stem filters of 3x3x3, 8 depthwise kernels of 3x3, 8 inputs of the 8 projection filters
    assert dw["params_removed"] == 8 * 27 + 8 * 9 + 8 * 8 == 352
    assert dw["macs_removed"] == 352 * 16 * 16  # all at 16x16 (stride 1)


def test_model_left_bit_identical():
    model = zoo("mobilenetv2_cifar")
    batches = labelled(model)
    model.train()
    model.features[3].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    structure = [(n, type(m), sorted(vars(m)), m.training) for n, m in model.named_modules()]
    text = repr(model)
    sensitivity(model, X, batches, [0.5], groups=MOBILE_GROUPS[:2])
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert all(before[k].dtype == after[k].dtype for k in before)
    assert [(n, type(m), sorted(vars(m)), m.training) for n, m in model.named_modules()] == structure
    assert repr(model) == text
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_progress_called_once_per_group_in_order():
    model = zoo("vgg_small")
    calls = []
    table = sensitivity(model, X, labelled(model), [0.5], progress=lambda i, n, g: calls.append((i, n, g)))
    names = list(pruning.group_channels(model, X))
    assert calls == [(i, len(names), g) for i, g in enumerate(names, 1)]
    assert len(calls) == 6 and table.curves().keys() == set(names)


def test_custom_metric_and_json_table():
    model = zoo("vgg_small")
    batches = labelled(model, n_batches=3, rows=2)

    def neg_loss(out, y):
        return -F.cross_entropy(out, y).item()

    table = sensitivity(model, X, batches, [0.0, 0.5, 0.5], groups=["features.7"], metric=neg_loss)
    assert table.base_metric == pytest.approx(evaluate(model, batches, neg_loss), abs=1e-6)
    zero, half, again = table.rows
    assert (zero["kept"], zero["metric"], zero["macs_removed"], zero["params_removed"]) == (32, table.base_metric, 0, 0)
    assert half == again and half["kept"] == 16 and half["metric"] < table.base_metric
    assert half["metric"] == pytest.approx(naive(model, X, batches, "features.7", 0.5, neg_loss)[0], abs=1e-5)
    back = SensitivityTable(**json.loads(json.dumps(table.to_dict())))
    assert back == table
    assert back.curves() == {"features.7": [(0.0, zero["metric"]), (0.5, half["metric"]), (0.5, half["metric"])]}


def test_stacked_ratio_copies_equal_one_at_a_time():
    model = zoo("resnet20")
    batches = labelled(model, n_batches=1, rows=5)
    ratios = (0.2, 0.4, 0.6, 0.8)
    stacked = sensitivity(model, X, batches, ratios, metric=fingerprint, max_rows=64)
    single = sensitivity(model, X, batches, ratios, metric=fingerprint, max_rows=1)
    assert [r["metric"] for r in stacked.rows] == pytest.approx([r["metric"] for r in single.rows], **TOL)


class Branchy(nn.Module):
    """Data-dependent control flow (fx cannot trace it) and a GroupNorm (an inexact group)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.gn(self.conv1(x)))
        x = F.relu(self.bn(self.conv2(x)))
        if x.shape[-1] > 0:  # always true, but fx cannot branch on it
            x = x * 1.0
        return self.fc(x.mean((2, 3)))


def test_untraceable_model_and_inexact_group_fall_back_and_match():
    torch.manual_seed(0)
    model = randomize_bn(Branchy()).eval()
    batches = labelled(model, rows=6)
    table = sensitivity(model, X, batches, (0.25, 0.5), metric=fingerprint)
    assert [r["group"] for r in table.rows] == ["conv1", "conv1", "conv2", "conv2"]
    for row in table.rows:
        assert row["metric"] == pytest.approx(
            naive(model, X, batches, row["group"], row["ratio"], fingerprint)[0], **TOL
        )


def test_criterion_and_round_to_pick_the_channels_prune_filters_picks():
    model = zoo("vgg_small")
    batches = labelled(model)
    crit = pruning.criteria.Random(seed=3)
    table = sensitivity(
        model, X, batches, (0.3,), criterion=crit, groups=["features.3"], metric=fingerprint, round_to=4
    )
    pruned = copy.deepcopy(model)
    pruning.prune_filters(pruned, X, {"features.3": 0.3}, crit, round_to=4)
    assert table.rows[0]["kept"] == pruned.features[3].out_channels == 8  # floor(11.2) = 11 -> 8
    assert table.rows[0]["metric"] == pytest.approx(evaluate(pruned, batches, fingerprint), **TOL)


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_bad_ratio_names_value(ratio):
    model = zoo("vgg_small")
    with pytest.raises(ValueError, match=rf"ratios\[1\]={ratio}: must be a number in \[0, 1\)"):
        sensitivity(model, X, labelled(model), [0.5, ratio])


def test_bad_inputs_say_what_was_wrong():
    model = zoo("vgg_small")
    batches = labelled(model)
    with pytest.raises(ValueError, match=r"groups names 'features.99'.*groups: features.0, features.3"):
        sensitivity(model, X, batches, [0.5], groups=["features.99"])
    with pytest.raises(ValueError, match="batches is empty"):
        sensitivity(model, X, [], [0.5])
    with pytest.raises(ValueError, match="ratios is empty"):
        sensitivity(model, X, batches, [])
    with pytest.raises(ValueError, match="groups=\\[\\] selects nothing"):
        sensitivity(model, X, batches, [0.5], groups=[])
    with pytest.raises(ValueError, match="item 0 is a Tensor"):
        sensitivity(model, X, [torch.zeros(2, 3, 16, 16)], [0.5])
    with pytest.raises(ValueError, match="cannot be pruned"):
        sensitivity(model, X, batches, [0.5], groups=["classifier.3"])
    with pytest.raises(TypeError, match="progress must be callable"):
        sensitivity(model, X, batches, [0.5], progress="yes")


class SizeFlatten(nn.Module):
    """Reads the batch size early and uses it late (``view(b, -1)``)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 16 * 16, 5)

    def forward(self, x):
        b = x.size(0)
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.view(b, -1))


def test_batch_size_read_in_forward_still_stacks_ratio_copies():
    torch.manual_seed(0)
    model = randomize_bn(SizeFlatten()).eval()
    batches = labelled(model, rows=3)
    table = sensitivity(model, X, batches, (0.25, 0.5, 0.75), metric=fingerprint, max_rows=64)
    assert [(r["group"], r["kept"]) for r in table.rows] == [
        ("conv1", 4),
        ("conv1", 3),
        ("conv1", 1),
        ("conv2", 3),
        ("conv2", 2),
        ("conv2", 1),
    ]
    for row in table.rows:
        value = naive(model, X, batches, row["group"], row["ratio"], fingerprint)[0]
        assert row["metric"] == pytest.approx(value, **TOL)


class Shared(nn.Module):
    """One conv applied twice: its inputs and outputs are one group with the stem's, and
    both calls (and the classifier) consume it."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.shared(torch.relu(self.shared(x))))
        return self.fc(x.mean((2, 3)))


def test_layer_called_twice_is_cut_at_both_calls_and_matches():
    torch.manual_seed(0)
    model = randomize_bn(Shared()).eval()
    batches = labelled(model, rows=3)
    table = sensitivity(model, X, batches, (0.25, 0.5), metric=fingerprint)
    assert [(r["group"], r["channels"], r["kept"]) for r in table.rows] == [("stem", 8, 6), ("stem", 8, 4)]
    assert table.rows[1]["params_removed"] == 4 * 27 + (8 * 8 - 4 * 4) * 9 + 4 * 5 == 560
    for row in table.rows:
        value = naive(model, X, batches, row["group"], row["ratio"], fingerprint)[0]
        assert row["metric"] == pytest.approx(value, **TOL)
