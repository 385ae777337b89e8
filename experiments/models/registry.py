"""The model registry: names -> builders, so configs and tests can enumerate the zoo.

Every builder takes the keyword arguments ``num_classes``, ``in_channels`` and
``input_size`` (side of the square input image) so a dataset can be swapped without
touching the model config, plus its own options. Configs select a model with
``_target_: experiments.models.build_model`` and ``name: <registered name>``
(``tv.yaml`` targets its builder directly: there ``name`` is torchvision's model name).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType

from torch import nn

from experiments.checks import check_number

ModelBuilder = Callable[..., nn.Module]

IO_ARGS = ("num_classes", "in_channels", "input_size")


class UnknownModelError(KeyError):
    """A model name that is not registered (a ``KeyError`` with a readable message)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


_BUILDERS: dict[str, ModelBuilder] = {}
MODELS: Mapping[str, ModelBuilder] = MappingProxyType(_BUILDERS)
"""Read-only view of the registry: name -> builder (register with ``register_model``)."""


def _check_io(name: str, kwargs: dict) -> None:
    missing = [key for key in IO_ARGS if key not in kwargs]
    if missing:
        raise TypeError(
            f"model '{name}' needs the keyword arguments {', '.join(IO_ARGS)}; missing: "
            f"{', '.join(missing)} (the pipeline passes them from the dataset)"
        )
    for key in IO_ARGS:
        check_number(f"model '{name}': {key}", kwargs[key], 1, integer=True)


def _check_options(name: str, builder: ModelBuilder, kwargs: dict) -> None:
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        accepted = ", ".join(p for p in params if p not in IO_ARGS) or "(none)"
        raise TypeError(f"model '{name}' got unknown option(s) {unknown}; its options are: {accepted}")


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a builder under ``name``; a second registration of the same name raises.

    The registered function checks the common arguments (``num_classes``,
    ``in_channels``, ``input_size``) and rejects unknown options with a message that
    lists the accepted ones, whether it is called directly or through ``build_model``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS:
            existing = _BUILDERS[name]
            raise ValueError(
                f"model name '{name}' is already registered by "
                f"{existing.__module__}.{existing.__qualname__}; choose another name"
            )

        @functools.wraps(builder)
        def checked(**kwargs) -> nn.Module:
            _check_io(name, kwargs)
            _check_options(name, builder, kwargs)
            return builder(**kwargs)

        _BUILDERS[name] = checked
        return checked

    return decorator


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_BUILDERS)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` (Hydra target of every conf/model/*.yaml)."""
    if name not in _BUILDERS:
        raise UnknownModelError(
            f"unknown model '{name}'; registered models: {', '.join(list_models())} "
            "(torchvision models: model=tv model.name=<torchvision name>)"
        )
    return _BUILDERS[name](**kwargs)


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the ``nn.Conv2d`` modules of ``model`` in definition order.

    For the zoo models definition order is forward order (a test checks it), so entry
    ``i - 1`` is the paper's "conv layer i" (Li et al. 2017 number convs from 1, the
    stem; in a CIFAR ResNet block k's first conv is layer 2 + 2k).
    """
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def init_weights(model: nn.Module) -> nn.Module:
    """He-normal conv weights (fan-out, ReLU), BatchNorm scale 1 and shift 0, zero conv bias.

    The initialisation of He et al. 2016 used by the CIFAR ResNet/VGG reference code;
    Linear layers keep PyTorch's default.
    """
    model._init_rule = "he_fan_out"  # so a pruned copy can be re-initialised the same way
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def reinitialize_like(model: nn.Module) -> nn.Module:
    """Re-initialise every layer of ``model`` (e.g. a pruned architecture) as its builder
    initialised the original: PyTorch's default per layer, then the builder's rule (He
    init for the zoo's CIFAR nets), each for the layer's current fan-in/fan-out."""
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
    if getattr(model, "_init_rule", None) == "he_fan_out":
        init_weights(model)
    return model
