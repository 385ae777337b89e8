"""prune_filters on hand-built nets: shapes, exact equivalence, ratios, round_to, errors."""

from __future__ import annotations

import copy
import io
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruning
from pruning.graph.handlers import get_handler


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny float64 nets run faster on one thread, and a shared CPU stays usable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- helpers shared with the other engine tests -----------------------------------------
def zeroed_reference(model: nn.Module, record: pruning.PruningRecord) -> nn.Module:
    """``model`` (unpruned) with the removed channels' activations zeroed at every consumer."""
    ref = copy.deepcopy(model)
    for e in record.entries:
        if e.kind != "module" or e.dim != 1:
            continue
        module = ref.get_submodule(e.name)
        removed = sorted(set(range(e.size)) - set(e.keep))
        if not removed:
            continue
        idx = torch.tensor(removed)
        handler = get_handler(module)

        def hook(mod, args, idx=idx, handler=handler):
            x = args[0]
            return (x.index_fill(handler.channel_axis(mod, x), idx, 0.0),) + tuple(args[1:])

        module.register_forward_pre_hook(hook)
    return ref


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, torch.Tensor) else out[0]


def randomize_bn(model: nn.Module, seed: int = 0, bias_std: float = 0.1) -> nn.Module:
    """Non-trivial BN statistics and affines, so that equivalence checks are meaningful
    (a zero input to BN does not stay zero)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * bias_std)
    return model


def check_prune(
    model: nn.Module, x: torch.Tensor, ratio=0.3, tol: float = 1e-5, **kw
) -> tuple[nn.Module, pruning.PruningRecord]:
    """Prune a float64 copy and assert the exactness contract; return (pruned, record)."""
    model = randomize_bn(model).double().eval()
    x = x.double()
    dense = copy.deepcopy(model)
    before = pruning.count(dense, x)
    record = pruning.prune_filters(model, x, ratio, **kw)
    after = pruning.count(model, x)
    assert len(record) > 0
    assert after.params < before.params and after.macs < before.macs
    ref = zeroed_reference(dense, record)
    out, want = outputs(model, x), outputs(ref, x)
    assert (out - want).abs().max().item() < tol
    # save (weights_only-loadable), then build dense + replay + strict load: identical outputs
    buf = io.BytesIO()
    pruning.save_pruned(model, pruning.PruningRecord.from_json(record.to_json()), buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["record"] == record.to_dict()
    buf.seek(0)
    fresh = pruning.load_pruned(lambda: copy.deepcopy(dense), buf)
    assert torch.equal(outputs(fresh, x), out)
    return model, record


class SeqCNN(nn.Module):
    """Conv-BN-ReLU-MaxPool x2 -> flatten -> Linear -> ReLU -> Linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def seq_net() -> nn.Module:
    torch.manual_seed(0)
    return SeqCNN()


X = torch.randn(2, 3, 16, 16)


# ---- milestone 1: sequential CNNs ----------------------------------------------------------
def test_sequential_shapes_follow_li_rule():
    net = seq_net()
    pruning.prune_filters(net, X, 0.5)
    f, c = net.features, net.classifier
    assert (f[0].out_channels, f[1].num_features, f[4].in_channels) == (4, 4, 4)
    assert (f[4].out_channels, f[5].num_features) == (8, 8)
    assert f[0].weight.shape == (4, 3, 3, 3) and f[4].weight.shape == (8, 4, 3, 3)
    assert c[0].weight.shape == (16, 8 * 16)  # each kept channel owns its 4x4 inputs
    assert c[2].weight.shape == (10, 16)  # the output layer keeps its outputs


def test_sequential_keeps_largest_l1_filters_and_their_flatten_columns():
    net = seq_net()
    w = net.features[4].weight.detach().clone()
    lin = net.classifier[0].weight.detach().clone()
    record = pruning.prune_filters(net, X, {"features.4": 0.25})
    kept = torch.sort(w.abs().sum((1, 2, 3)).argsort(descending=True)[:12]).values
    assert torch.equal(net.features[4].weight, w[kept])
    cols = (kept[:, None] * 16 + torch.arange(16)).flatten()
    assert torch.equal(net.classifier[0].weight, lin[:, cols])
    assert net.features[0].out_channels == 8  # not named: keeps its channels
    assert {e.name for e in record.entries} == {"features.4", "features.5", "classifier.0"}


def test_sequential_equivalence_and_roundtrip(tmp_path):
    net, record = check_prune(seq_net(), X, 0.3)
    path = tmp_path / "pruned.pt"
    pruning.save_pruned(net, record, path)
    payload = torch.load(path, weights_only=True)
    assert payload["record"] == record.to_dict()
    loaded = pruning.load_pruned(lambda: seq_net().double(), path)
    assert torch.equal(outputs(loaded, X.double()), outputs(net, X.double()))


def test_ratio_zero_is_identity():
    net = seq_net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    record = pruning.prune_filters(net, X, 0.0)
    assert len(record) == 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_record_is_json_and_chains():
    net = seq_net()
    r1 = pruning.prune_filters(net, X, 0.25)
    r2 = pruning.prune_filters(net, X, 0.5)
    both = pruning.PruningRecord.from_dict(json.loads(json.dumps((r1 + r2).to_dict())))
    fresh = pruning.apply_record(seq_net(), both)
    fresh.load_state_dict(net.state_dict(), strict=True)
    assert net.features[0].out_channels == 3  # 8 -> 6 -> 3


def test_record_on_wrong_architecture_is_refused():
    net = seq_net()
    record = pruning.prune_filters(net, X, 0.5)
    with pytest.raises(ValueError, match="different architecture"):
        pruning.apply_record(net, record)


@pytest.mark.parametrize(
    "c,p,kept",
    [
        (64, 0.5, 32),
        (16, 0.1, 14),
        (16, 0.6, 6),
        (32, 0.3, 22),
        (10, 0.3, 7),
        (10, 0.9, 1),
        (3, 0.99, 1),
        (100, 0.29, 71),
    ],
)
def test_kept_channels_floor_rule(c, p, kept):
    assert pruning.structured.kept_channels(c, p) == kept == max(1, math.floor(round(c * (1 - p), 9)))


def test_round_to():
    assert pruning.structured.kept_channels(64, 0.3, round_to=8) == 40  # floor(44.8)=44 -> 40
    assert pruning.structured.kept_channels(10, 0.95, round_to=4) == 4
    assert pruning.structured.kept_channels(10, 0.0, round_to=4) == 10
    net = seq_net()
    pruning.prune_filters(net, X, 0.3, round_to=4)
    assert net.features[0].out_channels == 4 and net.features[4].out_channels == 8
    assert net.classifier[0].out_features % 4 == 0


def test_never_removes_all_channels():
    net = seq_net()
    pruning.prune_filters(net, X, 0.99)
    assert net.features[0].out_channels == 1 and net.classifier[0].out_features == 1
    assert outputs(net, X).shape == (2, 10)


def test_ignore_keeps_outputs_of_named_modules():
    net = seq_net()
    pruning.prune_filters(net, X, 0.5, ignore=("features.0",))
    assert net.features[0].out_channels == 8 and net.features[4].out_channels == 8


# ---- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.2, float("nan")])
def test_bad_ratio(ratio):
    with pytest.raises(ValueError, match=r"ratio=.*: must be a number in \[0, 1\)"):
        pruning.prune_filters(seq_net(), X, ratio)
    with pytest.raises(ValueError, match=r"ratio\['features.0'\]=.*: must be a number in \[0, 1\)"):
        pruning.prune_filters(seq_net(), X, {"features.0": ratio})


def test_unknown_layer_in_ratio_dict_lists_valid_choices():
    with pytest.raises(ValueError, match=r"'features.9'.*not a module.*prunable layers: features.0, features.1"):
        pruning.prune_filters(seq_net(), X, {"features.9": 0.5})
    with pytest.raises(ValueError, match=r"'features.2'.*has no prunable output channels"):
        pruning.prune_filters(seq_net(), X, {"features.2": 0.5})
    with pytest.raises(ValueError, match=r"'classifier.2' cannot be pruned: model output"):
        pruning.prune_filters(seq_net(), X, {"classifier.2": 0.5})


def test_coupled_layers_need_one_ratio():
    with pytest.raises(ValueError, match="share one channel group"):
        pruning.prune_filters(seq_net(), X, {"features.0": 0.5, "features.1": 0.25})


def test_unknown_criterion_lists_choices():
    with pytest.raises(ValueError, match=r"unknown criterion 'l3'; valid choices: .*l1.*random"):
        pruning.prune_filters(seq_net(), X, 0.5, criterion="l3")


def test_unknown_ignore_and_bad_round_to():
    with pytest.raises(ValueError, match="not modules"):
        pruning.prune_filters(seq_net(), X, 0.5, ignore=("nope",))
    with pytest.raises(ValueError, match="round_to"):
        pruning.prune_filters(seq_net(), X, 0.5, round_to=0)


class CustomConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 8, 3, 3))

    def forward(self, x):
        return F.conv2d(x, self.weight, padding=1)


def test_unknown_module_type_error_names_module_and_fix():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), CustomConv(), nn.Flatten(), nn.LazyLinear(4))
    x = torch.randn(1, 3, 8, 8)
    net(x)
    with pytest.raises(
        pruning.ChannelMappingError, match=r"module '2' \(CustomConv\).*register_handler\(CustomConv.*ignore=\['2'\]"
    ):
        pruning.prune_filters(net, x, 0.5)
    pruning.prune_filters(net, x, 0.5, ignore=("2",))  # ignored: it and its input channels stay
    assert net[0].out_channels == 8


def test_unmappable_op_error_names_op():
    class Patches(nn.Module):
        def forward(self, x):
            return F.unfold(x, 2).view(x.shape[0], -1, 3, 3)

    net = nn.Sequential(nn.Conv2d(3, 8, 3), Patches(), nn.Conv2d(32, 4, 3))
    with pytest.raises(pruning.ChannelMappingError, match=r"unfold.*module '1' \(Patches\).*ignore=\['1'\]"):
        pruning.prune_filters(net, torch.randn(1, 3, 6, 6), 0.5)
    pruning.prune_filters(net, torch.randn(1, 3, 6, 6), 0.5, ignore=("1",))
    assert net[0].out_channels == 8 and net[2].out_channels == 4  # frozen by the ignored op; output layer


# ---- Li et al. 2017, Table 1, with the zoo models ----------------------------------------------
def _li_resnet_ratios(model: nn.Module, stage_ratio: tuple[float, float, float], skip: set[int]) -> dict[str, float]:
    """Only the first conv of each block (conv layer 2 + 2k), one ratio per stage."""
    from experiments.models.registry import conv_layers

    convs = conv_layers(model)
    n = (len(convs) - 1) // 6
    return {
        convs[1 + 2 * k]: stage_ratio[k // n] for k in range(3 * n) if 2 + 2 * k not in skip and stage_ratio[k // n] > 0
    }


@pytest.mark.parametrize(
    "depth,stage_ratio,skip,flops,params",
    [
        (56, (0.1, 0.1, 0.1), {16, 20, 38, 54}, 0.104, 0.094),
        (56, (0.6, 0.3, 0.1), {16, 18, 20, 34, 38, 54}, 0.276, 0.137),
        (110, (0.5, 0.0, 0.0), {36}, 0.159, 0.023),
        (110, (0.5, 0.4, 0.3), {36, 38, 74}, 0.386, 0.324),
    ],
)
def test_li_table1_resnets(depth, stage_ratio, skip, flops, params):
    registry = pytest.importorskip("experiments.models.registry")
    model = registry.build_model(f"resnet{depth}", num_classes=10, in_channels=3, input_size=32)
    x = torch.randn(1, 3, 32, 32)
    before = pruning.count(model, x)
    pruning.prune_filters(model, x, _li_resnet_ratios(model, stage_ratio, skip))
    after = pruning.count(model, x)
    assert abs((1 - after.macs / before.macs) - flops) < 0.001 + 1e-9
    assert abs((1 - after.params / before.params) - params) < 0.0015


def test_li_table1_vgg16_a():
    registry = pytest.importorskip("experiments.models.registry")
    model = registry.build_model("vgg16_cifar", num_classes=10, in_channels=3, input_size=32)
    x = torch.randn(1, 3, 32, 32)
    convs = registry.conv_layers(model)
    before = pruning.count(model, x)
    pruning.prune_filters(model, x, {convs[i]: 0.5 for i in (0, 7, 8, 9, 10, 11, 12)})
    after = pruning.count(model, x)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [32, 64, 128, 128, 256, 256, 256, 256, 256, 256, 256, 256, 256]
    assert round(after.macs / 1e8, 2) == 2.06 and round(1 - after.macs / before.macs, 3) == 0.342
    assert round(after.params / 1e6, 1) == 5.4 and round(1 - after.params / before.params, 3) == 0.640


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prunes_on_gpu(tmp_path):
    net, x = seq_net().cuda(), X.cuda()
    record = pruning.prune_filters(net, x, 0.5, criterion=pruning.criteria.ActivationMean(x))
    assert net.features[0].weight.is_cuda and net.features[0].out_channels == 4
    assert outputs(net, x).shape == (2, 10)
    pruning.save_pruned(net, record, tmp_path / "gpu.pt")
    loaded = pruning.load_pruned(seq_net, tmp_path / "gpu.pt")
    assert torch.allclose(outputs(loaded, X), outputs(net, x).cpu(), atol=1e-5)
