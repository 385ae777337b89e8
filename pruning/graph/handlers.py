"""Layer surgery registry: how to cut each module type along its channel dims.

A handler knows one module type. It cuts the module physically (new, smaller
parameter tensors) and exposes per-channel *views* of its weights so that criteria
can score channels without ever branching on layer types.

Two kinds of handler exist, and the graph tracer treats them differently:

* :class:`FilterHandler` (conv, linear): output channels are new (computed from all
  input channels of their group); input channels are consumed. ``prune_out`` and
  ``prune_in`` cut the two sides independently.
* :class:`ChannelwiseHandler` (BatchNorm, LayerNorm, PReLU): output channel ``i`` is
  input channel ``i``; ``prune_out`` cuts the per-channel parameters. torchvision's
  FrozenBatchNorm2d is known by name (pruning does not import torchvision).

Register your own with :func:`register_handler`; an unknown type that owns parameters
makes the tracer raise an error that names the module and points here.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


def cut_tensor(module: nn.Module, name: str, keep: Tensor, dim: int) -> None:
    """Replace parameter or buffer ``name`` by its ``keep`` slice along ``dim`` (a new tensor)."""
    old = getattr(module, name, None)
    if old is None:
        return
    new = old.detach().index_select(dim, keep.to(old.device))
    if isinstance(old, nn.Parameter):
        new = nn.Parameter(new, requires_grad=old.requires_grad)
    if name in module._parameters:
        module._parameters[name] = new
    elif name in module._buffers:
        module._buffers[name] = new
    else:
        setattr(module, name, new)


def cut_tensor_both(module: nn.Module, name: str, keep_out: Tensor, keep_in: Tensor) -> None:
    """Replace weight ``name`` (``[out, in, *kernel]``) by its ``keep_out`` x ``keep_in`` part:
    for kernels of 4 or more elements in one gather of whole kernels, without the
    intermediate tensor that cutting one side after the other makes."""
    old = getattr(module, name)
    w = old.detach()
    k = w[0, 0].numel() if w.dim() > 2 else 1
    keep_out, keep_in = keep_out.to(w.device, torch.long), keep_in.to(w.device, torch.long)
    if k >= 4 and w.is_contiguous():
        idx = (keep_out[:, None] * w.shape[1] + keep_in[None, :]).flatten()
        new = w.view(-1, k).index_select(0, idx).view(len(keep_out), len(keep_in), *w.shape[2:])
    else:
        new = w.index_select(0, keep_out).index_select(1, keep_in)
    module._parameters[name] = nn.Parameter(new, requires_grad=old.requires_grad)


def _plain(handler: "FilterHandler", base: type, module: nn.Module) -> bool:
    """``handler`` cuts as ``base`` does (a subclass that cuts more, such as a gain, is not) and
    the module's weight is a plain parameter: its two sides can be cut in one copy."""
    kind = type(handler)
    return (
        kind.prune_out is base.prune_out
        and kind.prune_in is base.prune_in
        and isinstance(module._parameters.get("weight"), nn.Parameter)
    )


def _fits(module: nn.Module, x: Tensor, axis: int) -> bool:
    """Does ``x`` fit ``module``'s weight and bias as its forward reads them: ``x.shape[axis]``
    inputs (times the groups), weight and ``x`` of one dtype and device, one bias per output?"""
    w, b = module.weight, module.bias
    return (
        x.shape[axis] == w.shape[1] * getattr(module, "groups", 1)
        and x.dtype == w.dtype
        and x.device == w.device
        and (b is None or tuple(b.shape) == (w.shape[0],))
    )


def _rows(t: Tensor, dim: int) -> Tensor:
    """``t`` viewed as one row per index of ``dim``: shape ``[t.shape[dim], -1]``."""
    return t.movedim(dim, 0).reshape(t.shape[dim], -1)


class FilterHandler:
    """Base for modules whose output channels are filters over their input channels.

    Subclasses say where the channels are (``in_channels``/``out_channels``/``groups``,
    ``channel_axis`` of the activation) and how to cut and view the weights.
    ``exact`` is False where removing a channel changes what the others compute.
    """

    kind = "filter"
    leaf = True
    exact = True
    exact_in = True  # False: cutting input channels changes what the kept filters compute

    def in_channels(self, module: nn.Module) -> int:
        raise NotImplementedError

    def out_channels(self, module: nn.Module) -> int:
        raise NotImplementedError

    def groups(self, module: nn.Module) -> int:
        return 1

    def channel_axis(self, module: nn.Module, x: Tensor) -> int:
        """The activation dim that holds channels, for input ``x`` (and the output)."""
        return 1

    def output_shape(self, module: nn.Module, x: Tensor) -> tuple[int, ...] | None:
        """The output shape for input ``x`` if cheap to tell, else None (also where the forward
        would refuse ``x``: the caller runs the layer, on the meta device or for real). Lets the
        graph trace and the check of a cut model skip the actual computation."""
        return None

    def prune_out(self, module: nn.Module, keep: Tensor) -> None:
        raise NotImplementedError

    def prune_in(self, module: nn.Module, keep: Tensor) -> None:
        raise NotImplementedError

    def prune_both(self, module: nn.Module, keep_out: Tensor, keep_in: Tensor) -> bool:
        """Cut output and input channels at once (one copy of the weight); False, with nothing
        changed, where the two sides are cut one at a time by ``prune_out`` and ``prune_in``."""
        return False

    def out_view(self, module: nn.Module, t: Tensor | None = None) -> Tensor:
        """``[out_channels, k]``: each output channel's filter (of ``t``, default the weight)."""
        raise NotImplementedError

    def in_view(self, module: nn.Module, t: Tensor | None = None) -> Tensor:
        """``[in_channels, k]``: the weights that read each input channel."""
        raise NotImplementedError


class ChannelwiseHandler:
    """Base for modules with per-channel parameters that keep the channel layout."""

    kind = "channelwise"
    leaf = True
    exact = True

    def channels(self, module: nn.Module) -> int:
        raise NotImplementedError

    def groups(self, module: nn.Module) -> int:
        """Channels come in this many equal groups that must stay equal (GroupNorm)."""
        return 1

    def channel_axis(self, module: nn.Module, x: Tensor) -> int:
        return 1

    def prune_out(self, module: nn.Module, keep: Tensor) -> None:
        raise NotImplementedError

    def prune_in(self, module: nn.Module, keep: Tensor) -> None:
        self.prune_out(module, keep)

    def out_view(self, module: nn.Module, t: Tensor | None = None) -> Tensor:
        """``[channels, k]``: the per-channel scale (of ``t``, default the weight)."""
        raise NotImplementedError

    in_view = out_view


_CONV_FORWARD = {1: nn.Conv1d.forward, 2: nn.Conv2d.forward, 3: nn.Conv3d.forward}


class ConvHandler(FilterHandler):
    """Conv1d/2d/3d, including depthwise and grouped convolutions.

    Weight layout ``[out, in / groups, *kernel]``. A depthwise conv (groups == in)
    keeps channel ``i`` of its input in outputs ``i*m .. i*m+m-1``; its ``prune_out``
    also cuts ``in_channels`` and ``groups``. A grouped conv is cut with the same
    number of channels kept in every group.
    """

    def in_channels(self, module: nn.Module) -> int:
        return module.in_channels

    def out_channels(self, module: nn.Module) -> int:
        return module.out_channels

    def groups(self, module: nn.Module) -> int:
        return module.groups

    def channel_axis(self, module: nn.Module, x: Tensor) -> int:
        return x.dim() - len(module.kernel_size) - 1

    def output_shape(self, module: nn.Module, x: Tensor) -> tuple[int, ...] | None:
        n = len(module.kernel_size)
        if type(module).forward is not _CONV_FORWARD.get(n) or x.dim() < n + 1 or not _fits(module, x, -n - 1):
            return None  # a subclass with its own forward (timm's Conv2dSame pads in it), or an input it refuses
        w = module.weight
        if w.shape[0] % module.groups or module.padding_mode != "zeros":
            return None
        padding = (0,) * n if module.padding == "valid" else module.padding
        if padding == "same":
            return (*x.shape[: -n - 1], w.shape[0], *x.shape[-n:])
        sizes = [
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip(x.shape[-n:], padding, module.dilation, module.kernel_size, module.stride)
        ]
        return (*x.shape[: -n - 1], w.shape[0], *sizes) if min(sizes) > 0 else None

    def _depthwise(self, module: nn.Module) -> bool:
        return module.groups > 1 and module.groups == module.in_channels

    def prune_out(self, module: nn.Module, keep: Tensor) -> None:
        keep = keep.to(torch.long)
        g = module.groups
        if self._depthwise(module):
            # one input channel per group: cut whole groups (input channel and its outputs), or the
            # same number of outputs in every group (a grouped conv whose inputs were cut to one per group)
            mult = module.out_channels // module.in_channels
            counts = torch.bincount(keep // mult, minlength=g)
            if bool(((counts == 0) | (counts == mult)).all()):
                module.in_channels = module.groups = int((counts > 0).sum())
            elif not bool((counts == counts[0]).all()):
                raise ValueError(
                    f"depthwise conv (groups={g}, {mult} outputs per input): cut every output of an input "
                    "channel, or the same number of outputs of every input channel"
                )
        elif g > 1:
            per = module.out_channels // g
            counts = torch.bincount(keep // per, minlength=g)
            if not bool((counts == counts[0]).all()):
                raise ValueError(f"grouped conv (groups={g}): every group must keep the same number of outputs")
        cut_tensor(module, "weight", keep, 0)
        cut_tensor(module, "bias", keep, 0)
        module.out_channels = len(keep)

    def prune_in(self, module: nn.Module, keep: Tensor) -> None:
        keep = keep.to(torch.long)
        g = module.groups
        if self._depthwise(module):
            raise ValueError("a depthwise conv's input channels are cut with its outputs (prune_out)")
        per = module.in_channels // g
        local = keep
        if g > 1:
            n = len(keep) // g
            grid = keep.view(g, n) if n * g == len(keep) else None
            if (
                grid is None
                or not bool(((grid // per) == torch.arange(g).view(g, 1)).all())
                or not bool(((grid % per) == (grid[:1] % per)).all())
            ):
                raise ValueError(f"grouped conv (groups={g}): every group must keep the same input offsets")
            local = grid[0] % per
        cut_tensor(module, "weight", local, 1)
        module.in_channels = len(keep)

    def prune_both(self, module: nn.Module, keep_out: Tensor, keep_in: Tensor) -> bool:
        if module.groups != 1 or not _plain(self, ConvHandler, module):
            return False
        cut_tensor_both(module, "weight", keep_out, keep_in)
        cut_tensor(module, "bias", keep_out.to(torch.long), 0)
        module.out_channels, module.in_channels = len(keep_out), len(keep_in)
        return True

    def out_view(self, module: nn.Module, t: Tensor | None = None) -> Tensor:
        return _rows(module.weight if t is None else t, 0)

    def in_view(self, module: nn.Module, t: Tensor | None = None) -> Tensor:
        w = module.weight if t is None else t
        g = module.groups
        if g == 1:
            return _rows(w, 1)
        out, per = w.shape[0], w.shape[1]
        # [g, out/g, per, k] -> [g, per, out/g, k] -> one row per input channel
        return w.reshape(g, out // g, per, -1).transpose(1, 2).reshape(g * per, -1)


class StdConvHandler(ConvHandler):
    """Weight-standardised convs (timm's ``StdConv2d``, ``ScaledStdConv2d`` and their ``Same``
    variants): a conv whose filters are normalised over their inputs before use, with an
    optional per-filter ``gain``. Filters are cut with their gain (exact); cutting inputs
    changes every remaining weight's standardisation (inexact)."""

    exact_in = False

    def prune_out(self, module: nn.Module, keep: Tensor) -> None:
        super().prune_out(module, keep)
        gain = getattr(module, "gain", None)
        if isinstance(gain, Tensor) and gain.dim() and gain.shape[0] > 1:
            cut_tensor(module, "gain", keep.to(torch.long), 0)


class BlurPoolHandler(ChannelwiseHandler):
    """timm's ``BlurPool2d``: one fixed blur filter per channel (buffer ``filt``, ``channels`` of
    them) applied depthwise. Not a leaf: the tracer follows its ``F.conv2d``, whose op rule
    links the filter to this handler; with ``channels=None`` the filter is shared and nothing is cut."""

    leaf = False

    def channels(self, module: nn.Module) -> int:
        return module.channels or 1

    def prune_out(self, module: nn.Module, keep: Tensor) -> None:
        cut_tensor(module, "filt", keep.to(torch.long), 0)
        module.channels = len(keep)

    def out_view(self, module: nn.Module, t: Tensor | None = None) -> Tensor:
        f = module.filt if t is None else t
        return f.reshape(f.shape[0], -1)


class ConvTransposeHandler(FilterHandler):
    """ConvTranspose1d/2d/3d with ``groups == 1`` (weight ``[in, out, *kernel]``)."""

    def in_channels(self, module: nn.Module) -> int:
        return module.in_channels

    def out_channels(self, module: nn.Module) -> int:
        return module.out_channels

    def groups(self, module: nn.Module) -> int:
        if module.groups != 1:
            raise ValueError(f"{type(module).__name__} with groups={module.groups} is not supported")
        return 1

    def channel_axis(self, module: nn.Module, x: Tensor) -> int:
        return x.dim() - len(module.kernel_size) - 1

    def prune_out(self, module: nn.Module, keep: Tensor) -> None:
        cut_tensor(module, "weight", keep, 1)
        cut_tensor(module, "bias", keep, 0)
        module.out_channels = len(keep)

    def prune_in(self, module: nn.Module, keep: Tensor) -> None:
        cut_tensor(module, "weight", keep, 0)
        module.in_channels = len(keep)

    def out_view(self, module: nn.Module, t: Tensor | None = None) -> Tensor:
        return _rows(module.weight if t is None else t, 1)

    def in_view(self, module: nn.Module, t: Tensor | None = None) -> Tensor:
        return _rows(module.weight if t is None else t, 0)


class LinearHandler(FilterHandler):
    """nn.Linear: features are the last activation dim; weight ``[out, in]``."""

    def in_channels(self, module: nn.Module) -> int:
        return module.in_features

    def out_channels(self, module: nn.Module) -> int:
        return module.out_features

    def channel_axis(self, module: nn.Module, x: Tensor) -> int:
        return x.dim() - 1

    def output_shape(self, module: nn.Module, x: Tensor) -> tuple[int, ...] | None:
        if type(module).forward is not nn.Linear.forward or not x.dim() or not _fits(module, x, -1):
            return None
        return (*x.shape[:-1], module.weight.shape[0])

    def prune_out(self, module: nn.Module, keep: Tensor) -> None:
        cut_tensor(module, "weight", keep, 0)
        cut_tensor(module, "bias", keep, 0)
        module.out_features = len(keep)

    def prune_in(self, module: nn.Module, keep: Tensor) -> None:
        cut_tensor(module, "weight", keep, 1)
        module.in_features = len(keep)

    def prune_both(self, module: nn.Module, keep_out: Tensor, keep_in: Tensor) -> bool:
        if not _plain(self, LinearHandler, module):
            return False
        cut_tensor_both(module, "weight", keep_out, keep_in)
        cut_tensor(module, "bias", keep_out.to(torch.long), 0)
        module.out_features, module.in_features = len(keep_out), len(keep_in)
        return True

    def out_view(self, module: nn.Module, t: Tensor | None = None) -> Tensor:
        return _rows(module.weight if t is None else t, 0)

    def in_view(self, module: nn.Module, t: Tensor | None = None) -> Tensor:
        return _rows(module.weight if t is None else t, 1)


class BatchNormHandler(ChannelwiseHandler):
    """BatchNorm and InstanceNorm: affine parameters and running statistics per channel."""

    def channels(self, module: nn.Module) -> int:
        return module.num_features

    def prune_out(self, module: nn.Module, keep: Tensor) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            cut_tensor(module, name, keep, 0)
        module.num_features = len(keep)

    def out_view(self, module: nn.Module, t: Tensor | None = None) -> Tensor:
        if t is None:
            t = module.weight if module.weight is not None else torch.ones(module.num_features)
        return t.reshape(-1, 1)


class FrozenBatchNormHandler(BatchNormHandler):
    """BatchNorm whose affine parameters and statistics are fixed buffers, without
    ``num_features`` (torchvision's FrozenBatchNorm2d, in every pretrained detector)."""

    def channels(self, module: nn.Module) -> int:
        return module.weight.shape[0]

    def prune_out(self, module: nn.Module, keep: Tensor) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            cut_tensor(module, name, keep, 0)


class LayerNormHandler(ChannelwiseHandler):
    """nn.LayerNorm over one (channel) dim, wherever the channels are.

    Not a leaf: the tracer follows the forward (so subclasses that permute, like
    channels-first LayerNorm2d, work) and links ``F.layer_norm``'s weight to this module.
    Inexact: the normalisation statistics are taken over all channels, so removing one
    changes the others' outputs.
    """

    leaf = False
    exact = False

    def channels(self, module: nn.Module) -> int:
        if len(module.normalized_shape) != 1:
            raise ValueError(f"LayerNorm over {tuple(module.normalized_shape)}: only one normalised dim can be cut")
        return module.normalized_shape[0]

    def prune_out(self, module: nn.Module, keep: Tensor) -> None:
        self.channels(module)
        cut_tensor(module, "weight", keep, 0)
        cut_tensor(module, "bias", keep, 0)
        module.normalized_shape = (len(keep),)

    def out_view(self, module: nn.Module, t: Tensor | None = None) -> Tensor:
        if t is None:
            t = module.weight if module.weight is not None else torch.ones(self.channels(module))
        return t.reshape(-1, 1)


class GroupNormHandler(ChannelwiseHandler):
    """nn.GroupNorm: the same offsets are cut in every group, so the groups stay equal.
    Inexact: statistics are taken over each group's channels."""

    exact = False

    def channels(self, module: nn.Module) -> int:
        return module.num_channels

    def groups(self, module: nn.Module) -> int:
        return module.num_groups

    def prune_out(self, module: nn.Module, keep: Tensor) -> None:
        cut_tensor(module, "weight", keep, 0)
        cut_tensor(module, "bias", keep, 0)
        module.num_channels = len(keep)

    def out_view(self, module: nn.Module, t: Tensor | None = None) -> Tensor:
        if t is None:
            t = module.weight if module.weight is not None else torch.ones(module.num_channels)
        return t.reshape(-1, 1)


class PReLUHandler(ChannelwiseHandler):
    """nn.PReLU with one slope per channel (a single shared slope needs no cutting)."""

    def channels(self, module: nn.Module) -> int:
        return module.num_parameters

    def prune_out(self, module: nn.Module, keep: Tensor) -> None:
        if module.num_parameters > 1:
            cut_tensor(module, "weight", keep, 0)
            module.num_parameters = len(keep)

    def out_view(self, module: nn.Module, t: Tensor | None = None) -> Tensor:
        return (module.weight if t is None else t).reshape(-1, 1)


Handler = FilterHandler | ChannelwiseHandler

_HANDLERS: dict[type, Handler] = {}
# types of other libraries, by qualified name, so that pruning imports none of them
_BY_NAME: dict[str, Handler] = {"torchvision.ops.misc.FrozenBatchNorm2d": FrozenBatchNormHandler()}


def register_handler(module_type: type, handler: Handler, *, replace: bool = False) -> None:
    """Register how to cut ``module_type`` (and its subclasses without their own handler).

    Registering a type twice raises unless ``replace=True``.
    """
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise TypeError(f"register_handler expects an nn.Module subclass, got {module_type!r}")
    if not isinstance(handler, (FilterHandler, ChannelwiseHandler)):
        raise TypeError("a handler must subclass pruning.graph.FilterHandler or pruning.graph.ChannelwiseHandler")
    if module_type in _HANDLERS and not replace:
        raise ValueError(
            f"a pruning handler for {module_type.__name__} is already registered "
            f"({type(_HANDLERS[module_type]).__name__}); pass replace=True to override it"
        )
    _HANDLERS[module_type] = handler


def get_handler(module: nn.Module) -> Handler | None:
    """The handler for ``module``'s type (nearest registered base class), or None."""
    for cls in type(module).__mro__:
        handler = _HANDLERS.get(cls) or _BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")
        if handler is not None:
            return handler
        if cls is nn.Module:
            return None
    return None


def registered_handlers() -> dict[type, Handler]:
    """A copy of the registry: module type -> handler."""
    return dict(_HANDLERS)


def _register_builtins(register: Callable[[type, Handler], None]) -> None:
    for t in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        register(t, ConvHandler())
    for t in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
        register(t, ConvTransposeHandler())
    register(nn.Linear, LinearHandler())
    for t in (
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.SyncBatchNorm,
        nn.InstanceNorm1d,
        nn.InstanceNorm2d,
        nn.InstanceNorm3d,
    ):
        register(t, BatchNormHandler())
    register(nn.LayerNorm, LayerNormHandler())
    register(nn.GroupNorm, GroupNormHandler())
    register(nn.PReLU, PReLUHandler())
    for name in ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"):
        _BY_NAME[f"timm.layers.std_conv.{name}"] = StdConvHandler()
    _BY_NAME["timm.layers.blur_pool.BlurPool2d"] = BlurPoolHandler()


_register_builtins(register_handler)
