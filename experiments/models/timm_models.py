"""Any timm model by name, untrained or from a weights file (``model=timm model.name=NAME``).

``conf/model/timm.yaml`` targets ``timm_model`` directly because its ``name`` is timm's
model name (``timm.list_models()``). The model is always built untrained (timm's
``pretrained=False``: nothing is downloaded) with ``num_classes`` outputs and ``in_channels``
input channels; a model built for one input size (``fixed_input_size`` in its config) is
built for ``input_size``. ``model.weights=PATH`` then loads a state dict, a timm training
checkpoint (``{'state_dict': ..., 'args': ...}``, as timm's train.py writes it) or a
``.safetensors`` file strictly into it (``experiments.models.checkpoint.load_weights``:
``weights_only``, mismatching keys named).
"""

from __future__ import annotations

import difflib

from torch import nn

from experiments.models.checkpoint import load_weights
from experiments.models.registry import register_model


def timm_models() -> list[str]:
    """timm's model names (``timm.list_models()``)."""
    import timm

    return timm.list_models()


@register_model("timm")
def timm_model(
    *, num_classes: int, in_channels: int, input_size: int, name: str = "resnet18", weights: str | None = None
) -> nn.Module:
    """timm's ``name`` with ``num_classes`` outputs and ``in_channels`` inputs, untrained, then
    (with ``weights``) the file's tensors loaded strictly (its classifier must have
    ``num_classes`` outputs)."""
    import timm

    names = timm_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=8, cutoff=0.6)
        raise ValueError(
            f"unknown timm model '{name}'"
            + (f"; close matches: {', '.join(close)}" if close else "")
            + " (timm.list_models() lists them all)"
        )
    options: dict = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    if timm.models.get_pretrained_cfg(name).fixed_input_size:
        options["img_size"] = input_size
    model = timm.create_model(name, **options)
    if weights:
        load_weights(model, weights, "model.weights")
    return model
