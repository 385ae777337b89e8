"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs.

The common CIFAR adaptation: the stem conv and the second stage use stride 1 instead of
2, so a 32x32 image reaches the last stage at 4x4 (ImageNet: 224 -> 7). Blocks are
torchvision's inverted residuals (expand 1x1 - depthwise 3x3 - project 1x1, residual
when stride 1 and widths match), which gives the filter pruner depthwise groups to tie.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from experiments.models.registry import init_weights, register_model

# (expansion t, output channels c, blocks n, first stride s); ImageNet strides are
# 1, 2, 2, 2, 1, 2, 1 — the second stage runs at stride 1 here.
CIFAR_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_WIDTH = 32
LAST_WIDTH = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled width to a multiple of ``divisor``, never below 90% of it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_bn_relu6(inp: int, out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            bn=nn.BatchNorm2d(out),
            relu=nn.ReLU6(inplace=True),
        )
    )


class InvertedResidual(nn.Module):
    """[expand 1x1-BN-ReLU6] -> depthwise 3x3-BN-ReLU6 -> project 1x1-BN (+ input)."""

    def __init__(self, inp: int, out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inp * expansion
        self.use_residual = stride == 1 and inp == out
        self.expand = _conv_bn_relu6(inp, hidden, 1) if expansion != 1 else nn.Identity()
        self.depthwise = _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
        self.project = nn.Sequential(OrderedDict(conv=nn.Conv2d(hidden, out, 1, bias=False), bn=nn.BatchNorm2d(out)))

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 with the stride-1 stem; ``width`` scales every layer (>= 1 keeps 1280)."""

    def __init__(self, *, num_classes: int, in_channels: int, width: float = 1.0) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"mobilenetv2_cifar: width={width} must be > 0")
        inp = make_divisible(STEM_WIDTH * width)
        layers: list[nn.Module] = [_conv_bn_relu6(in_channels, inp, 3, stride=1)]
        for expansion, channels, blocks, stride in CIFAR_SETTINGS:
            out = make_divisible(channels * width)
            for i in range(blocks):
                layers.append(InvertedResidual(inp, out, stride if i == 0 else 1, expansion))
                inp = out
        last = make_divisible(LAST_WIDTH * max(1.0, width))
        layers.append(_conv_bn_relu6(inp, last, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


@register_model("mobilenetv2_cifar")
def mobilenetv2_cifar(*, num_classes: int, in_channels: int, input_size: int, width: float = 1.0) -> nn.Module:
    """MobileNetV2 for 32x32 inputs (three stride-2 stages: 32 -> 4); ``width`` multiplier."""
    if input_size < 8:
        raise ValueError(f"mobilenetv2_cifar: input_size={input_size} is too small; use >= 8")
    return MobileNetV2Cifar(num_classes=num_classes, in_channels=in_channels, width=float(width))
