"""model=timm: any timm model by name, untrained, with model.weights from a state dict, a timm
training checkpoint or a .safetensors file (weights_only, strict, keys named)."""

from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import save_file

from experiments.models import MODELS, timm_model
from experiments.models.checkpoint import CheckpointError, load_weights


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def build(seed: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm_model(num_classes=4, in_channels=kwargs.pop("in_channels", 3), input_size=32, **kwargs)


def test_builds_any_timm_model_with_the_dataset_shapes():
    model = MODELS["timm"](name="mobilenetv3_small_050", num_classes=7, in_channels=1, input_size=28).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    fixed = build(0, name="visformer_tiny")  # built for one input size: built for input_size
    with torch.no_grad():
        assert fixed.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet81'; close matches: .*resnet18"):
        build(0, name="resnet81")


def test_state_dict_timm_checkpoint_and_safetensors_load_strictly(tmp_path):
    source = build(1, name="resnet10t")
    sd = source.state_dict()
    torch.save(sd, tmp_path / "plain.pth")
    # what timm's train.py writes: weights, optimizer state and its argparse arguments
    ckpt = {"epoch": 3, "arch": "resnet10t", "state_dict": sd, "optimizer": {}, "version": 2}
    torch.save({**ckpt, "args": argparse.Namespace(model="resnet10t", lr=0.1)}, tmp_path / "checkpoint.pth.tar")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "model.safetensors")
    for name, fmt in (
        ("plain.pth", "state_dict"),
        ("checkpoint.pth.tar", "timm checkpoint"),
        ("model.safetensors", "safetensors"),
    ):
        target = build(2, name="resnet10t")
        assert not same_weights(target, source)
        assert load_weights(target, tmp_path / name, "model.weights")["format"] == fmt
        assert same_weights(target, source), name
    assert same_weights(build(3, name="resnet10t", weights=str(tmp_path / "checkpoint.pth.tar")), source)


def test_weights_that_do_not_fit_name_the_keys(tmp_path):
    torch.save(build(1, name="resnet10t").state_dict(), tmp_path / "r10.pth")
    with pytest.raises(CheckpointError, match=r"model.weights=.*does not fit.*missing keys.*layer2"):
        build(0, name="resnet14t", weights=str(tmp_path / "r10.pth"))
    torch.save({"state_dict": build(1, name="resnet10t").state_dict(), "net": torch.nn.Linear(2, 2)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"weights_only=True"):  # a pickled module is never unpickled
        build(0, name="resnet10t", weights=str(tmp_path / "x.pt"))
