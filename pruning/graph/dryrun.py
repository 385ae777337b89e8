"""Run a model for its shapes only: handled layers return zeros of the right shape.

The channel trace needs every tensor's shape and the op sequence, not the values.
Convolutions dominate a forward pass, so :func:`shapes_only` replaces a handled
layer's forward by its output shape (from the handler, else from the meta device)
filled with zeros. A model whose control flow reads activation values would take a
different path on zeros; :func:`reads_values` spots such reads (``bool(t)``,
``.item()``, tensor indices...) so that the tracer can start again with real values.

:func:`checked_shapes` does the same for the check that a cut model still runs: its plain
convolutions and linear layers check their inputs against their weights and return zeros,
everything else runs for real.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from pruning.graph.handlers import ChannelwiseHandler, FilterHandler, get_handler
from pruning.graph.oprules import tensors_in


class NeedsValues(Exception):
    """The model reads activation values (control flow, ``.item()``...): trace with real values."""


_VALUE_READS = {
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "__complex__",
    "__array__",
    "item",
    "tolist",
    "numpy",
    "nonzero",
    "argwhere",
    "masked_select",
    "unique",
    "unique_consecutive",
    "bincount",
    "equal",
    "allclose",
    "topk",
    "sort",
    "argsort",
    "argmax",
    "argmin",
    "multinomial",
    "repeat_interleave",
    "masked_scatter",
    "histc",
}
_READS_VALUES: dict[Any, bool] = {}


def reads_values(func: Any, args: tuple) -> bool:
    """Does this op look at tensor values (not only shapes)?"""
    try:
        hit = _READS_VALUES[func]
    except (KeyError, TypeError):
        hit = getattr(func, "__name__", "") in _VALUE_READS
        try:
            _READS_VALUES[func] = hit
        except TypeError:
            pass
    if not hit and len(args) > 1 and getattr(func, "__name__", "") == "__getitem__":
        return bool(tensors_in(args[1]))  # indexing with a tensor: positions depend on values
    return hit


def _meta(t: Any) -> Any:
    return torch.empty(t.shape, dtype=t.dtype, device="meta") if isinstance(t, Tensor) else t


def shapes_only(module: nn.Module, forward: Any, tracer: Any) -> Any:
    """``module``'s ``forward`` replaced by: output shape (the handler's ``output_shape``,
    else a run on the meta device) filled with zeros; the real ``forward`` if neither
    works. ``tracer.leaf_depth`` is restored after a failed meta run (its hooks fired)."""

    handler = get_handler(module)
    if isinstance(handler, ChannelwiseHandler):  # output shape = input shape

        def same(*args: Any, **kwargs: Any) -> Any:
            x = tensors_in(args) or tensors_in(kwargs)
            return torch.zeros_like(x[0]) if x else forward(*args, **kwargs)

        return same

    def run(*args: Any, **kwargs: Any) -> Any:
        zeros = _zeros_out(module, handler, args, kwargs)
        if zeros is not None:
            return zeros
        d = module.__dict__
        params, buffers = d["_parameters"], d["_buffers"]
        depth = tracer.leaf_depth
        try:
            d["_parameters"] = {k: None if v is None else _meta(v) for k, v in params.items()}
            d["_buffers"] = {k: None if v is None else _meta(v) for k, v in buffers.items()}
            out = forward(*[_meta(a) for a in args], **{k: _meta(v) for k, v in kwargs.items()})
        except Exception:
            out = None
        finally:
            d["_parameters"], d["_buffers"] = params, buffers
            tracer.leaf_depth = depth
        ref = tensors_in(args)
        if not isinstance(out, Tensor) or not ref:
            return forward(*args, **kwargs)
        return torch.zeros(out.shape, dtype=out.dtype, device=ref[0].device)

    return run


@contextmanager
def checked_shapes(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Within: every one of ``modules`` whose handler tells its output shape (plain convs and
    linears) returns zeros of that shape instead of computing it, once its input fits its
    weights as its forward would check; an input that does not fit, and every other module,
    runs for real (pass all of a model's modules). For a model that reads no activation values,
    a forward pass here fails exactly where a real one would, at a fraction of the cost."""
    patched = []
    try:
        for module in modules:
            handler = get_handler(module)
            if isinstance(handler, FilterHandler) and handler.leaf:
                patched.append((module, module.__dict__.get("forward")))
                module.__dict__["forward"] = _zeros_if_fits(module, module.forward, handler)
        yield
    finally:
        restore_forwards(patched)


def restore_forwards(patched: list[tuple[nn.Module, Any]]) -> None:
    """Undo forwards patched into the modules' ``__dict__``: ``(module, the instance's own
    forward before, or None where it had none)``."""
    for m, forward in patched:
        if forward is None:
            del m.__dict__["forward"]
        else:
            m.__dict__["forward"] = forward


def _zeros_if_fits(module: nn.Module, forward: Any, handler: FilterHandler) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        zeros = _zeros_out(module, handler, args, kwargs)
        return forward(*args, **kwargs) if zeros is None else zeros

    return run


def _zeros_out(module: nn.Module, handler: Any, args: tuple, kwargs: dict) -> Tensor | None:
    """Zeros of ``module``'s output shape for a lone tensor input, where its handler tells
    the shape (and the input fits the layer); None otherwise."""
    if len(args) == 1 and not kwargs and isinstance(args[0], Tensor):
        shape = handler.output_shape(module, args[0])
        if shape is not None:
            return args[0].new_zeros(shape)
    return None
