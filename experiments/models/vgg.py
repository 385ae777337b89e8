"""VGG-style nets: ``vgg_small`` for CPU-scale studies and Li et al.'s CIFAR VGG-16.

Both take explicit per-conv ``widths`` so a pruned architecture can be rebuilt and
trained from scratch (Scratch-E / Scratch-B of Liu et al. 2019).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from experiments.models.registry import init_weights, register_model

POOL = "M"

VGG_SMALL = (16, 16, POOL, 32, 32, POOL, 64, POOL)
VGG16_CIFAR = (
    64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL,
    512, 512, 512, POOL, 512, 512, 512, POOL,
)  # fmt: skip


class VGG(nn.Module):
    """Conv3x3-BN-ReLU stages with 2x2 max-pools, then Linear-BN-ReLU-Linear.

    ``cfg`` lists conv widths and ``"M"`` for a pool. Convs and the hidden Linear have no
    bias (BatchNorm follows each). The first Linear's input size is computed from
    ``input_size`` (each channel of the last conv owns ``side * side`` inputs);
    ``name`` only labels error messages.
    """

    def __init__(
        self,
        cfg: Sequence[int | str],
        *,
        num_classes: int,
        in_channels: int,
        input_size: int,
        hidden: int,
        name: str = "VGG",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = in_channels, input_size
        for item in cfg:
            if item == POOL:
                layers.append(nn.MaxPool2d(2))
                side //= 2
                continue
            layers += [
                nn.Conv2d(channels, item, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(item),
                nn.ReLU(inplace=True),
            ]
            channels = item
        if side < 1:
            pools = sum(item == POOL for item in cfg)
            raise ValueError(
                f"{name}: input_size={input_size} is too small for {pools} 2x2 max-pools; use input_size >= {2**pools}"
            )
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(channels * side * side, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.features(x)))


def _with_widths(model: str, cfg: Sequence[int | str], widths: Sequence[int]) -> list:
    """``cfg`` with its conv widths replaced by ``widths`` (pools kept in place)."""
    widths = [int(w) for w in widths]
    n_convs = sum(item != POOL for item in cfg)
    if len(widths) != n_convs or min(widths) < 1:
        raise ValueError(f"{model}: widths={widths} must be {n_convs} positive ints, one per conv")
    it = iter(widths)
    return [item if item == POOL else next(it) for item in cfg]


@register_model("vgg_small")
def vgg_small(
    *,
    num_classes: int,
    in_channels: int,
    input_size: int,
    width: float = 1.0,
    widths: Sequence[int] | None = None,
    hidden: int = 256,
) -> nn.Module:
    """Narrow VGG (16,16,M,32,32,M,64,M; fc 256) for Fashion-MNIST-scale studies on CPU.

    ``width`` multiplies every conv width; ``widths`` (5 ints) sets them explicitly
    (a pruned architecture) and overrides ``width``.
    """
    if widths is None:
        if width <= 0:
            raise ValueError(f"vgg_small: width={width} must be > 0")
        widths = [max(1, round(item * width)) for item in VGG_SMALL if item != POOL]
    cfg = _with_widths("vgg_small", VGG_SMALL, widths)
    return VGG(
        cfg,
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=input_size,
        hidden=hidden,
        name="vgg_small",
    )


@register_model("vgg16_cifar")
def vgg16_cifar(
    *,
    num_classes: int,
    in_channels: int,
    input_size: int,
    widths: Sequence[int] | None = None,
    hidden: int = 512,
) -> nn.Module:
    """VGG-16 for CIFAR as in Li et al. 2017 (3.13e8 MACs, 1.5e7 weights at 32x32).

    ``widths`` (13 ints) builds a pruned architecture, e.g. pruned-A:
    [32, 64, 128, 128, 256, 256, 256, 256, 256, 256, 256, 256, 256].
    """
    cfg = VGG16_CIFAR if widths is None else _with_widths("vgg16_cifar", VGG16_CIFAR, widths)
    return VGG(
        cfg,
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=input_size,
        hidden=hidden,
        name="vgg16_cifar",
    )
