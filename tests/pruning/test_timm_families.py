"""One model per timm CNN family (tests/pruning/timm_families.json, written by
``python -m experiments.bench.timm_families --write``): each prunes at 0.3 and, in float64,
the cut model equals the dense model with the same channels zeroed wherever the engine calls
the cut exact. A family the engine refuses raises ChannelMappingError naming a module, and
the ignore it suggests then succeeds."""

from __future__ import annotations

import ast
import copy
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import pruning
from pruning.structured import group_name
from tests.pruning.test_structured import outputs, randomize_bn, zeroed_reference

timm = pytest.importorskip("timm")

LIST = json.loads((Path(__file__).with_name("timm_families.json")).read_text())
ENTRIES = {e["model"]: e for e in LIST["models"]}
# over 2.5 s each on one core of a shared 2-core machine (timm 1.0.31); the whole file: about 90 s
SLOW = {"mobilenetv5_base", "pnasnet5large", "inception_resnet_v2", "nasnetalarge", "efficientformer_l1"}
RATIO = 0.3


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(entry: dict) -> tuple[nn.Module, torch.Tensor]:
    """The listed model (untrained, 10 classes, non-trivial BatchNorm) and its input, in float64."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = {**entry.get("kwargs", {}), **entry.get("test_kwargs", {})}  # narrower or shallower, same blocks
        model = timm.create_model(entry["model"], pretrained=False, num_classes=10, **kwargs)
    model = randomize_bn(model).double().eval()
    size = entry["input_size"]
    return model, torch.randn(1, 3, size, size, dtype=torch.float64)


def suggested_ignore(err: Exception, model: nn.Module) -> list[str]:
    """The ``ignore=[...]`` a refusal suggests; every name is a module of ``model``."""
    found = re.search(r"ignore=(\[[^\]]*\])", str(err))
    assert found, f"the refusal suggests no ignore: {err}"
    names = ast.literal_eval(found.group(1))
    modules = dict(model.named_modules())
    assert names and all(n in modules for n in names), names
    return names


def assert_exact(dense: nn.Module, cut: nn.Module, record: pruning.PruningRecord, x: torch.Tensor) -> None:
    got, want = outputs(cut, x), outputs(zeroed_reference(dense, record), x)
    scale = max(1.0, want.abs().max().item())
    assert (got - want).abs().max().item() < 1e-6 * scale


def check_family(entry: dict) -> None:
    model, x = build(entry)
    dense = copy.deepcopy(model)
    ignore: list[str] = []
    for _ in range(3):  # a refusal names a module; its suggested ignore must then do
        try:
            groups = pruning.dependency_groups(dense, x, ignore)
            break
        except pruning.ChannelMappingError as err:
            ignore += suggested_ignore(err, model)
    else:
        pytest.fail(f"still refused after ignore={ignore}")
    before = sum(p.numel() for p in model.parameters())
    while True:
        try:
            record = pruning.prune_filters(model, x, RATIO, ignore=ignore)
            break
        except pruning.ChannelMappingError as err:
            assert torch.equal(outputs(model, x), outputs(dense, x)), "a refused cut changed the model"
            names = suggested_ignore(err, model)
            assert not set(names) <= set(ignore), f"ignore={ignore} did not help: {err}"
            ignore += names
    assert len(record) > 0 and sum(p.numel() for p in model.parameters()) < before
    prunable = [g for g in groups if g.n_prunable > 0]
    if all(g.exact for g in prunable):
        assert_exact(dense, model, record, x)
        return
    exact = {group_name(g): RATIO for g in prunable if g.exact}
    if exact:  # the cut the engine calls exact, alone
        model = copy.deepcopy(dense)
        assert_exact(dense, model, pruning.prune_filters(model, x, exact, ignore=ignore), x)


def _param(entry: dict):
    return pytest.param(entry, id=entry["model"], marks=[pytest.mark.slow] if entry["model"] in SLOW else [])


@pytest.mark.parametrize("entry", [_param(e) for e in LIST["models"]])
def test_family_prunes_exactly(entry):
    check_family(entry)


def test_eca_cuts_approximately_when_asked():
    model, x = build(ENTRIES["ecaresnet26t"])
    dense = copy.deepcopy(model)
    groups = pruning.dependency_groups(dense, x)
    stream = next(g for g in groups if any(m.name == "layer1.0.conv3" and m.dim == 0 for m in g.members))
    assert stream.n_prunable == 0 and "approximate=('eca',)" in " ".join(stream.reasons)  # exact by default: kept
    with pytest.warns(UserWarning, match="approximate cut"):
        record = pruning.prune_filters(model, x, RATIO, approximate=("eca",))
    measured = (outputs(model, x) - outputs(zeroed_reference(dense, record), x)).abs().max().item()
    assert record.approximation_error == pytest.approx(measured, rel=1e-6, abs=1e-12)
    assert model.layer1[0].conv3.out_channels < dense.layer1[0].conv3.out_channels  # the ECA-gated stream is cut
