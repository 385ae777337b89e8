"""The model zoo: every registered model builds and runs, sizes match the papers."""

from __future__ import annotations

from pathlib import Path

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from experiments.models import (
    MODELS,
    PadShortcut,
    UnknownModelError,
    build_model,
    conv_layers,
    list_models,
    register_model,
)
from experiments.models.torchvision_models import classification_models

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "model"
IO_KEYS = ("num_classes", "in_channels", "input_size")
NEEDS_32 = {"vgg16_cifar"}  # five 2x2 max-pools: 28 -> 0
PAPER_SHAPES = [(10, 1, 28), (10, 3, 32)]


def paper_counts(model: nn.Module, channels: int, size: int) -> tuple[int, int]:
    """(MACs, weights) of conv and linear layers for one input (Li et al.'s rule)."""
    macs = 0

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        macs += output.numel() * module.weight[0].numel()

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, channels, size, size))
    for handle in handles:
        handle.remove()
    return macs, sum(m.weight.numel() for m in layers)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- registry-generated tests ----------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("classes,channels,size", PAPER_SHAPES)
def test_every_model_builds_and_runs(name: str, classes: int, channels: int, size: int) -> None:
    kwargs = dict(num_classes=classes, in_channels=channels, input_size=size)
    if name in NEEDS_32 and size < 32:
        with pytest.raises(ValueError, match=f"input_size={size}"):
            build_model(name, **kwargs)
        return
    model = build_model(name, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_conv_layers_are_in_forward_order(name: str) -> None:
    model = build_model(name, num_classes=10, in_channels=3, input_size=32).eval()
    called: list[str] = []
    for layer_name in conv_layers(model):
        model.get_submodule(layer_name).register_forward_hook(lambda *_, n=layer_name: called.append(n))
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert called == conv_layers(model)
    assert len(called) == sum(isinstance(m, nn.Conv2d) for m in model.modules())


def test_every_registered_model_has_a_config_and_vice_versa() -> None:
    assert sorted(p.stem for p in CONF_DIR.glob("*.yaml")) == list_models()


@pytest.mark.parametrize("name", list_models())
def test_config_instantiates_with_the_dataset_keys(name: str) -> None:
    cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    assert not set(IO_KEYS) & set(cfg), "the pipeline passes these; keep them out of the yaml"
    target = hydra.utils.get_method(cfg._target_)
    if target is build_model:
        assert cfg.name == name
    else:  # a builder targeted directly must be the registered one
        assert target is MODELS[name]
    model = hydra.utils.instantiate(cfg, num_classes=4, in_channels=3, input_size=32)
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 4)


# --- registry behaviour -----------------------------------------------------------------


def test_name_clash_raises_and_keeps_the_original() -> None:
    original = MODELS["lenet5"]
    with pytest.raises(ValueError, match="'lenet5' is already registered"):

        @register_model("lenet5")
        def other(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
            return nn.Identity()

    assert MODELS["lenet5"] is original


def test_unknown_name_lists_the_registered_models() -> None:
    with pytest.raises(UnknownModelError) as err:
        build_model("lenet7", num_classes=10, in_channels=1, input_size=28)
    message = str(err.value)
    assert "unknown model 'lenet7'" in message
    assert all(name in message for name in list_models())
    assert isinstance(err.value, KeyError)


def test_unknown_option_lists_accepted_options() -> None:
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['depth'\].*width, widths, hidden"):
        build_model("vgg_small", num_classes=10, in_channels=1, input_size=28, depth=3)


def test_missing_or_bad_dataset_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="missing: input_size"):
        build_model("lenet5", num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match="model 'lenet5': num_classes=0: must be an integer >= 1"):
        build_model("lenet5", num_classes=0, in_channels=1, input_size=28)


# --- exact sizes (Han et al. 2015; Li et al. 2017 Table 1) ------------------------------


@pytest.mark.parametrize("name,weights", [("lenet300", 266_200), ("lenet5", 430_500)])
def test_lenet_weight_counts_are_exact(name: str, weights: int) -> None:
    model = build_model(name, num_classes=10, in_channels=1, input_size=28)
    assert paper_counts(model, 1, 28)[1] == weights


def test_lenet5_layer_names_and_no_relu_between_convs() -> None:
    model = build_model("lenet5", num_classes=10, in_channels=1, input_size=28)
    skipped = (nn.MaxPool2d, nn.Flatten)
    names = [n for n, m in model.named_children() if not isinstance(m, skipped)]
    assert names == ["conv1", "conv2", "fc1", "relu1", "fc2"]
    assert model.fc1.in_features == 50 * 4 * 4
    rgb32 = build_model("lenet5", num_classes=10, in_channels=3, input_size=32)
    assert rgb32.fc1.in_features == 50 * 5 * 5


def _li_block_widths(n: int, ratios: tuple[float, float, float], skip: tuple[int, ...]) -> list[int]:
    """Li et al.'s ResNet rule: block k's first conv is layer 2 + 2k, kept = int(C(1 - p))."""
    widths = []
    for k in range(3 * n):
        stage = k // n
        full = (16, 32, 64)[stage]
        widths.append(full if 2 + 2 * k in skip else int(full * (1 - ratios[stage])))
    return widths


VGG16_PRUNED_A = [32, 64, 128, 128, 256, 256, 256, 256, 256, 256, 256, 256, 256]
TABLE_1 = [  # id, name, options, MACs, params
    ("VGG-16", "vgg16_cifar", {}, 3.13e8, 1.5e7),
    ("VGG-16-pruned-A", "vgg16_cifar", {"widths": VGG16_PRUNED_A}, 2.06e8, 5.4e6),
    ("ResNet-56", "resnet56", {}, 1.25e8, 8.5e5),
    ("ResNet-56-pruned-A", "resnet56",
     {"block_widths": _li_block_widths(9, (0.1, 0.1, 0.1), (16, 20, 38, 54))}, 1.12e8, 7.7e5),
    ("ResNet-56-pruned-B", "resnet56",
     {"block_widths": _li_block_widths(9, (0.6, 0.3, 0.1), (16, 18, 20, 34, 38, 54))},
     9.09e7, 7.3e5),
    ("ResNet-110", "resnet110", {}, 2.53e8, 1.72e6),
    ("ResNet-110-pruned-A", "resnet110",
     {"block_widths": _li_block_widths(18, (0.5, 0.0, 0.0), (36,))}, 2.13e8, 1.68e6),
    ("ResNet-110-pruned-B", "resnet110",
     {"block_widths": _li_block_widths(18, (0.5, 0.4, 0.3), (36, 38, 74))}, 1.55e8, 1.16e6),
]  # fmt: skip


@pytest.mark.parametrize("row,name,options,macs,params", TABLE_1, ids=[r[0] for r in TABLE_1])
def test_li_table1_macs_and_params(row: str, name: str, options: dict, macs: float, params: float) -> None:
    model = build_model(name, num_classes=10, in_channels=3, input_size=32, **options)
    got_macs, got_params = paper_counts(model, 3, 32)
    assert got_macs == pytest.approx(macs, rel=0.01)
    assert got_params == pytest.approx(params, rel=0.01)


# --- architecture details ----------------------------------------------------------------


def test_resnet_layer_numbering_follows_li() -> None:
    names = conv_layers(build_model("resnet56", num_classes=10, in_channels=3, input_size=32))
    assert len(names) == 1 + 2 * 27
    assert names[0] == "conv1"
    assert names[2 + 2 * 0 - 1] == "layer1.0.conv1"
    assert names[2 + 2 * 9 - 1] == "layer2.0.conv1"  # layer 20: first block of stage 2
    assert names[54 - 1] == "layer3.8.conv1"


def test_pad_shortcut_subsamples_and_zero_pads() -> None:
    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()
    model = build_model("resnet20", num_classes=10, in_channels=3, input_size=32)
    assert sum(isinstance(m, PadShortcut) for m in model.modules()) == 2
    assert torch.fx.symbolic_trace(model) is not None


def test_vgg_small_width_and_explicit_widths() -> None:
    def conv_widths(model: nn.Module) -> list[int]:
        return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]

    kwargs = dict(num_classes=10, in_channels=1, input_size=28)
    assert conv_widths(build_model("vgg_small", **kwargs)) == [16, 16, 32, 32, 64]
    assert conv_widths(build_model("vgg_small", width=0.5, **kwargs)) == [8, 8, 16, 16, 32]
    model = build_model("vgg_small", widths=[4, 5, 6, 7, 9], **kwargs)
    assert conv_widths(model) == [4, 5, 6, 7, 9]
    assert model.classifier[0].in_features == 9 * 3 * 3
    with pytest.raises(ValueError, match="must be 5 positive ints"):
        build_model("vgg_small", widths=[4, 5, 6], **kwargs)


def test_mobilenetv2_has_depthwise_convs_and_cifar_strides() -> None:
    model = build_model("mobilenetv2_cifar", num_classes=10, in_channels=3, input_size=32)
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert model.features(torch.zeros(1, 3, 32, 32)).shape == (1, 1280, 4, 4)
    half = build_model("mobilenetv2_cifar", num_classes=10, in_channels=3, input_size=32, width=0.5)
    assert half.features[0].conv.out_channels == 16


# --- torchvision by name ------------------------------------------------------------------


def test_tv_resnet18_with_one_channel_and_small_input() -> None:
    model = MODELS["tv"](name="resnet18", num_classes=7, in_channels=1, input_size=28).eval()
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (7, 7)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    cfg = OmegaConf.merge(OmegaConf.load(CONF_DIR / "tv.yaml"), {"name": "mobilenet_v3_small"})
    model = hydra.utils.instantiate(cfg, num_classes=5, in_channels=3, input_size=32).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_tv_unknown_name_lists_torchvision_models() -> None:
    expected = "unknown torchvision classification model 'resnet19'"
    with pytest.raises(ValueError, match=expected) as err:
        MODELS["tv"](name="resnet19", num_classes=10, in_channels=3, input_size=32)
    assert "resnet50" in str(err.value) and "vit_b_16" in str(err.value)
    assert "resnet50" in classification_models()
