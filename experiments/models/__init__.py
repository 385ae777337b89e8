"""The model zoo: registered builders, each ``builder(num_classes=, in_channels=,
input_size=, **options) -> nn.Module``; ``build_model(name, ...)`` is the Hydra target.
"""

from experiments.models import lenet, mobilenet_cifar, resnet_cifar, timm_models, torchvision_models, vgg
from experiments.models.registry import (
    MODELS,
    UnknownModelError,
    build_model,
    conv_layers,
    list_models,
    register_model,
)
from experiments.models.resnet_cifar import PadShortcut
from experiments.models.timm_models import timm_model
from experiments.models.torchvision_models import torchvision_model

__all__ = [
    "MODELS",
    "PadShortcut",
    "UnknownModelError",
    "build_model",
    "conv_layers",
    "lenet",
    "list_models",
    "mobilenet_cifar",
    "register_model",
    "resnet_cifar",
    "timm_model",
    "timm_models",
    "torchvision_model",
    "torchvision_models",
    "vgg",
]
