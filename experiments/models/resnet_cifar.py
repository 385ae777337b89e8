"""CIFAR ResNets (He et al. 2016) with option-A parameter-free shortcuts.

Stem conv3x3(16)-BN-ReLU, three stages of n basic blocks (16/32/64 channels, depth =
6n + 2), global average pool, Linear(64, classes). Convs are defined in forward order, so
``conv_layers(model)[i - 1]`` is Li et al.'s conv layer i (stem = 1, block k's first conv
= 2 + 2k). ``block_widths`` sets each block's inner width (the output of its first conv,
the only conv Li et al. prune), to rebuild a pruned ResNet for training from scratch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from experiments.models.registry import init_weights, register_model

STAGE_WIDTHS = (16, 32, 64)


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the new channels.

    ``in_planes -> planes`` channels, padding split evenly on both sides (``planes // 4``
    each when the width doubles). No parameters; a plain module so torch.fx traces it.
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        if planes < in_planes:
            raise ValueError(f"PadShortcut cannot shrink channels ({in_planes} -> {planes})")
        self.in_planes, self.planes, self.stride = in_planes, planes, stride
        self.pad_front = (planes - in_planes) // 2
        self.pad_back = planes - in_planes - self.pad_front

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        return f"{self.in_planes}, {self.planes}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, mid_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid_planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_pad = stride != 1 or in_planes != planes
        self.shortcut = PadShortcut(in_planes, planes, stride) if needs_pad else nn.Identity()
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images; ``block_widths`` has one inner width per block."""

    def __init__(
        self,
        depth: int,
        *,
        num_classes: int,
        in_channels: int,
        block_widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth={depth} must be 6n + 2 with n >= 1")
        n = (depth - 2) // 6
        if block_widths is None:
            block_widths = [w for w in STAGE_WIDTHS for _ in range(n)]
        block_widths = [int(w) for w in block_widths]
        if len(block_widths) != 3 * n or min(block_widths) < 1:
            raise ValueError(
                f"resnet{depth}: block_widths must be {3 * n} positive ints (one per block), got {block_widths}"
            )
        self.conv1 = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes, mids = STAGE_WIDTHS[0], iter(block_widths)
        for stage, planes in enumerate(STAGE_WIDTHS, start=1):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 1 and i == 0 else 1
                blocks.append(BasicBlock(in_planes, next(mids), planes, stride))
                in_planes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(STAGE_WIDTHS[-1], num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def _builder(depth: int) -> Callable[..., nn.Module]:
    """The registered builder of ResNet-``depth`` (one per depth, same options)."""

    def build(
        *,
        num_classes: int,
        in_channels: int,
        input_size: int,
        block_widths: Sequence[int] | None = None,
    ) -> nn.Module:
        if input_size < 4:
            raise ValueError(f"resnet{depth}: input_size={input_size} is too small; use >= 4")
        return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels, block_widths=block_widths)

    build.__name__ = build.__qualname__ = f"resnet{depth}"
    build.__doc__ = f"ResNet-{depth} for CIFAR ({(depth - 2) // 6} blocks per stage)."
    return build


resnet20 = register_model("resnet20")(_builder(20))
resnet32 = register_model("resnet32")(_builder(32))
resnet56 = register_model("resnet56")(_builder(56))  # 1.25e8 MACs, 8.5e5 weights at 32x32
resnet110 = register_model("resnet110")(_builder(110))  # 2.53e8 MACs, 1.72e6 weights
