"""BatchNorm folding: exact equivalence on random models, the cases that must not fold, ONNX."""

import io

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from pruning.fold import fold_batchnorm, foldable_pairs


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, then eval mode."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-2, 2)
            m.running_var.uniform_(0.1, 4)
            if m.affine:
                m.weight.data.uniform_(-1.5, 1.5)
                m.bias.data.uniform_(-1, 1)
    return model.eval()


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def random_cnn(seed: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    c1, c2 = 4 * int(torch.randint(1, 4, (1,), generator=g)), 4 * int(torch.randint(1, 4, (1,), generator=g))
    bias = bool(torch.randint(0, 2, (1,), generator=g))
    return nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=1, bias=bias),
        nn.BatchNorm2d(c1),
        nn.ReLU(),
        nn.Conv2d(c1, c1, 3, groups=c1, padding=1, bias=not bias),
        nn.BatchNorm2d(c1),  # depthwise
        nn.Conv2d(c1, c2, 1, groups=2, bias=bias),
        nn.BatchNorm2d(c2, affine=False),
        nn.ReLU(),  # grouped
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * c2, 16, bias=bias),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 5),
    )


@pytest.mark.parametrize("seed", range(6))
def test_random_models_fold_exactly(seed):
    model = randomise_bn(random_cnn(seed))
    x = torch.randn(4, 3, 10, 10)
    folded = fold_batchnorm(model, x)
    assert count_bn(folded) == 0 and count_bn(model) == 4  # the original is untouched
    with torch.no_grad():
        assert rel_error(folded(x), model(x)) < 1e-5


def test_conv1d_conv3d_and_nested_modules():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Conv1d(2, 6, 3), nn.BatchNorm1d(6))
            self.b = nn.ModuleDict({"conv": nn.Conv3d(1, 3, 2, bias=False), "bn": nn.BatchNorm3d(3)})

        def forward(self, x, v):
            return self.a(x).sum(), self.b["bn"](self.b["conv"](v))

    model = randomise_bn(Net())
    inputs = (torch.randn(2, 2, 9), torch.randn(2, 1, 4, 4, 4))
    assert foldable_pairs(model, inputs) == [("a.0", "a.1"), ("b.conv", "b.bn")]
    folded = fold_batchnorm(model, inputs)
    with torch.no_grad():
        for got, want in zip(folded(*inputs), model(*inputs)):
            assert rel_error(got, want) < 1e-5


def test_conv_output_used_elsewhere_is_not_folded():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y + self.bn2(self.conv2(x))  # conv's output also feeds the add

    model = randomise_bn(Residual())
    x = torch.randn(2, 4, 6, 6)
    assert foldable_pairs(model, x) == [("conv2", "bn2")]
    folded = fold_batchnorm(model, x)
    assert isinstance(folded.bn, nn.BatchNorm2d) and isinstance(folded.bn2, nn.Identity)
    with torch.no_grad():
        assert rel_error(folded(x), model(x)) < 1e-5


def test_shared_modules_and_non_producers_are_not_folded():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
            self.bn_after_relu = nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.conv(self.conv(x))) + self.bn_after_relu(torch.relu(x))

    model = randomise_bn(Shared())
    assert foldable_pairs(model, torch.randn(1, 3, 4, 4)) == []


def test_linear_before_bn_over_a_different_dim_is_not_folded():
    model = randomise_bn(nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)))
    assert foldable_pairs(model, torch.randn(3, 5)) == [("0", "1")]
    seq_model = randomise_bn(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))  # (N, C=4, L=4) input
    assert foldable_pairs(seq_model, torch.randn(3, 4, 4)) == []


def test_untraceable_model_falls_back_to_sequential_order():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU())

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow defeats torch.fx
                return self.body(x)
            return self.body(-x)

    model = randomise_bn(Dynamic())
    x = torch.randn(2, 3, 6, 6)
    assert foldable_pairs(model, x) == [("body.0", "body.1")]
    with torch.no_grad():
        assert rel_error(fold_batchnorm(model, x)(x), model(x)) < 1e-5


def test_training_mode_bn_is_a_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="model.eval"):
        fold_batchnorm(model, torch.randn(2, 3, 5, 5))
    assert model.training  # modes were restored


def test_folding_after_filter_pruning_with_the_structured_engine():
    structured = pytest.importorskip("pruning.structured", reason="structured engine not available")
    model = randomise_bn(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, groups=8, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12), nn.ReLU(),
            nn.Flatten(), nn.Linear(12 * 6 * 6, 10),
        )
    )  # fmt: skip
    x = torch.randn(2, 3, 6, 6)
    structured.prune_filters(model, x, 0.5)
    assert model[0].out_channels < 8 and model[1].num_features == model[0].out_channels
    folded = fold_batchnorm(model, x)
    assert count_bn(folded) == 0
    with torch.no_grad():
        assert rel_error(folded(x), model(x)) < 1e-5


def test_folding_after_filter_pruning_by_hand():
    model = randomise_bn(
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.BatchNorm2d(6))
    )
    keep = torch.tensor([0, 2, 3, 6, 7])
    conv, bn, nxt = model[0], model[1], model[3]
    small = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 6, 3), nn.BatchNorm2d(6))
    with torch.no_grad():
        small[0].weight.copy_(conv.weight[keep])
        small[0].bias.copy_(conv.bias[keep])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(small[1], name).copy_(getattr(bn, name)[keep])
        small[3].weight.copy_(nxt.weight[:, keep])
        small[3].bias.copy_(nxt.bias)
        small[4].load_state_dict(model[4].state_dict())
    small.eval()
    x = torch.randn(2, 3, 9, 9)
    folded = fold_batchnorm(small, x)
    assert count_bn(folded) == 0
    with torch.no_grad():
        assert rel_error(folded(x), small(x)) < 1e-5


def test_folded_model_exports_to_onnx_and_onnxruntime_agrees():
    model = randomise_bn(random_cnn(3))
    x = torch.randn(2, 3, 10, 10)
    folded = fold_batchnorm(model, x)
    buffer = io.BytesIO()
    torch.onnx.export(folded, (x,), buffer, input_names=["x"], output_names=["y"], dynamo=False)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x.numpy()})
    assert not any(n.op_type == "BatchNormalization" for n in onnx.load_from_string(buffer.getvalue()).graph.node)
    with torch.no_grad():
        assert rel_error(torch.from_numpy(y), model(x)) < 1e-5
