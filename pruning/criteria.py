"""Criteria: score every channel of a dependency group, higher = keep.

A criterion is a small callable class: hyperparameters (and calibration data) in
``__init__``, ``__call__(group) -> Tensor`` with one score per group channel. It reads
weights only through the members' per-channel views (``member.view()``) and their
roles, never through layer types:

* ``out``: a filter that computes the channel (conv/linear output side);
* ``dw``: a depthwise kernel (the channel's own spatial filter);
* ``in``: the weights of a consumer that read the channel;
* ``norm``: a per-channel affine scale (BatchNorm/LayerNorm gamma);
* ``scale``: a bare per-channel parameter (e.g. ConvNeXt's layer scale).

Members of one group are combined by ``combine``: ``"mean"`` (default: a channel covered
by fewer members, e.g. through a concatenation or a zero-padded shortcut, is not
penalised), ``"sum"``, ``"max"``, ``"prod"`` or ``"first"`` (the first member in trace
order, usually the producer). A criterion may return None for a group it cannot score;
that group is then left unpruned (with a warning).
"""

from __future__ import annotations

import math
import warnings
import zlib
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pruning.evaluation import hooked_forward
from pruning.graph.groups import ChannelGroup, GroupMember

COMBINE = ("mean", "sum", "max", "prod", "first")

_CRITERIA: dict[str, type] = {}


def register_criterion(name: str) -> Callable[[type], type]:
    """Class decorator: make a criterion selectable by ``name``. Name clashes raise."""

    def deco(cls: type) -> type:
        if name in _CRITERIA:
            raise ValueError(f"criterion {name!r} is already registered ({_CRITERIA[name].__name__})")
        cls.name = name
        _CRITERIA[name] = cls
        return cls

    return deco


def criterion_names() -> list[str]:
    """Names of the registered criteria."""
    return sorted(_CRITERIA)


def criterion_class(name: str) -> type:
    if name not in _CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; valid choices: {', '.join(criterion_names())}")
    return _CRITERIA[name]


def get_criterion(criterion: "str | Criterion") -> "Criterion":
    """A criterion object from a registered name, or ``criterion`` itself if callable."""
    if isinstance(criterion, str):
        cls = criterion_class(criterion)
        if cls.needs_data:
            raise ValueError(
                f"criterion {criterion!r} needs calibration data: pass an object, e.g. "
                f"pruning.criteria.{cls.__name__}({cls.data_hint})"
            )
        return cls()
    if callable(criterion):
        return criterion
    raise TypeError(f"criterion must be a name ({', '.join(criterion_names())}) or a callable, got {criterion!r}")


_ALL = torch.ones(1, dtype=torch.bool)
_BLOCK = 1 << 18  # elements per block of :func:`row_l1` (1 MiB of float32)


def row_l1(rows: Tensor) -> Tensor:
    """``rows.abs().sum(1)``; large weights with contiguous rows go through one small reused
    buffer, without a temporary the size of the weight, whose fresh memory costs more than
    the arithmetic (a cold process pays a page fault per 4 KiB of it)."""
    n, k = rows.shape
    if n * k <= _BLOCK or rows.stride(1) != 1 or not rows.dtype.is_floating_point:
        return rows.abs().sum(1)
    step = max(1, _BLOCK // k)
    buf = torch.empty(min(n, step) * k, dtype=rows.dtype, device=rows.device)
    out = torch.empty(n, dtype=rows.dtype, device=rows.device)
    for i in range(0, n, step):
        part = rows[i : i + step]
        block = buf[: part.numel()].view(part.shape)
        torch.abs(part, out=block)
        torch.sum(block, 1, out=out[i : i + step])
    return out


def combine_scores(scores: Sequence[tuple[Tensor, Tensor]], how: str) -> Tensor:
    """Combine per-member ``(score, present)`` pairs into one score per channel."""
    if how not in COMBINE:
        raise ValueError(f"unknown combine {how!r}; valid choices: {', '.join(COMBINE)}")
    if len(scores) == 1 and bool(scores[0][1].all()):
        return scores[0][0].double()
    s = torch.stack([x for x, _ in scores]).double()
    p = torch.stack([y for _, y in scores])
    if how == "sum":
        return (s * p).sum(0)
    if how == "mean":
        return (s * p).sum(0) / p.sum(0).clamp(min=1)
    if how == "max":
        return s.masked_fill(~p, -math.inf).amax(0)
    if how == "prod":
        return s.masked_fill(~p, 1.0).prod(0)
    if how == "first":
        return s[p.to(torch.uint8).argmax(0), torch.arange(s.shape[1])]
    raise ValueError(f"unknown combine {how!r}; valid choices: {', '.join(COMBINE)}")


def per_channel(group: ChannelGroup, member: GroupMember, values: Tensor, reduce: str = "sum") -> tuple[Tensor, Tensor]:
    """Scatter per-position ``values`` (length ``member.size``) onto group channels."""
    n = group.n_channels
    values = values.detach().to("cpu", torch.float64)
    if member.identity:
        return values, _ALL.expand(n)
    out = torch.zeros(n, dtype=torch.float64).index_add_(0, member.channels, values[member.positions])
    present = torch.zeros(n, dtype=torch.bool)
    present[member.channels] = True
    if reduce == "mean":
        out /= torch.bincount(member.channels, minlength=n).clamp(min=1)
    return out, present


class Criterion:
    """Base class: override ``__call__``; override ``prepare`` to look at the model once."""

    name = ""
    needs_data = False
    data_hint = ""

    @classmethod
    def from_data(cls, inputs: Any, targets: Tensor) -> "Criterion":
        """An instance for calibration ``inputs``/``targets`` (criteria with ``needs_data``)."""
        return cls()

    def seeded(self, seed: int) -> "Criterion":
        """This criterion drawing from the run's ``seed``: a criterion with randomness returns a
        seeded copy, the others return themselves, so a caller seeds any criterion the same way."""
        return self

    def prepare(self, model: nn.Module, groups: Sequence[ChannelGroup]) -> None:
        """Called once by ``prune_filters`` before any group is scored."""

    def __call__(self, group: ChannelGroup) -> Tensor | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _check_combine(combine: str) -> str:
    if combine not in COMBINE:
        raise ValueError(f"unknown combine {combine!r}; valid choices: {', '.join(COMBINE)}")
    return combine


class _Norm(Criterion):
    """Filter norms; a depthwise group scores ``||dw[i]|| * ||pw[:, i]||``: the L1 of the dense kernel the dw+pw pair is equivalent to, restricted to channel i."""

    def __init__(self, combine: str = "mean"):
        self.combine = _check_combine(combine)

    def _rows(self, rows: Tensor) -> Tensor:
        raise NotImplementedError

    def _finish(self, x: Tensor) -> Tensor:
        return x

    def _role(self, group: ChannelGroup, role: str) -> Tensor | None:
        parts = []
        for m in group.members:
            if m.role == role:
                s, p = per_channel(group, m, self._rows(m.view().detach()))
                parts.append((self._finish(s), p))
        return combine_scores(parts, self.combine) if parts else None

    def __call__(self, group: ChannelGroup) -> Tensor | None:
        dw = self._role(group, "dw")
        if dw is not None:
            pw = self._role(group, "in")
            return dw if pw is None else dw * pw
        for role in ("out", "norm", "scale", "in"):
            s = self._role(group, role)
            if s is not None:
                return s
        return None


@register_criterion("l1")
class L1(_Norm):
    """Li et al. 2017: the sum of absolute weights of each filter (smallest pruned)."""

    def _rows(self, rows: Tensor) -> Tensor:
        return row_l1(rows)


@register_criterion("l2")
class L2(_Norm):
    """The L2 norm of each filter."""

    def _rows(self, rows: Tensor) -> Tensor:
        return rows.double().pow(2).sum(1)

    def _finish(self, x: Tensor) -> Tensor:
        return x.sqrt()


@register_criterion("largest_l1")
class LargestL1(L1):
    """The control of Li et al.: prunes the filters with the *largest* L1 norm."""

    def __call__(self, group: ChannelGroup) -> Tensor | None:
        s = super().__call__(group)
        return None if s is None else -s


@register_criterion("random")
class Random(Criterion):
    """Uniform random scores, seeded per (seed, group) so results do not depend on order."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def seeded(self, seed: int) -> "Random":
        return type(self)(seed=seed)

    def __call__(self, group: ChannelGroup) -> Tensor:
        key = group.members[0].name if group.members else str(group.index)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(key.encode()))
        return torch.rand(group.n_channels, generator=g, dtype=torch.float64)


@register_criterion("bn_gamma")
class BNGamma(Criterion):
    """Network slimming: ``|gamma|`` of the group's normalisation layer(s).

    Groups without a BatchNorm/LayerNorm are left unpruned (``missing="skip"``, with a
    warning) or raise (``missing="error"``).
    """

    def __init__(self, combine: str = "mean", missing: str = "skip"):
        if missing not in ("skip", "error"):
            raise ValueError(f"missing={missing!r}; valid choices: skip, error")
        self.combine = _check_combine(combine)
        self.missing = missing

    def __call__(self, group: ChannelGroup) -> Tensor | None:
        parts = [per_channel(group, m, m.view().detach().abs().sum(1)) for m in group.members if m.role == "norm"]
        if parts:
            return combine_scores(parts, self.combine)
        msg = f"bn_gamma: group {group.index} ({', '.join(group.names[:3])}) has no BatchNorm/LayerNorm to score"
        if self.missing == "error":
            raise ValueError(msg)
        warnings.warn(msg + "; left unpruned", stacklevel=2)
        return None


def member_bias(member: GroupMember) -> Tensor | None:
    """The bias (or BatchNorm shift) entries of an output-side member, one per position, or None.

    A filter's bias and a normalisation layer's beta belong to the channel they produce; the
    consumers' biases (``in`` members) do not belong to any input channel."""
    if member.kind != "module" or member.dim != 0 or member.role not in ("out", "dw", "norm"):
        return None
    bias = getattr(member.module, "bias", None)
    if not isinstance(bias, Tensor) or bias.numel() != member.size:
        return None
    return bias


@register_criterion("group_norm")
class GroupNorm(Criterion):
    """DepGraph (Fang et al. 2023): the L2 norm of *all* of a channel's coupled parameters.

    Every member of the group counts: the producers' filter rows and biases, the
    normalisation scale and shift, the consumers' input columns (several positions per
    channel after a flatten) and bare per-channel parameters. This is the quantity the
    group-lasso penalty (``pruning.structured.regularizers.GroupLasso``) drives to zero, so training
    with that penalty and pruning by this criterion remove the same channels.
    """

    def __init__(self, bias: bool = True):
        self.bias = bias

    def __call__(self, group: ChannelGroup) -> Tensor | None:
        parts = []
        for m in group.members:
            if m.tensor() is None:  # e.g. BatchNorm without affine parameters
                continue
            parts.append(per_channel(group, m, m.view().detach().double().pow(2).sum(1)))
            bias = member_bias(m) if self.bias else None
            if bias is not None:
                parts.append(per_channel(group, m, bias.detach().double().pow(2)))
        return combine_scores(parts, "sum").sqrt() if parts else None


@register_criterion("fpgm")
class FPGM(Criterion):
    """He et al. 2019: filters near the geometric median of their layer are redundant.
    Score = sum of distances to the layer's other filters (smallest pruned)."""

    def __init__(self, combine: str = "mean", p: float = 2.0):
        self.combine = _check_combine(combine)
        self.p = p

    def __call__(self, group: ChannelGroup) -> Tensor | None:
        parts = []
        for m in group.members:
            if m.role in ("out", "dw"):
                rows = m.view().detach().double()
                parts.append(per_channel(group, m, torch.cdist(rows, rows, p=self.p).sum(1)))
        return combine_scores(parts, self.combine) if parts else None


class _Activation(Criterion):
    """Statistics of the producers' outputs (before BN/activation) on a calibration batch."""

    needs_data = True
    data_hint = "calibration_inputs"

    @classmethod
    def from_data(cls, inputs: Any, targets: Tensor) -> "Criterion":
        return cls(inputs)

    def __init__(self, calibration_inputs: Any, combine: str = "mean"):
        self.calibration_inputs = calibration_inputs
        self.combine = _check_combine(combine)
        self._stats: dict[int, Tensor] = {}

    def _stat(self, rows: Tensor) -> Tensor:
        raise NotImplementedError

    def prepare(self, model: nn.Module, groups: Sequence[ChannelGroup]) -> None:
        axes = {
            id(m.module): (m.module, m.axis)
            for g in groups
            for m in g.members
            if m.kind == "module" and m.role in ("out", "dw")
        }
        rows: dict[int, list[Tensor]] = {}

        def hook(key: int, axis: int):
            def f(module, args, out):
                rows.setdefault(key, []).append(out.detach().movedim(axis, 0).reshape(out.shape[axis], -1))

            return f

        inputs = self.calibration_inputs
        hooked_forward(
            model,
            inputs if isinstance(inputs, tuple) else (inputs,),
            [(mod, hook(k, axis)) for k, (mod, axis) in axes.items()],
        )
        self._stats = {k: self._stat(torch.cat(v, 1).double()) for k, v in rows.items()}

    def __call__(self, group: ChannelGroup) -> Tensor | None:
        parts = [
            per_channel(group, m, self._stats[id(m.module)], reduce="mean")
            for m in group.members
            if m.kind == "module" and m.role in ("out", "dw") and id(m.module) in self._stats
        ]
        return combine_scores(parts, self.combine) if parts else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<calibration batch>, combine={self.combine!r})"


@register_criterion("activation_mean")
class ActivationMean(_Activation):
    """Li et al.'s mean-mean: the mean of each channel's output activation."""

    def _stat(self, rows: Tensor) -> Tensor:
        return rows.mean(1)


@register_criterion("activation_std")
class ActivationStd(_Activation):
    """Li et al.'s mean-std: the standard deviation of each channel's output activation."""

    def _stat(self, rows: Tensor) -> Tensor:
        return rows.std(1) if rows.shape[1] > 1 else torch.zeros(rows.shape[0], dtype=rows.dtype)


@register_criterion("apoz")
class APoZ(_Activation):
    """Hu et al. 2016: average percentage of zeros after ReLU (outputs <= 0); score = 1 - APoZ."""

    def _stat(self, rows: Tensor) -> Tensor:
        return 1.0 - (rows <= 0).double().mean(1)


@register_criterion("taylor")
class Taylor(Criterion):
    """First-order Taylor estimate of the loss change when a whole channel is removed:
    ``|sum of w * dL/dw|`` over all its weights in the group (Molchanov et al. 2019)."""

    needs_data = True
    data_hint = "inputs, targets, loss_fn=torch.nn.functional.cross_entropy"

    @classmethod
    def from_data(cls, inputs: Any, targets: Tensor) -> "Criterion":
        return cls(inputs, targets)

    def __init__(
        self,
        inputs: Any,
        targets: Tensor,
        loss_fn: Callable[[Any, Tensor], Tensor] = F.cross_entropy,
        combine: str = "sum",
    ):
        self.inputs = inputs
        self.targets = targets
        self.loss_fn = loss_fn
        self.combine = _check_combine(combine)
        self._grads: dict[int, Tensor] = {}

    def prepare(self, model: nn.Module, groups: Sequence[ChannelGroup]) -> None:
        params = {id(t): t for g in groups for m in g.members if (t := m.tensor()) is not None and t.requires_grad}
        was = model.training
        try:
            model.eval()
            with torch.enable_grad():
                out = model(*(self.inputs if isinstance(self.inputs, tuple) else (self.inputs,)))
                if not isinstance(out, Tensor):
                    out = out[0]
                loss = self.loss_fn(out, self.targets)
                grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        finally:
            model.train(was)
        self._grads = {k: g for k, g in zip(params, grads) if g is not None}

    def __call__(self, group: ChannelGroup) -> Tensor | None:
        parts = []
        for m in group.members:
            t = m.tensor()
            if t is None or id(t) not in self._grads:
                continue
            parts.append(per_channel(group, m, m.view(t.detach() * self._grads[id(t)]).sum(1)))
        return combine_scores(parts, self.combine).abs() if parts else None

    def __repr__(self) -> str:
        return f"Taylor(<calibration batch>, loss_fn={getattr(self.loss_fn, '__name__', self.loss_fn)}, combine={self.combine!r})"
