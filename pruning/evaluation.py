"""Evaluating a model on held-out batches without training: the metric, batches held once.

``evaluate`` averages a metric (``top1`` by default) over batches weighted by their rows;
``materialize`` moves the batches to the model's device once, so a scan reuses them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

Metric = Callable[[Tensor, Any], float]
Batch = tuple[tuple, Any, int]  # (inputs, targets, rows)


def top1(outputs: Tensor, targets: Tensor) -> float:
    """Fraction of rows whose largest output is the target (the default metric)."""
    return float((outputs.argmax(-1) == targets).double().mean())


def first_tensor(out: Any) -> Tensor:
    """The model's main output: ``out``, or the first item of a tuple/list/dict, recursively."""
    while isinstance(out, (tuple, list, dict)) and out:
        out = next(iter(out.values())) if isinstance(out, dict) else out[0]
    if not isinstance(out, Tensor):
        raise TypeError(f"the model's first output is a {type(out).__name__}, not a tensor; the metric needs one")
    return out


def evaluate(model: nn.Module, batches: Iterable, metric: Metric | None = None) -> float:
    """``metric`` (default :func:`top1`) of ``model`` in eval mode over ``(inputs, targets)``
    batches, averaged weighted by batch size (what each row of the scan equals)."""
    return mean_metric(model, materialize(batches, model), metric or top1)


def mean_metric(model: nn.Module, data: list[Batch], metric: Metric) -> float:
    with eval_mode(model), torch.inference_mode():
        return sum(weighted_metric(metric, model(*x), y, n) for x, y, n in data) / sum(n for _, _, n in data)


def weighted_metric(metric: Metric, out: Any, targets: Any, rows: int) -> float:
    value = metric(first_tensor(out), targets)
    try:
        return float(value) * rows
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"metric returned {type(value).__name__}; it must return one number per batch") from None


def materialize(batches: Iterable, model: nn.Module) -> list[Batch]:
    """``[(inputs tuple, targets, rows)]`` on the model's device."""
    if isinstance(batches, (Tensor, str)) or not isinstance(batches, Iterable):
        raise TypeError(f"batches must be an iterable of (inputs, targets) pairs, got {type(batches).__name__}")
    device, data = model_device(model), []
    for i, item in enumerate(batches):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(
                f"batches must yield (inputs, targets) pairs; item {i} is a {type(item).__name__}"
                + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
            )
        x, y = item
        x = tuple(t.to(device) if isinstance(t, Tensor) else t for t in (x if isinstance(x, tuple) else (x,)))
        y = y.to(device) if isinstance(y, Tensor) else y
        rows = len(y) if hasattr(y, "__len__") else x[0].shape[0] if isinstance(x[0], Tensor) and x[0].dim() else 1
        if rows == 0:
            raise ValueError(f"batch {i} is empty (0 targets); drop it from batches")
        data.append((x, y, rows))
    if not data:
        raise ValueError("batches is empty: pass (inputs, targets) pairs of held-out data, e.g. a DataLoader")
    return data


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Every module of ``models`` in eval mode inside; each module's own mode restored on exit."""
    modes = [(m, m.training) for model in models for m in model.modules()]
    try:
        for m, _ in modes:
            m.training = False
        yield
    finally:
        for m, mode in modes:
            m.training = mode


Hook = Callable[[nn.Module, tuple, Any], Any]


def hooked_forward(model: nn.Module, inputs: tuple, hooks: Iterable[tuple[nn.Module, Hook]]) -> Any:
    """One forward pass of ``model`` in eval mode without autograd, with each ``(module, forward
    hook)`` registered for that pass only: how shapes, activations and MACs are observed."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        with eval_mode(model), torch.no_grad():
            return model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
