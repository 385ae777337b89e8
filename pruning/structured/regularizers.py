"""Training for structured sparsity: terms added to the loss, and soft zeroing of filters.

Three ways to make channels removable *before* cutting them, each over the dependency
groups of :mod:`pruning.graph` (read through the members' per-channel views, as the
criteria read them):

* :func:`l1_penalty` over :func:`norm_scales`: network slimming (Liu et al. 2017), the L1
  norm of the normalisation scales (BatchNorm gamma) that ``bn_gamma`` then ranks;
* :class:`GroupLasso`: group-level sparsity (DepGraph, Fang et al. 2023), the sum over
  channels of the L2 norm of *all* of a channel's coupled parameters (the producers'
  filter rows and biases, the normalisation scale and shift, the consumers' input
  columns), the quantity the ``group_norm`` criterion ranks;
* :func:`soft_prune_`: soft filter pruning (He et al. 2018), zeroing the filters a norm
  criterion ranks lowest in each group while leaving them trainable, so they can recover.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from pruning.criteria import L2, Criterion, member_bias
from pruning.graph.groups import ChannelGroup, GroupMember

# the square root's gradient is infinite at 0: a channel whose parameters are all zero
# contributes sqrt(_TINY) (1e-15) and no gradient instead of NaN
_TINY = 1e-30
FILTER_ROLES = ("out", "dw")


def norm_scales(groups: Sequence[ChannelGroup]) -> list[nn.Parameter]:
    """The normalisation scales (BatchNorm/LayerNorm gamma) of ``groups``, each once: what
    ``bn_gamma`` scores and network slimming penalises."""
    found: dict[int, nn.Parameter] = {}
    for g in groups:
        for m in g.members:
            if m.role == "norm" and m.kind == "module":
                weight = getattr(m.module, "weight", None)
                if isinstance(weight, nn.Parameter):
                    found.setdefault(id(weight), weight)
    return list(found.values())


def l1_penalty(params: Sequence[Tensor]) -> Tensor:
    """``sum |p|`` over every element of ``params`` (0 for none). Its gradient is ``sign(p)``,
    Liu et al.'s subgradient of the sparsity term."""
    if not params:
        return torch.zeros(())
    return torch.stack([p.abs().sum() for p in params]).sum()


class GroupLasso:
    """``sum over groups, over prunable channels c of ||all parameters of c||_2``.

    Built once from the groups of the model being trained (the model must not be cut while
    it is used); calling it reads the current weights, differentiably. Frozen channels (that
    can never be removed) are not penalised; ``bias=False`` leaves biases and BatchNorm
    shifts out. ``channel_norms`` gives the per-channel norms the penalty sums.
    """

    def __init__(self, groups: Sequence[ChannelGroup], bias: bool = True):
        self.bias = bias
        self._groups: list[tuple[int, Tensor, list[tuple[Callable[[], Tensor], Tensor, Tensor, bool]]]] = []
        for g in groups:
            if g.n_prunable == 0:
                continue
            terms = []
            for m in g.members:
                if m.tensor() is None:  # BatchNorm without affine parameters: nothing to train
                    continue
                terms.append((m.view, m.positions, m.channels, m.identity))
                if bias and member_bias(m) is not None:
                    terms.append((_bias_rows(m), m.positions, m.channels, m.identity))
            if terms:
                self._groups.append((g.n_channels, ~g.frozen, terms))
        self._on: dict[torch.device, list] = {}

    def _indices(self, device: torch.device) -> list:
        """The index tensors, moved once to the device the weights train on."""
        if device not in self._on:
            self._on[device] = [
                (n, keep.to(device), [(rows, pos.to(device), ch.to(device), ident) for rows, pos, ch, ident in terms])
                for n, keep, terms in self._groups
            ]
        return self._on[device]

    def channel_norms(self) -> list[Tensor]:
        """Per group (in graph order, prunable groups only): the L2 norm of each channel's
        coupled parameters, frozen channels included."""
        out = []
        if not self._groups:
            return out
        device = self._groups[0][2][0][0]().device
        for n, _, terms in self._indices(device):
            squares = None
            for rows, pos, ch, ident in terms:
                per_position = rows().pow(2).sum(1)
                if ident:
                    add = per_position
                else:
                    add = torch.zeros(n, dtype=per_position.dtype, device=device).index_add(
                        0, ch, per_position.index_select(0, pos)
                    )
                squares = add if squares is None else squares + add
            out.append(squares.clamp_min(_TINY).sqrt())
        return out

    def __call__(self, model: nn.Module | None = None) -> Tensor:
        """The penalty (``model`` is accepted for the training loop's ``penalty(model)`` call;
        the weights read are those of the groups given at construction)."""
        norms = self.channel_norms()
        if not norms:
            return torch.zeros(())
        device = norms[0].device
        keeps = [keep for _, keep, _ in self._indices(device)]
        return torch.stack([x[keep].sum() for x, keep in zip(norms, keeps)]).sum()


def _bias_rows(member: GroupMember) -> Callable[[], Tensor]:
    def rows() -> Tensor:
        return member_bias(member).reshape(-1, 1)

    return rows


def lowest_channels(group: ChannelGroup, keep: int, criterion: Criterion) -> Tensor | None:
    """The prunable channels of ``group`` that pruning to ``keep`` prunable channels by
    ``criterion`` would remove (the same ranking and tie-breaking as ``pruning.prune_to``);
    None when the criterion cannot score the group."""
    if keep >= group.n_prunable:
        return torch.empty(0, dtype=torch.long)
    scores = criterion(group)
    if scores is None:
        return None
    scores = torch.as_tensor(scores).detach().to("cpu", torch.float64).flatten()
    candidates = (~group.frozen).nonzero().flatten()
    order = torch.argsort(scores[candidates], descending=True, stable=True)
    return candidates[order[keep:]]


@torch.no_grad()
def zero_channels_(group: ChannelGroup, channels: Tensor) -> None:
    """Set the filters of ``channels`` to zero in place: the rows of every producer (``out``)
    and depthwise (``dw``) member and their biases; in a group without filters, the rows of
    the first role present among ``norm``, ``scale``, ``in``. Nothing is masked: the zeroed
    weights keep training."""
    roles = {m.role for m in group.members}
    zero = (
        FILTER_ROLES if roles & set(FILTER_ROLES) else next(((r,) for r in ("norm", "scale", "in") if r in roles), ())
    )
    wanted = torch.zeros(group.n_channels, dtype=torch.bool)
    wanted[channels] = True
    for m in group.members:
        t = m.tensor()
        if m.role not in zero or t is None:
            continue
        positions = m.positions[wanted[m.channels]]
        if positions.numel() == 0:
            continue
        # each element's flat index, seen through the member's own per-channel view
        flat = m.view(torch.arange(t.numel(), dtype=torch.float64).reshape(t.shape))
        mask = torch.ones(t.numel(), dtype=t.dtype)
        mask[flat[positions].long().flatten()] = 0
        t.mul_(mask.reshape(t.shape).to(t.device))
        bias = member_bias(m)
        if bias is not None:
            bias[positions.to(bias.device)] = 0


def soft_prune_(
    groups: Sequence[ChannelGroup], keep: Mapping[int, int], criterion: Criterion | None = None
) -> dict[int, Tensor]:
    """Zero the filters of the channels ``criterion`` (default: L2 norm, He et al.'s) ranks
    lowest, so that group ``g`` keeps ``keep[g.index]`` of its prunable channels non-zero.
    Returns ``{group index: zeroed channels}``. A later ``prune_to`` with the same counts and
    a norm criterion removes exactly these channels."""
    criterion = criterion if criterion is not None else L2()
    zeroed = {}
    for g in groups:
        if g.index not in keep:
            continue
        channels = lowest_channels(g, int(keep[g.index]), criterion)
        if channels is None or channels.numel() == 0:
            continue
        zero_channels_(g, channels)
        zeroed[g.index] = channels
    return zeroed
