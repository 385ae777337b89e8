"""The layers of a latency table: which modules a channel group cuts, the shapes they run at,
a copy of each cut to a channel assignment, and its time alone.

Support for :mod:`pruning.latency.table`, which predicts a model's latency as the sum of these
layer times.
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning.criteria import get_criterion
from pruning.evaluation import hooked_forward
from pruning.graph.groups import ChannelGroup
from pruning.graph.handlers import ChannelwiseHandler
from pruning.latency.comparison import make_timer, pinned_threads

_SAMPLE_S = 0.0005  # a timed sample repeats a layer until it lasts about this long


@dataclass
class LayerPart:
    """One (module, dim) slice of a layer that a group cuts: ``positions`` belong to ``channels``."""

    group: str
    dim: int
    positions: torch.Tensor
    channels: torch.Tensor
    size: int


@dataclass
class TimedLayer:
    """A module the groups cut: its parts per group, the handler that cuts it, the shapes it ran at."""

    name: str
    module: nn.Module
    handler: Any
    parts: list[LayerPart]
    in_shape: tuple[int, ...] = ()
    in_axis: int = 1
    out_shape: tuple[int, ...] = ()
    out_axis: int = 1
    groups: tuple[str, ...] = ()


def collect_layers(groups: Mapping[str, ChannelGroup]) -> list[TimedLayer]:
    """Every module member of ``groups`` (``{name: group}``) as a layer, with the parts each group cuts."""
    layers: dict[str, TimedLayer] = {}
    for name, g in groups.items():
        for m in g.members:
            if m.kind != "module":
                continue
            layer = layers.setdefault(m.name, TimedLayer(m.name, m.module, m.handler, []))
            layer.parts.append(LayerPart(name, m.dim, m.positions, m.channels, m.size))
    for layer in layers.values():
        layer.groups = tuple(dict.fromkeys(p.group for p in layer.parts))
    return list(layers.values())


def record_shapes(model: nn.Module, inputs: tuple, layers: list[TimedLayer]) -> list[TimedLayer]:
    """One forward pass with hooks: each layer's input/output shape and channel axes (first call).
    Returns the layers that ran."""
    by_module = {id(layer.module): layer for layer in layers}
    seen: set[int] = set()

    def hook(module: nn.Module, args: tuple, out: Any) -> None:
        layer = by_module.get(id(module))
        if layer is None or id(module) in seen or not args or not torch.is_tensor(args[0]):
            return
        seen.add(id(module))
        x = args[0]
        axis = layer.handler.channel_axis(module, x)
        layer.in_shape, layer.out_shape = tuple(x.shape), tuple(out.shape)
        layer.in_axis, layer.out_axis = axis % x.dim(), axis % out.dim()

    hooked_forward(model, inputs, [(layer.module, hook) for layer in layers])
    return [layer for layer in layers if id(layer.module) in seen]


def channel_ranks(model: nn.Module, groups: Mapping[str, ChannelGroup], criterion: Any) -> dict[str, torch.Tensor]:
    """Per group, its prunable channels best first by ``criterion`` (the order :func:`prune_to`
    keeps them in, so a predicted cut has the shapes the real one will have)."""
    crit = get_criterion(criterion)
    prepare = getattr(crit, "prepare", None)
    if prepare is not None:
        prepare(model, list(groups.values()))
    ranks = {}
    for name, g in groups.items():
        s = crit(g)
        cand = (~g.frozen).nonzero().flatten()
        if s is None:
            ranks[name] = cand
            continue
        s = torch.as_tensor(s).detach().to("cpu", torch.float64).flatten()
        ranks[name] = cand[torch.argsort(s[cand], descending=True, stable=True)]
    return ranks


def cut_layer(layer: TimedLayer, counts: Mapping[str, int], kept: Callable[[str, int], torch.Tensor]) -> nn.Module:
    """A copy of ``layer``'s module cut to ``counts`` (``{group: channels}`` for each of its groups);
    ``kept(group, count)`` says which of a group's channels stay."""
    module = copy.deepcopy(layer.module)
    removed: dict[int, torch.Tensor] = {}
    sizes: dict[int, int] = {}
    for p in layer.parts:
        gone = p.positions[~kept(p.group, counts[p.group])[p.channels]]
        removed.setdefault(p.dim, torch.zeros(p.size, dtype=torch.bool))[gone] = True
        sizes[p.dim] = p.size
    for dim in sorted(removed, reverse=True):
        keep = (~removed[dim]).nonzero().flatten()
        if len(keep) == 0:  # the real cut never empties a layer: it keeps one channel
            keep = torch.zeros(1, dtype=torch.long)
        if len(keep) == sizes[dim]:
            continue
        (layer.handler.prune_out if dim == 0 else layer.handler.prune_in)(module, keep)
    return module


def input_shape(layer: TimedLayer, module: nn.Module) -> tuple[int, ...]:
    """The input shape of the cut ``module``: the recorded one with its channel axis resized."""
    h = layer.handler
    shape = list(layer.in_shape)
    shape[layer.in_axis] = h.channels(module) if isinstance(h, ChannelwiseHandler) else h.in_channels(module)
    return tuple(shape)


def time_module(
    module: nn.Module, shape: tuple[int, ...], device: torch.device, threads: int | None, repeats: int
) -> float:
    """Ms of one eval-mode call of ``module`` on a random input of ``shape``: the fastest of
    ``repeats`` samples, each of enough back-to-back calls to last about half a millisecond.
    The minimum, not the median: layers are timed one by one at different moments, and on a
    loaded machine the minimum is what stays comparable between them (the model-level
    calibration absorbs the common difference to typical latency)."""
    x = torch.randn(shape, device=device)
    module.eval()
    timer = make_timer(module, (x,), device)
    with pinned_threads(threads, collect=False), torch.inference_mode():
        timer(2)
        once = timer(1)
        inner = max(1, min(1000, math.ceil(_SAMPLE_S / max(once, 1e-9))))
        return min(timer(inner) for _ in range(repeats)) * 1e3


def time_ratio(
    module: nn.Module,
    shape: tuple[int, ...],
    reference: nn.Module,
    reference_shape: tuple[int, ...],
    device: torch.device,
    threads: int | None,
    repeats: int,
) -> float:
    """Time of one call of ``module`` on ``shape`` over one of ``reference`` on ``reference_shape``:
    the two timed in alternation, ``2 x repeats + 1`` samples each, the median of the per-pair
    ratios. Load that slows the machine while it runs slows both sides, so entries timed at
    different moments stay comparable (each is this ratio times the reference's time)."""
    pair = []
    for m, s in ((module, shape), (reference, reference_shape)):
        m.eval()
        pair.append(make_timer(m, (torch.randn(s, device=device),), device))
    ratios = []
    with pinned_threads(threads, collect=False), torch.inference_mode():
        for t in pair:
            t(2)
        once = min(t(1) for t in pair)
        inner = max(1, min(1000, math.ceil(_SAMPLE_S / max(once, 1e-9))))
        for i in range(2 * repeats + 1):
            order = pair if i % 2 == 0 else pair[::-1]
            a, b = (t(inner) for t in order)
            ratios.append(a / b if i % 2 == 0 else b / a)
    return statistics.median(ratios)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (a temp file in the folder, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
