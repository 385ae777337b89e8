"""LeNet-300-100 and the Caffe LeNet-5, the MNIST nets of Han et al. 2015 / 2016."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from experiments.models.registry import register_model


@register_model("lenet300")
def lenet300(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """LeNet-300-100: three fully connected layers (266,200 weights on 28x28x1, 10 classes)."""
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(in_channels * input_size * input_size, 300),
            relu1=nn.ReLU(inplace=True),
            fc2=nn.Linear(300, 100),
            relu2=nn.ReLU(inplace=True),
            fc3=nn.Linear(100, num_classes),
        )
    )


def _conv_pool_side(side: int) -> int:
    """Side after a 5x5 valid conv and a 2x2 max-pool."""
    return (side - 4) // 2


@register_model("lenet5")
def lenet5(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """Caffe's LeNet-5 as pruned by Han et al.: 430,500 weights on 28x28x1, 10 classes.

    conv 20@5x5, pool, conv 50@5x5, pool, fc 500, ReLU, fc. As in Caffe's prototxt there
    is no nonlinearity after the convolutions, only after fc1.
    """
    side = _conv_pool_side(_conv_pool_side(input_size))
    if side < 1:
        raise ValueError(
            f"lenet5: input_size={input_size} is too small; two 5x5 convs and two 2x2 pools need input_size >= 16"
        )
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_channels, 20, kernel_size=5),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(20, 50, kernel_size=5),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(50 * side * side, 500),
            relu1=nn.ReLU(inplace=True),
            fc2=nn.Linear(500, num_classes),
        )
    )
