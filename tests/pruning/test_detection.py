"""Whole detectors and segmenters prune in the mode they are given (eval): torchvision's
detection and segmentation models and a YOLO-style net. Exactness is checked on the tensors
before post-processing (backbone/FPN features, head logits and box regressions) against the
dense model with the removed channels zeroed (float64); the heads keep their classes and
anchors; the record replays. Then the trace's handling of modes and train-only branches."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
import torchvision.models.detection as D
import torchvision.models.segmentation as S
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

import pruning
from tests.pruning.test_structured import randomize_bn, zeroed_reference
from tests.pruning.yolo import TinyYOLO


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tensors(obj) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    return []


def tap(model: nn.Module, inputs, names: list[str]) -> dict[str, list[Tensor]]:
    """The tensors that the named submodules return (every call), and the model's outputs."""
    store: dict[str, list[Tensor]] = {n: [] for n in names}
    hooks = [
        model.get_submodule(n).register_forward_hook(lambda m, a, out, n=n: store[n].extend(_tensors(out)))
        for n in names
    ]
    try:
        with torch.no_grad():
            store["<output>"] = _tensors(model(inputs))
    finally:
        for h in hooks:
            h.remove()
    return store


def close(a: Tensor, b: Tensor) -> bool:
    if not a.is_floating_point():
        return torch.equal(a, b)
    return a.shape == b.shape and (not a.numel() or (a - b).abs().max().item() <= 1e-9 * (1 + b.abs().max().item()))


def assert_kept(a: Tensor, b: Tensor, key: str) -> None:
    """``a`` (pruned) equals ``b`` (zeroed dense); a feature map that lost channels equals
    ``b``'s channels it kept, in order (every channel of ``a`` matched, none twice)."""
    if a.shape == b.shape:
        assert close(a, b), key
        return
    assert a.dim() == b.dim() > 1 and a.shape[1] < b.shape[1], (key, a.shape, b.shape)
    assert a.shape[:1] + a.shape[2:] == b.shape[:1] + b.shape[2:], (key, a.shape, b.shape)
    i = 0
    for j in range(a.shape[1]):
        while i < b.shape[1] and not close(a[:, j], b[:, i]):
            i += 1
        assert i < b.shape[1], f"{key}: channel {j} of the pruned tensor is none of the dense one's"
        i += 1


def modes(model: nn.Module) -> list[tuple[str, bool]]:
    return [(n, m.training) for n, m in model.named_modules()]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_whole(model: nn.Module, inputs, taps: list[str], heads: list[str], ratio: float = 0.3, **kw):
    """Prune a float64 ``model`` (eval) whole and check: modes untouched, fewer parameters, the
    ``heads`` keep their outputs, the ``taps`` and outputs equal the zeroed dense model's, and
    the record replays onto a dense copy. Returns (model, record, dense)."""
    model = randomize_bn(model).double().eval()
    inputs = [x.double() for x in inputs] if isinstance(inputs, list) else inputs.double()
    before = modes(model)
    dense = copy.deepcopy(model)
    record = pruning.prune_filters(model, inputs, ratio, **kw)
    assert modes(model) == before  # the trace ran the model as given and left every mode alone
    assert len(record) > 0 and n_params(model) < n_params(dense)
    for name in heads:
        assert model.get_submodule(name).weight.shape[0] == dense.get_submodule(name).weight.shape[0], name
    got = tap(model, inputs, taps)
    want = tap(zeroed_reference(dense, record), inputs, taps)
    for key in want:
        assert len(got[key]) == len(want[key]) > 0, key
        for a, b in zip(got[key], want[key]):
            assert_kept(a, b, key)
    buf = io.BytesIO()
    pruning.save_pruned(model, record, buf)
    buf.seek(0)
    fresh = pruning.load_pruned(lambda: copy.deepcopy(dense), buf)
    assert list(fresh.state_dict()) == list(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    return model, record, dense


# ---- torchvision detectors ----------------------------------------------------------------
NC = 3
TV = dict(weights=None, weights_backbone=None, num_classes=NC)
FEW = dict(rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=20, box_detections_per_img=4)


def _ssdlite() -> nn.Module:
    model = D.ssdlite320_mobilenet_v3_large(**TV)
    model.transform.fixed_size = (160, 160)  # anchors follow the feature maps: any size works
    return model


DETECTORS = {
    "fasterrcnn_mobilenet_v3_large_fpn": (
        lambda: D.fasterrcnn_mobilenet_v3_large_fpn(min_size=128, max_size=128, **FEW, **TV),
        128,
        ["backbone", "rpn.head", "roi_heads.box_predictor"],
        ["rpn.head.cls_logits", "rpn.head.bbox_pred", "roi_heads.box_predictor.cls_score"],
    ),
    "retinanet_resnet50_fpn": (
        lambda: D.retinanet_resnet50_fpn(min_size=64, max_size=64, **TV),
        64,
        ["backbone", "head"],
        ["head.classification_head.cls_logits", "head.regression_head.bbox_reg"],
    ),
    "fcos_resnet50_fpn": (
        lambda: D.fcos_resnet50_fpn(min_size=64, max_size=64, **TV),
        64,
        ["backbone", "head"],
        ["head.classification_head.cls_logits", "head.regression_head.bbox_reg", "head.regression_head.bbox_ctrness"],
    ),
    "ssdlite320_mobilenet_v3_large": (
        _ssdlite,
        160,
        ["backbone", "head"],
        [f"head.{h}_head.module_list.{i}.1" for h in ("classification", "regression") for i in range(6)],
    ),
    "maskrcnn_resnet50_fpn": (
        lambda: D.maskrcnn_resnet50_fpn(min_size=64, max_size=64, **FEW, **TV),
        64,
        ["backbone", "rpn.head", "roi_heads.box_predictor", "roi_heads.mask_predictor"],
        ["rpn.head.cls_logits", "roi_heads.box_predictor.bbox_pred", "roi_heads.mask_predictor.mask_fcn_logits"],
    ),
}


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_torchvision_detector_prunes_whole_in_eval_mode(name):
    build, size, taps, heads = DETECTORS[name]
    torch.manual_seed(0)
    images = [torch.rand(3, size, size)]  # the detector's one argument: a list of images
    model = build().eval()
    # GroupNorm (FCOS's head) normalises over groups of channels: cutting them is inexact (like
    # LayerNorm in test_torchvision_families), so the exact check leaves those groups whole
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.GroupNorm)]
    if norms:
        assert any(not g.exact for g in pruning.dependency_groups(model, images))
    model, record, dense = check_whole(model, images, taps, heads, ignore=norms)
    assert any(e.name.startswith("backbone.body") or e.name.startswith("backbone.features") for e in record.entries)
    with torch.no_grad():
        (det,) = model([images[0].double()])
    assert set(det) >= {"boxes", "scores", "labels"} and bool((det["labels"] < NC).all())


def frozen_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every BatchNorm2d replaced by a FrozenBatchNorm2d with random statistics, as in a
    torchvision detector built with pretrained weights."""
    g = torch.Generator().manual_seed(seed)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.BatchNorm2d):
            f = FrozenBatchNorm2d(m.num_features, m.eps)
            n = m.num_features
            f.weight.copy_(torch.rand(n, generator=g) + 0.5)
            f.bias.copy_(torch.randn(n, generator=g) * 0.1)
            f.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            f.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, f)
    return model


def test_pretrained_detector_with_frozen_batchnorm_prunes_its_backbone():
    build, size, taps, heads = DETECTORS["fasterrcnn_mobilenet_v3_large_fpn"]
    torch.manual_seed(0)
    model = frozen_bn(build().eval())
    model, record, _ = check_whole(model, [torch.rand(3, size, size)], taps, heads)
    frozen = {
        e.name
        for e in record.entries
        if e.kind == "module" and isinstance(model.get_submodule(e.name), FrozenBatchNorm2d)
    }
    assert "backbone.body.0.1" in frozen and len(frozen) > 20


@pytest.mark.parametrize(
    "build",
    [
        lambda: S.deeplabv3_mobilenet_v3_large(aux_loss=True, **TV),
        lambda: S.lraspp_mobilenet_v3_large(**TV),
        lambda: S.fcn_resnet50(aux_loss=True, **TV),
    ],
    ids=["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "fcn_resnet50"],
)
def test_torchvision_segmenter_prunes_whole(build):
    torch.manual_seed(0)
    model, _, _ = check_whole(build(), torch.rand(1, 3, 64, 64), ["backbone", "classifier"], [])
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64, dtype=torch.float64))["out"].shape == (1, NC, 64, 64)


# ---- a YOLO-style detector ----------------------------------------------------------------
def test_yolo_style_detector_prunes_whole():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64)
    taps = ["h2", "h3", "h4"] + [f"detect.{b}.{i}" for b in ("cv2", "cv3") for i in range(3)]
    heads = [f"detect.{b}.{i}.2" for b in ("cv2", "cv3") for i in range(3)] + ["detect.dfl.conv"]
    model, record, dense = check_whole(TinyYOLO(nc=NC), x, taps, heads)
    # chunk halves whatever cv1 gives; a fixed-size split keeps cv1's channels
    assert model.b2.cv1.conv.out_channels < 16 and model.b4.cv1.conv.out_channels < 32
    assert model.b6.cv1.conv.out_channels == 64 and model.b6.cv2.conv.in_channels == 3 * 32
    assert model.b6.m[0].cv1.conv.out_channels < 32
    # SPPF: four copies of cv1's channels into cv2; the necks' concatenations shrink too
    assert model.b9.cv2.conv.in_channels == 4 * model.b9.cv1.conv.out_channels < 4 * 32
    assert model.h1.cv1.conv.in_channels == model.b9.cv2.conv.out_channels + model.b6.cv2.conv.out_channels < 128
    with torch.no_grad():
        assert model(x.double()).shape == (1, 4 + NC, 8 * 8 + 4 * 4 + 2 * 2)
        raw = model.train()(x.double())  # the training path still runs on the pruned model
    assert [t.shape[1] for t in raw] == [4 * 4 + NC] * 3


# ---- modes and train-only branches --------------------------------------------------------
class AuxNet(nn.Module):
    """An auxiliary head that runs only in training mode (like GoogLeNet's), optionally only
    with targets (like a detector's loss branch)."""

    def __init__(self, needs_targets: bool = False):
        super().__init__()
        self.needs_targets = needs_targets
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)
        self.aux = nn.Sequential(nn.Conv2d(8, 6, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))

    def forward(self, x: Tensor, targets: Tensor | None = None):
        y = F.relu(self.bn(self.stem(x)))
        out = self.head(F.relu(self.body(y)).mean((2, 3)))
        if not self.training:
            return out
        if self.needs_targets and targets is None:
            raise ValueError("targets should not be none when in training mode")
        return out, self.aux(y)


X = torch.randn(2, 3, 8, 8)


def test_train_only_branch_is_traced_in_training_mode():
    torch.manual_seed(0)
    model = AuxNet().eval()
    model.bn.train()  # a mixed mode is kept as it is
    before = modes(model)
    stats = model.bn.running_mean.clone()
    pruning.prune_filters(model, X, 0.5)
    assert modes(model) == before and torch.equal(model.bn.running_mean, stats[: model.bn.num_features])
    assert model.stem.out_channels == model.aux[0].in_channels == 4  # the aux head's inputs were cut too
    assert model.aux[4].out_features == 4
    out, aux = model.train()(X)
    assert aux.shape == (2, 4)


def test_unreachable_train_only_branch_is_a_clear_error():
    model = AuxNet(needs_targets=True).eval()
    with pytest.raises(pruning.graph.ChannelMappingError) as err:
        pruning.prune_filters(model, X, 0.5)
    msg = str(err.value)
    assert "'aux.0' (Conv2d)" in msg and "'aux.4' (Linear)" in msg and "targets should not be none" in msg
    assert "ignore=['aux']" in msg
    assert modes(model) == modes(AuxNet().eval()) and model.stem.out_channels == 8
    # inputs that let the training path run: the aux head is traced
    pruning.prune_filters(model, (X, torch.zeros(2)), 0.5)
    assert model.stem.out_channels == model.aux[0].in_channels == 4


def test_ignored_unreachable_branch_is_left_uncut():
    model = AuxNet(needs_targets=True).eval()
    pruning.prune_filters(model, X, 0.5, ignore=["aux"])
    assert model.stem.out_channels == 4 and model.aux[0].in_channels == 8  # as the error message warns
    assert not model.training and model(X).shape == (2, 4)


def test_modes_are_restored_when_the_forward_fails():
    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)
            self.block = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Dropout())

        def forward(self, x):
            self.block(self.bn(self.conv(x)))
            raise RuntimeError("boom")

    model = Fails()
    model.block.eval()
    before = modes(model)
    with pytest.raises(RuntimeError, match="boom"):
        pruning.dependency_groups(model, X)
    assert modes(model) == before
    assert "forward" not in model.conv.__dict__  # the shape-only forwards were taken off again


# ---- the post-processing ops the detectors use -------------------------------------------
@pytest.mark.parametrize("rows", [2, 0], ids=["rows", "no_rows"])
def test_per_level_buffer_and_box_ops(rows):
    """A buffer filled per level (``x[rows] = level``, as MultiScaleRoIAlign does) shares the
    levels' channels, also when no row is written (no detection); ``topk``, ``nonzero`` and
    ``stack`` over the last dim freeze what they turn into positions."""

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 6, 1)
            self.b = nn.Conv2d(3, 6, 1)
            self.fc = nn.Linear(6, 4)
            self.score = nn.Conv2d(6, 3, 1)

        def forward(self, x):
            pa, pb = self.a(x).mean((2, 3)), self.b(x).mean((2, 3))
            buf = torch.zeros(2 * rows, pa.shape[1])
            buf[torch.arange(rows) * 2] = pa.expand(rows, -1)
            buf[torch.arange(rows) * 2 + 1] = pb.expand(rows, -1)
            s = self.score(self.a(x)).flatten(1)
            top = s.topk(2, dim=1).indices
            keep = torch.nonzero(s > 0)
            boxes = torch.stack((s, s), dim=2)
            kth = s.kthvalue(1, dim=1).values
            spatial = self.a(x).flatten(2).sort(dim=2).values.msort().amax(2)  # channels stay in place
            return self.fc(buf + spatial), top, keep, boxes.sum(2), kth

    torch.manual_seed(0)
    model = Pooled().eval()
    groups = {g.names[0]: g for g in pruning.dependency_groups(model, X[:1])}
    assert {"a", "b"} <= set(groups["a"].names) and groups["a"].n_prunable == 6
    assert groups["score"].n_prunable == 0
    pruning.prune_filters(model, X[:1], 0.5)
    assert model.a.out_channels == model.b.out_channels == model.fc.in_features == 3
    assert model.score.out_channels == 3
