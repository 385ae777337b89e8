"""dependency_groups on tiny nets: one test per kind of coupling, with exact members and maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruning
from tests.pruning.test_structured import check_prune, outputs

X = torch.randn(1, 3, 8, 8)


def members(group) -> set[tuple[str, int, str]]:
    return {(m.name, m.dim, m.role) for m in group.members}


def group_of(groups, name: str, dim: int = 0):
    return next(g for g in groups if any(m.name == name and m.dim == dim for m in g.members))


def member(group, name: str, dim: int):
    return next(m for m in group.members if m.name == name and m.dim == dim)


class Head(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.fc = nn.Linear(c, 4)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Residual(nn.Module):
    def __init__(self, project: bool = False):
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.short = nn.Conv2d(8, 8, 1) if project else nn.Identity()
        self.head = Head(8)

    def forward(self, x):
        x = F.relu(self.bn0(self.conv0(x)))
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        out += self.short(x)  # in-place add, as torchvision does
        return self.head(F.relu(out))


def test_residual_add_couples_every_tensor_added():
    groups = pruning.dependency_groups(Residual(), X)
    stream = group_of(groups, "conv0")
    assert members(stream) == {
        ("conv0", 0, "out"),
        ("bn0", 0, "norm"),
        ("conv1", 1, "in"),
        ("conv2", 0, "out"),
        ("bn2", 0, "norm"),
        ("head.fc", 1, "in"),
    }
    assert stream.n_channels == stream.n_prunable == 8
    inner = group_of(groups, "conv1")
    assert members(inner) == {("conv1", 0, "out"), ("bn1", 0, "norm"), ("conv2", 1, "in")}
    assert all(m.mapping() == "identity" for m in stream.members)
    out = group_of(groups, "head.fc")
    assert out.n_prunable == 0 and out.reasons == ["model output"]


def test_projection_shortcut_joins_the_group():
    groups = pruning.dependency_groups(Residual(project=True), X)
    stream = group_of(groups, "conv2")
    assert ("short", 0, "out") in members(stream)
    x_group = group_of(groups, "conv0")
    assert members(x_group) == {("conv0", 0, "out"), ("bn0", 0, "norm"), ("conv1", 1, "in"), ("short", 1, "in")}
    check_prune(Residual(project=True), X, 0.5)


class PadShortcut(nn.Module):
    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class OptionA(nn.Module):
    """CIFAR ResNet with a parameter-free zero-padding shortcut (4 -> 8 channels)."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv1, self.bn1 = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.short = PadShortcut(2)
        self.head = Head(8)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return self.head(F.relu(out + self.short(x)))


def test_option_a_zero_padding_maps_offsets_and_freezes_pad_channels():
    groups = pruning.dependency_groups(OptionA(), X)
    g = group_of(groups, "stem")
    assert g is group_of(groups, "conv2")  # the padded view ties both stages
    assert g.n_channels == 8 and g.n_prunable == 4  # the 4 zero-padded positions cannot go
    stem, conv2 = member(g, "stem", 0), member(g, "conv2", 0)
    padded = conv2.channels[2:6]  # conv2's outputs 2..5 meet stem channels 0..3 in the add
    assert torch.equal(stem.channels, padded)
    assert set(g.frozen.nonzero().flatten().tolist()) == set(conv2.channels[[0, 1, 6, 7]].tolist())
    assert any("zero padding" in r for r in g.reasons)


def test_option_a_prunes_consistently():
    model, _ = check_prune(OptionA(), X, 0.5)
    assert model.stem.out_channels == 2 and model.conv2.out_channels == 6  # 4 pad + 2 kept
    assert model.conv1.out_channels == 4  # the inner group: floor(8 * 0.5)
    model = OptionA()
    pruning.prune_filters(model, X, {"conv1": 0.5})  # Li et al.: only the first conv of a block
    assert (model.stem.out_channels, model.conv1.out_channels, model.conv2.in_channels) == (4, 4, 4)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.c = nn.Conv2d(10, 5, 1)
        self.head = Head(5)

    def forward(self, x):
        y = self.bn(torch.cat([self.a(x), self.b(x)], 1))
        return self.head(self.c(F.relu(y)))


def test_concat_members_carry_offsets():
    groups = pruning.dependency_groups(Concat(), X)
    ga, gb = group_of(groups, "a"), group_of(groups, "b")
    assert ga is not gb
    assert torch.equal(member(ga, "c", 1).positions, torch.arange(4))
    assert torch.equal(member(gb, "c", 1).positions, torch.arange(4, 10))
    assert torch.equal(member(gb, "bn", 0).channels, torch.arange(6))
    assert member(gb, "c", 1).mapping() == "positions 4..9 -> channels 0..5"
    model, record = check_prune(Concat(), X, 0.5)
    assert (model.a.out_channels, model.b.out_channels, model.bn.num_features, model.c.in_channels) == (2, 3, 5, 5)


class Depthwise(nn.Module):
    def __init__(self, mult: int = 1):
        super().__init__()
        self.pw1, self.bn1 = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        self.dw, self.bn2 = nn.Conv2d(8, 8 * mult, 3, padding=1, groups=8), nn.BatchNorm2d(8 * mult)
        self.pw2 = nn.Conv2d(8 * mult, 6, 1)
        self.head = Head(6)

    def forward(self, x):
        return self.head(self.pw2(F.relu6(self.bn2(self.dw(F.relu6(self.bn1(self.pw1(x))))))))


@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_ties_producer_dw_and_next_input(mult):
    g = group_of(pruning.dependency_groups(Depthwise(mult), X), "pw1")
    assert members(g) == {("pw1", 0, "out"), ("bn1", 0, "norm"), ("dw", 0, "dw"), ("bn2", 0, "norm"), ("pw2", 1, "in")}
    assert g.n_channels == 8
    assert torch.equal(member(g, "dw", 0).channels, torch.arange(8).repeat_interleave(mult))
    model, _ = check_prune(Depthwise(mult), X, 0.5)
    assert (model.dw.in_channels, model.dw.groups, model.dw.out_channels, model.pw2.in_channels) == (
        4,
        4,
        4 * mult,
        4 * mult,
    )


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.g = nn.Conv2d(8, 12, 3, padding=1, groups=2)
        self.c = nn.Conv2d(12, 4, 1)
        self.head = Head(4)

    def forward(self, x):
        return self.head(self.c(F.relu(self.g(F.relu(self.a(x))))))


def test_grouped_conv_cuts_the_same_offsets_in_every_group():
    groups = pruning.dependency_groups(Grouped(), X)
    ga, gg = group_of(groups, "a"), group_of(groups, "g")
    assert ga.n_channels == 4 and torch.equal(member(ga, "a", 0).channels, torch.arange(4).repeat(2))
    assert gg.n_channels == 6 and torch.equal(member(gg, "g", 0).channels, torch.arange(6).repeat(2))
    model, _ = check_prune(Grouped(), X, 0.5)
    assert (model.a.out_channels, model.g.in_channels, model.g.groups, model.g.out_channels) == (4, 4, 2, 6)
    assert model.g.weight.shape == (6, 2, 3, 3)


def channel_shuffle(x, groups):
    b, c, h, w = x.size()
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 4, 1)
        self.head = Head(4)

    def forward(self, x):
        return self.head(self.b(channel_shuffle(F.relu(self.a(x)), 2)))


def test_channel_shuffle_is_mapped():
    g = group_of(pruning.dependency_groups(Shuffle(), X), "a")
    # view(b, 2, 4, h, w) keeps 2 groups: channel j is a's outputs j and 4 + j, which the
    # shuffle interleaves as b's inputs 2j and 2j + 1
    assert g.n_channels == 4
    assert torch.equal(member(g, "a", 0).channels, torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]))
    assert torch.equal(member(g, "b", 1).channels, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    model, _ = check_prune(Shuffle(), X, 0.5)
    assert model.a.out_channels == model.b.in_channels == 4


class SE(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.out = nn.Conv2d(8, 5, 1)
        self.head = Head(5)

    def forward(self, x):
        x = F.relu(self.conv(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.head(self.out(x * s))


def test_squeeze_excitation_gate_joins_block_channels():
    groups = pruning.dependency_groups(SE(), X)
    main = group_of(groups, "conv")
    assert members(main) == {("conv", 0, "out"), ("fc1", 1, "in"), ("fc2", 0, "out"), ("out", 1, "in")}
    assert members(group_of(groups, "fc1")) == {("fc1", 0, "out"), ("fc2", 1, "in")}
    model, _ = check_prune(SE(), X, 0.5)
    assert (model.conv.out_channels, model.fc1.out_channels, model.fc2.out_channels) == (4, 2, 4)


class LayerScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.head = Head(8)

    def forward(self, x):
        x = self.conv0(x)
        return self.head(x + self.gamma * self.conv(x))


def test_bare_per_channel_parameter_is_a_member():
    g = group_of(pruning.dependency_groups(LayerScale(), X), "conv0")
    assert ("gamma", 0, "scale") in members(g)
    model, record = check_prune(LayerScale(), X, 0.5)
    assert model.gamma.shape == (4, 1, 1)
    assert any(e.kind == "param" and e.name == "gamma" for e in record.entries)


class Shared(nn.Module):
    """One conv applied to two tensors: its input channels are shared by both."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 3, padding=1)
        self.shared = nn.Conv2d(6, 4, 1)
        self.head = Head(4)

    def forward(self, x):
        return self.head(self.shared(self.a(x)) * self.shared(self.b(x)))


def test_module_called_twice_couples_its_inputs():
    groups = pruning.dependency_groups(Shared(), X)
    assert group_of(groups, "a") is group_of(groups, "b")
    model, _ = check_prune(Shared(), X, 0.5)
    assert model.a.out_channels == model.b.out_channels == model.shared.in_channels == 3


class ControlFlow(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace this; a real forward can."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.head = Head(8)

    def forward(self, x):
        x = self.a(x)
        y = self.b(x) if x.mean() > 0.5 else self.c(x)
        return self.head(y)


def control_flow() -> nn.Module:
    model = ControlFlow()
    nn.init.constant_(model.a.bias, 10.0)  # real activations take the `b` branch, zeros would not
    return model


def test_data_dependent_control_flow_is_traced_with_real_values():
    groups = pruning.dependency_groups(control_flow(), X)
    assert members(group_of(groups, "a")) == {("a", 0, "out"), ("b", 1, "in")}
    check_prune(control_flow(), X, 0.5)


class FixedSizes(nn.Module):
    def __init__(self, op: str):
        super().__init__()
        self.op = op
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(4, 4, 1)
        self.head = Head(4)

    def forward(self, x):
        x = self.a(x)
        if self.op == "slice":
            return self.head(self.b(x[:, :4]))
        if self.op == "split":
            p, q = torch.split(x, [4, 4], dim=1)
            return self.head(self.b(p) + q)
        if self.op == "sum":
            return self.head(self.b(x.sum(1, keepdim=True).expand(-1, 4, -1, -1)))
        p, q = x.chunk(2, dim=1)  # equal chunks: cut the same offsets in both
        return self.head(self.b(p) + q)


@pytest.mark.parametrize("op", ["slice", "split", "sum"])
def test_fixed_size_ops_freeze_channels(op):
    g = group_of(pruning.dependency_groups(FixedSizes(op), X), "a")
    assert g.n_prunable == 0 and g.reasons
    model = FixedSizes(op)
    pruning.prune_filters(model, X, 0.5)
    assert model.a.out_channels == 8 and outputs(model, X).shape == (1, 4)


def test_equal_chunks_stay_equal():
    g = group_of(pruning.dependency_groups(FixedSizes("chunk"), X), "a")
    assert g.n_channels == 4 and g.n_prunable == 4
    model, _ = check_prune(FixedSizes("chunk"), X, 0.5)
    assert model.a.out_channels == 4


def test_flatten_gives_each_channel_its_hw_inputs():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 16, 5), nn.Linear(5, 2)
    )
    g = group_of(pruning.dependency_groups(net, X), "0")
    fc = member(g, "3", 1)
    assert (
        torch.equal(fc.channels, torch.arange(4).repeat_interleave(16)) and fc.mapping() == "16 positions per channel"
    )


def test_groups_print():
    text = "\n".join(str(g) for g in pruning.dependency_groups(OptionA(), X))
    assert (
        "Group 0: 8 channels, 4 prunable" in text
        and "conv2" in text
        and "channel = position" not in text.split("\n")[0]
    )
    assert "model output" in text


def test_ignored_container_keeps_its_layers():
    model = Residual()
    pruning.prune_filters(model, X, 0.5, ignore=("head",))
    assert model.conv1.out_channels == 3 and model.conv0.out_channels == 4 and model.head.fc.in_features == 4


class PixelShuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = Head(4)

    def forward(self, x):
        return self.head(self.b(F.pixel_unshuffle(F.pixel_shuffle(self.a(x), 2), 2)[:, ::4]))


def test_pixel_shuffle_cuts_whole_blocks():
    g = group_of(pruning.dependency_groups(PixelShuffle(), X), "a")
    assert g.n_channels == 4 and torch.equal(member(g, "a", 0).channels, torch.arange(4).repeat_interleave(4))
    # [:, ::4] after unshuffle picks fixed positions: frozen, but the mapping itself is exact
    assert g.n_prunable == 0
    net = nn.Sequential(nn.Conv2d(3, 16, 1), nn.PixelShuffle(2), nn.Conv2d(4, 4, 3, padding=1), Head(4))
    model, _ = check_prune(net, X, 0.5)
    assert model[0].out_channels == 8 and model[2].in_channels == 2


def test_channel_shuffle_module():
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ChannelShuffle(2), nn.Conv2d(8, 4, 1), Head(4))
    g = group_of(pruning.dependency_groups(net, X), "0")
    assert torch.equal(member(g, "2", 1).channels, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    model, _ = check_prune(net, X, 0.5)
    assert model[0].out_channels == 4


def test_group_norm_keeps_groups_equal():
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 4, 1), Head(4))
    g = group_of(pruning.dependency_groups(net, X), "0")
    assert g.n_channels == 4 and not g.exact  # statistics are taken over each group
    pruning.prune_filters(net, X, 0.5)
    assert (net[0].out_channels, net[1].num_channels, net[1].num_groups, net[3].in_channels) == (4, 4, 2, 4)
    assert net(X).shape == (1, 4)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 5, 3),
        nn.Conv2d(3, 5, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
        nn.Conv2d(3, 6, 3, padding="same", groups=3),
        nn.Conv2d(3, 5, 4, stride=3, padding_mode="reflect", padding=1),
        nn.Conv1d(3, 5, 3, stride=2),
        nn.Conv3d(3, 5, 2),
        nn.ConvTranspose2d(3, 5, 3, stride=2, output_padding=1),
        nn.Linear(9, 4),
    ],
)
def test_shape_only_trace_predicts_real_shapes(conv):
    from pruning.graph.dryrun import shapes_only

    class Depth:
        leaf_depth = 0

    x = torch.randn((1, 3) + {nn.Conv1d: (9,), nn.Conv3d: (5, 6, 7), nn.Linear: (9,)}.get(type(conv), (9, 11)))
    fake = shapes_only(conv, conv.forward, Depth())(x)
    assert fake.shape == conv(x).shape and not fake.any()
