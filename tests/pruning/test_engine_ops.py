"""Ops and layers the engine learnt from timm's CNN families, on small hand-built nets: attention
maps (matmul, scaled_dot_product_attention), fixed depthwise filters, convs that pad in their own
forward, grouped convs cut to one input per group, views sized by a module's own number, the
approximate ECA cut, and the check that a cut model runs (a failed cut is undone)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruning
from tests.pruning.test_structured import check_prune, outputs, randomize_bn, zeroed_reference

X = torch.randn(1, 3, 8, 8)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def group_of(groups, name: str, dim: int = 0):
    return next(g for g in groups if any(m.name == name and m.dim == dim for m in g.members))


class Net(nn.Module):
    """stem conv + BN -> ``block`` -> 1x1 conv -> pool -> linear."""

    def __init__(self, block: nn.Module, c: int = 8):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c)
        self.block = block
        self.conv = nn.Conv2d(c, c, 1)
        self.fc = nn.Linear(c, 4)

    def forward(self, x):
        x = self.block(F.relu(self.bn(self.stem(x))))
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


# ---- attention maps -------------------------------------------------------------------------
class GlobalContext(nn.Module):
    """timm's GlobalContext: a softmax map over positions pools every channel (matmul)."""

    def __init__(self, c: int):
        super().__init__()
        self.attn, self.fc1, self.fc2 = nn.Conv2d(c, 1, 1), nn.Conv2d(c, c // 2, 1), nn.Conv2d(c // 2, c, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        a = self.attn(x).reshape(B, 1, H * W).softmax(-1).unsqueeze(3)
        context = (x.reshape(B, C, H * W).unsqueeze(1) @ a).view(B, C, 1, 1)
        return x * self.fc2(F.relu(self.fc1(context))).sigmoid()


def test_global_context_map_keeps_the_channels():
    groups = pruning.dependency_groups(Net(GlobalContext(8)), X)
    stream = group_of(groups, "stem")
    assert stream.n_prunable == 8 and stream.exact  # the pooled context keeps each channel
    model, _ = check_prune(Net(GlobalContext(8)), X, 0.5, tol=1e-6)
    assert model.stem.out_channels == 4 and model.block.fc2.out_channels == 4


class Attention(nn.Module):
    """Multi-head attention over positions with separate q, k, v projections."""

    def __init__(self, c: int, heads: int, fixed: bool = False, sdpa: bool = True):
        super().__init__()
        self.q, self.k, self.v = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        self.heads, self.head_dim, self.fixed, self.sdpa = heads, c // heads, fixed, sdpa

    def split(self, t):
        B, C, H, W = t.shape
        return t.reshape(B, self.heads, self.head_dim if self.fixed else -1, H * W).transpose(-1, -2)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            o = ((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])).softmax(-1) @ v
        return x + self.proj(o.transpose(-1, -2).reshape(B, -1, H, W))


@pytest.mark.parametrize("sdpa", [True, False])
def test_attention_cuts_values_and_freezes_queries_and_keys(sdpa):
    groups = pruning.dependency_groups(Net(Attention(8, 2, sdpa=sdpa)), X)
    assert group_of(groups, "block.q").n_prunable == group_of(groups, "block.k").n_prunable == 0
    v = group_of(groups, "block.v")
    assert v.n_channels == 4 and v.n_prunable == 3  # the same offset in both heads; one kept per head
    model, _ = check_prune(Net(Attention(8, 2, sdpa=sdpa)), X, 0.5, tol=1e-6)
    assert model.block.v.out_channels == 4 and model.block.proj.in_channels == 4


def test_view_sized_by_the_module_s_own_number_freezes():
    groups = pruning.dependency_groups(Net(Attention(8, 2, fixed=True)), X)
    assert group_of(groups, "block.v").n_prunable == 0  # reshape(B, heads, self.head_dim, N)
    check_prune(Net(Attention(8, 2, fixed=True)), X, 0.5, tol=1e-6)


class CrossCovariance(nn.Module):
    """XCA-like: a channels x channels map (q @ k^T over positions) applied to v."""

    def __init__(self, c: int, out_like_input: bool = False):
        super().__init__()
        self.q, self.k, self.v = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)
        self.out_like_input = out_like_input

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = (m(x).flatten(2) for m in (self.q, self.k, self.v))
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)).softmax(-1)
        return (attn @ v).reshape(B, C if self.out_like_input else -1, H, W)


def test_channel_by_channel_map_freezes_both_sides():
    groups = pruning.dependency_groups(Net(CrossCovariance(8)), X)
    assert all(group_of(groups, f"block.{n}").n_prunable == 0 for n in "qkv")
    check_prune(Net(CrossCovariance(8)), X, 0.5, tol=1e-6)


def test_output_sized_by_the_input_s_channels_is_refused_and_ignore_works():
    # reshape(B, C, ...) with C read from the input: the engine cannot see that the block's
    # output count follows its input's; the check of the cut model catches it (EdgeNeXt's XCA)
    model = Net(CrossCovariance(8, out_like_input=True))
    with pytest.raises(
        pruning.ChannelMappingError, match=r"'block' \(CrossCovariance\).*ignore=\['block', 'stem'\]"
    ):  # the block, and the layer whose channels enter it
        pruning.prune_filters(model, X, 0.5)
    check_prune(model, X, 0.5, tol=1e-6, ignore=["block", "stem"])


# ---- fixed filters, padding convs, grouped convs --------------------------------------------
class Blur(nn.Module):
    """A fixed binomial blur shared by every channel, applied depthwise with stride 2 (BlurPool)."""

    def __init__(self):
        super().__init__()
        f = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (f[:, None] * f[None, :] / 16)[None, None])

    def forward(self, x):
        c = x.shape[1]
        return F.conv2d(F.pad(x, [1, 1, 1, 1], mode="reflect"), self.filt.expand(c, 1, 3, 3), stride=2, groups=c)


def test_fixed_depthwise_filter_maps_channels():
    groups = pruning.dependency_groups(Net(Blur()), X)
    assert group_of(groups, "stem").n_prunable == 8
    model, _ = check_prune(Net(Blur()), X, 0.5, tol=1e-6)
    assert model.conv.in_channels == 4


class SameConv(nn.Conv2d):
    """TF "same" padding computed in forward (timm's Conv2dSame): its output is not what its
    ``padding`` attribute says."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        ph = max((math.ceil(ih / self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - ih, 0)
        pw = max((math.ceil(iw / self.stride[1]) - 1) * self.stride[1] + self.kernel_size[1] - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class SameBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = SameConv(c, c, 3, stride=2)
        self.pool = nn.AvgPool2d(2, ceil_mode=True)

    def forward(self, x):
        return self.conv(x) + self.pool(x)


def test_conv_that_pads_in_its_forward_traces_its_real_shape():
    x = torch.randn(1, 3, 9, 9)  # odd: "same" gives 5x5, the padding attribute would give 4x4
    model, _ = check_prune(Net(SameBlock(8)), x, 0.5, tol=1e-6)
    assert model.block.conv.out_channels == 4


def test_grouped_conv_cut_to_one_input_per_group_replays():
    block = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1))
    model, record = check_prune(Net(block), X, 0.5)  # replay cuts the inputs first: then in == groups
    conv = model.block[0]
    assert (conv.in_channels, conv.groups, conv.out_channels) == (4, 4, 8)


# ---- ECA: approximate only when asked ------------------------------------------------------
class Eca(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))
        return x * y.sigmoid().view(x.shape[0], -1, 1, 1)


def test_eca_channels_stay_unless_approximate_and_the_difference_is_reported():
    model = randomize_bn(Net(Eca())).double().eval()
    x = X.double()
    dense = copy.deepcopy(model)
    stream = group_of(pruning.dependency_groups(dense, x), "stem")
    assert stream.n_prunable == 0 and "approximate=('eca',)" in stream.reasons[0]  # exact by default: kept
    assert group_of(pruning.dependency_groups(dense, x, approximate=("eca",)), "stem").exact is False
    with pytest.warns(UserWarning, match="approximate cut"):
        record = pruning.prune_filters(model, x, 0.5, approximate=("eca",))
    assert model.stem.out_channels == 4
    measured = (outputs(model, x) - outputs(zeroed_reference(dense, record), x)).abs().max().item()
    assert record.approximation_error == pytest.approx(measured, abs=1e-12) and measured > 1e-6
    with pytest.raises(ValueError, match="approximate=\\['nope'\\]"):
        pruning.prune_filters(model, x, 0.5, approximate=("nope",))


# ---- a cut that breaks the model is undone ---------------------------------------------------
class GainConv(nn.Conv2d):
    """A conv with a per-filter gain its handler (the plain conv's) does not know."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

    def forward(self, x):
        return F.conv2d(x, self.weight * self.gain, self.bias, self.stride, self.padding)


def test_a_cut_model_that_fails_is_restored_and_the_module_named():
    model = Net(nn.Sequential(GainConv(8, 8, 3, padding=1), nn.ReLU())).eval()
    x = torch.randn(2, 3, 8, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    arch, want = repr(model), outputs(model, x)
    with pytest.raises(
        pruning.ChannelMappingError,
        match=r"module 'block\.0' \(GainConv\).*ignore=\['block\.0', 'stem'\].*left as it was",
    ):
        pruning.prune_filters(model, x, 0.5)
    assert repr(model) == arch and model.block[0].weight.shape == (8, 8, 3, 3)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(outputs(model, x), want)
    pruning.prune_filters(model, x, 0.5, ignore=["block.0"])
    assert model.stem.out_channels == 4 and model.block[0].out_channels == 8


class Residual(nn.Module):
    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return x + self.conv(x)


def _broken(how: str) -> tuple[nn.Module, object]:
    """A net whose forward fails the way a wrong cut would make it fail, and the graph of the
    net before it was broken (what the check of a cut has)."""
    from pruning.graph.groups import build_graph
    from pruning.graph.handlers import get_handler

    if how == "residual":  # a conv that no longer keeps the spatial size of its shortcut
        model = Net(Residual(nn.Conv2d(8, 8, 3, padding=1))).eval()
        graph = build_graph(model, X)
        model.block.conv.padding = (0, 0)
        return model, graph
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=2 if how == "groups" else 1)
    model = Net(nn.Sequential(conv, nn.ReLU())).eval()
    graph = build_graph(model, X)
    handler = get_handler(conv)
    if how == "inputs":  # inputs cut, the layer feeding them not
        handler.prune_in(conv, torch.arange(6))
    elif how == "groups":  # outputs no longer a multiple of the groups
        conv.weight = nn.Parameter(conv.weight[:7].detach().clone())
        conv.bias = nn.Parameter(conv.bias[:7].detach().clone())
    elif how == "linear":  # the classifier reads more features than it gets
        model.fc = nn.Linear(6, 4)
    return model, graph


@pytest.mark.parametrize("how", ["inputs", "groups", "linear", "residual"])
def test_the_shapes_only_check_fails_where_the_real_forward_fails(how):
    from pruning.structured.surgery import check_forward

    model, graph = _broken(how)
    assert graph.trace.shapes_only
    with pytest.raises(pruning.ChannelMappingError) as real:
        check_forward(model, X, graph)
    with pytest.raises(pruning.ChannelMappingError) as dry:
        check_forward(model, X, graph, dry=True)
    assert str(dry.value) == str(real.value)  # the real forward names the module


def _counting_convs(monkeypatch) -> list[int]:
    calls = [0]
    conv2d = F.conv2d

    def counted(*args, **kwargs):
        calls[0] += 1
        return conv2d(*args, **kwargs)

    monkeypatch.setattr(F, "conv2d", counted)
    return calls


class ReadsValues(nn.Module):
    def forward(self, x):
        return x if bool(x.mean() > -1e9) else -x


def test_a_cut_is_checked_without_computing_convs_unless_the_model_reads_values_or_trains(monkeypatch):
    calls = _counting_convs(monkeypatch)
    model = Net(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())).eval()
    pruning.prune_filters(model, X, 0.5)
    assert calls[0] == 0 and model.block[0].weight.shape == (4, 4, 3, 3)
    assert outputs(model, X).shape == (1, 4) and calls[0] == 3  # it runs
    for model in (Net(ReadsValues()).eval(), Net(nn.Identity()).train()):
        calls[0] = 0
        pruning.prune_filters(model, X, 0.5)
        assert calls[0] >= 2  # the real forward of the cut model (and of the trace: values read)
        assert model.conv.out_channels == 4


@pytest.mark.parametrize(
    "layer",
    [nn.Conv2d(12, 10, 3), nn.Conv2d(12, 10, 1, bias=False), nn.Conv1d(6, 8, 5), nn.Linear(9, 7)],
    ids=["conv3x3", "conv1x1", "conv1d", "linear"],
)
def test_cutting_both_sides_at_once_equals_one_side_after_the_other(layer):
    from pruning.graph.handlers import get_handler

    handler = get_handler(layer)
    both, seq = copy.deepcopy(layer), copy.deepcopy(layer)
    n_out, n_in = handler.out_channels(layer), handler.in_channels(layer)
    keep_out, keep_in = torch.tensor([0, 2, 3, n_out - 1]), torch.tensor([1, n_in - 2])
    assert handler.prune_both(both, keep_out, keep_in)
    handler.prune_out(seq, keep_out)
    handler.prune_in(seq, keep_in)
    for (name, a), (_, b) in zip(both.named_parameters(), seq.named_parameters()):
        assert isinstance(a, nn.Parameter) and torch.equal(a, b), name
    assert (handler.out_channels(both), handler.in_channels(both)) == (4, 2)
    x = torch.randn(2, n_in, 11) if isinstance(layer, nn.Conv1d) else torch.randn(2, n_in, 6, 6)
    x = torch.randn(2, n_in) if isinstance(layer, nn.Linear) else x
    assert both(x[:, keep_in]).shape == seq(x[:, keep_in]).shape


def test_grouped_convs_and_handlers_that_cut_more_take_the_two_steps():
    from pruning.graph.handlers import ConvHandler, get_handler

    grouped = nn.Conv2d(8, 8, 3, groups=2)
    assert not get_handler(grouped).prune_both(grouped, torch.arange(4), torch.arange(4))
    assert grouped.weight.shape == (8, 4, 3, 3)

    class GainConv(ConvHandler):
        def prune_out(self, module, keep):  # cuts something more than the weight
            super().prune_out(module, keep)

    conv = nn.Conv2d(4, 4, 3)
    assert not GainConv().prune_both(conv, torch.arange(2), torch.arange(2))
    assert conv.weight.shape == (4, 4, 3, 3)
