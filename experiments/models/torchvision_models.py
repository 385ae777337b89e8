"""Any torchvision classification model by name, untrained or from a weights file.

``model=tv model.name=resnet50`` selects it from the command line; ``conf/model/tv.yaml``
targets ``torchvision_model`` directly because its ``name`` is torchvision's name.
``model.weights=PATH`` loads a state dict (e.g. torchvision's ``resnet18-f37072fd.pth``, or
one saved with ``torch.save(model.state_dict(), PATH)``) strictly into the built model.
"""

from __future__ import annotations

import torchvision
from torch import nn

from experiments.models.checkpoint import load_weights
from experiments.models.registry import register_model

# These two return auxiliary logits in training mode unless told not to; the pipeline
# expects a plain logits tensor.
_NO_AUX_LOGITS = frozenset({"googlenet", "inception_v3"})


def classification_models() -> list[str]:
    """torchvision's classification model names (``torchvision.models`` top level)."""
    return torchvision.models.list_models(module=torchvision.models)


def _replace_stem(model: nn.Module, name: str, in_channels: int) -> None:
    """Swap the first conv (3 input channels) for one with ``in_channels`` inputs."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            break
    else:
        raise ValueError(f"tv '{name}': no Conv2d found to adapt to in_channels={in_channels}")
    if module.in_channels != 3 or module.groups != 1:
        raise ValueError(
            f"tv '{name}': its first conv '{path}' ({module}) is not a plain 3-channel stem; "
            f"cannot adapt it to in_channels={in_channels}. Use a 3-channel dataset or a "
            "zoo model (experiments.models.MODELS)"
        )
    stem = nn.Conv2d(
        in_channels,
        module.out_channels,
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
    )
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, stem)


@register_model("tv")
def torchvision_model(
    *, num_classes: int, in_channels: int, input_size: int, name: str = "resnet18", weights: str | None = None
) -> nn.Module:
    """torchvision's ``name`` with ``num_classes`` outputs and an ``in_channels`` stem.

    Built untrained (torchvision's ``weights=None``; no network), then, with ``weights``, the
    file's tensors are loaded strictly (``experiments.models.checkpoint.load_weights``: the
    file's classifier must have ``num_classes`` outputs). A non-RGB input gets a fresh first
    conv with the same geometry. ViTs are built for ``input_size``; the other models pool
    adaptively, so ``input_size`` only has to survive their downsampling.
    """
    names = classification_models()
    if name not in names:
        raise ValueError(f"unknown torchvision classification model '{name}'; choose one of: {', '.join(names)}")
    options: dict = {"weights": None, "num_classes": num_classes}
    if name in _NO_AUX_LOGITS:
        options["aux_logits"] = False
        options["init_weights"] = True
    if name.startswith("vit_"):
        options["image_size"] = input_size
    model = torchvision.models.get_model(name, **options)
    if in_channels != 3:
        _replace_stem(model, name, in_channels)
    if weights:
        load_weights(model, weights, "model.weights")
    return model
