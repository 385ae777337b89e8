"""Channel-dependency groups: which (module, dim, index) members lose the same channels.

:func:`pruning.graph.trace.trace_channels` labels every channel position with an id and
records which ids must go together. Here the ids are merged into *channels* (connected
components: one channel of a residual stream is the same channel in every tensor added
to it) and the channels into *groups* (everything coupled: a conv, its BN, its
consumers, and every layer tied to them). A group is the unit a ratio applies to and
a criterion scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pruning.graph.trace import ChannelTrace, trace_channels


@dataclass
class GroupMember:
    """One member of a group: ``name`` cut along ``dim`` at ``positions``.

    ``dim`` is 0 for output channels (or the channels of BN/LayerNorm/depthwise conv),
    1 for input channels; for a parameter (``kind == "param"``) it is the tensor dim.
    ``channels[i]`` is the group channel that position ``positions[i]`` belongs to
    (several positions per channel after a flatten: a Linear's inputs ``c*h*w ...``).
    """

    name: str
    kind: str
    dim: int
    role: str
    positions: Tensor
    channels: Tensor
    size: int
    module: nn.Module = field(repr=False)
    handler: Any = field(default=None, repr=False)
    param: str | None = None
    axis: int = 1
    identity: bool = False  # positions == channels == 0..size-1

    def tensor(self) -> Tensor:
        """The parameter this member's view reads (for gradients)."""
        return getattr(self.module, self.param) if self.kind == "param" else self.module.weight

    def view(self, t: Tensor | None = None) -> Tensor:
        """``[size, k]``: the weights of every position along ``dim`` (of ``t``, default the
        weights themselves). Rows of ``positions`` belong to this group."""
        if self.kind == "param":
            p = self.tensor() if t is None else t
            return p.movedim(self.dim, 0).reshape(self.size, -1)
        if self.dim == 1:
            return self.handler.in_view(self.module, t)
        return self.handler.out_view(self.module, t)

    def mapping(self) -> str:
        pos, ch = self.positions, self.channels
        n = len(pos)
        if n and torch.equal(ch, pos - pos[0] + ch[0]) and n == self.size:
            return "identity" if int(pos[0]) == int(ch[0]) else f"channel = position - {int(pos[0] - ch[0])}"
        if n and torch.equal(ch - ch[0], pos - pos[0]):
            return f"positions {int(pos[0])}..{int(pos[-1])} -> channels {int(ch[0])}..{int(ch[-1])}"
        per = n // max(1, int(ch.unique().numel()))
        if per > 1:
            return f"{per} positions per channel"
        return "permuted"


@dataclass
class ChannelGroup:
    """Coupled channels: removing channel ``c`` cuts position(s) of ``c`` in every member.

    ``frozen[c]`` is True where channel ``c`` cannot be removed (``reasons`` says why).
    ``exact`` is False where a member's output depends on all channels (LayerNorm), so
    cutting changes the remaining channels' values.
    """

    index: int
    n_channels: int
    members: list[GroupMember]
    frozen: Tensor
    reasons: list[str]
    exact: bool = True

    @property
    def n_prunable(self) -> int:
        return int((~self.frozen).sum())

    @property
    def names(self) -> list[str]:
        """Members whose output channels this group is (the names a ratio dict may use)."""
        return [m.name for m in self.members if m.dim == 0 or m.kind == "param"]

    def __str__(self) -> str:
        head = (
            f"Group {self.index}: {self.n_channels} channels, {self.n_prunable} prunable"
            f"{'' if self.exact else ', inexact (normalised over channels)'}"
        )
        if self.reasons:
            head += f"; frozen: {'; '.join(self.reasons[:3])}{' ...' if len(self.reasons) > 3 else ''}"
        rows = [
            f"  {m.name or '<model>':40s} {m.role:5s} dim {m.dim}  {len(m.positions):6d}/{m.size:<6d} {m.mapping()}"
            for m in self.members
        ]
        return "\n".join([head] + rows)


def _divmod(keys: Tensor, base: int) -> list[tuple[int, int]]:
    """``[(k // base, k % base) for k in keys]`` computed on the tensor."""
    return list(zip(torch.div(keys, base, rounding_mode="floor").tolist(), torch.remainder(keys, base).tolist()))


def _components(n: int, a: Tensor, b: Tensor) -> Tensor:
    """Root (smallest node) of every node's connected component, vectorised."""
    parent = torch.arange(n)
    if a.numel() == 0:
        return parent
    while True:
        ra, rb = parent[a], parent[b]
        if torch.equal(ra, rb):
            return parent
        parent.scatter_reduce_(0, torch.maximum(ra, rb), torch.minimum(ra, rb), reduce="amin")
        while True:
            nxt = parent[parent]
            if torch.equal(nxt, parent):
                break
            parent = nxt


class ChannelGraph:
    """Groups of one traced model, plus the id -> channel maps used to cut it."""

    def __init__(self, model: nn.Module, trace: ChannelTrace):
        self.model = model
        self.trace = trace
        n = trace.n_ids
        a = torch.cat([u for u, _ in trace.unions]) if trace.unions else torch.empty(0, dtype=torch.long)
        b = torch.cat([v for _, v in trace.unions]) if trace.unions else torch.empty(0, dtype=torch.long)
        root = _components(n, a, b)
        roots, comp_of = torch.unique(root, return_inverse=True)  # sorted: channel order = producer order
        sizes = torch.tensor([s for _, s, _ in trace.spaces], dtype=torch.long)
        space_of = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        space_root = _components(len(sizes), space_of, space_of[root])
        group_ids, group_of_space = torch.unique(space_root, return_inverse=True)
        group_of_comp = group_of_space[space_of[roots]]
        order = torch.argsort(group_of_comp, stable=True)
        counts = torch.bincount(group_of_comp, minlength=len(group_ids))
        starts = torch.cumsum(counts, 0) - counts
        local = torch.empty_like(order)
        local[order] = torch.arange(len(order)) - starts[group_of_comp[order]]
        self.comp_of = comp_of
        self.group_of_comp = group_of_comp
        self.local_of_comp = local
        self.n_comps = len(roots)

        frozen = torch.zeros(self.n_comps, dtype=torch.bool)
        reasons: list[list[str]] = [[] for _ in range(len(group_ids))]
        for ids, why in trace.frozen:
            comps = comp_of[ids]
            frozen[comps] = True
            for g in group_of_comp[comps].unique().tolist():
                if why not in reasons[g]:
                    reasons[g].append(why)
        self.frozen_comp = frozen
        inexact = torch.zeros(len(group_ids), dtype=torch.bool)
        for ids in trace.inexact:
            ids = ids[ids >= 0]
            inexact[group_of_comp[comp_of[ids]]] = True

        members: list[list[GroupMember]] = [[] for _ in range(len(group_ids))]
        sentinel = self.n_comps  # the channel of positions no channel owns (never removed)
        ms = trace.members
        lens = [m.ids.numel() for m in ms]
        self.member_sizes = torch.tensor(lens, dtype=torch.long)
        if ms:
            ids = torch.cat([m.ids for m in ms])
            valid = ids >= 0
            comps_all = torch.where(valid, comp_of[ids.clamp(min=0)], sentinel)
            grp_all = torch.where(valid, group_of_comp[comps_all.clamp(max=max(sentinel - 1, 0))], -1)
            local_all = torch.where(valid, local[comps_all.clamp(max=max(sentinel - 1, 0))], -1)
            seg = torch.repeat_interleave(torch.arange(len(ms)), self.member_sizes)
            offsets = torch.cumsum(self.member_sizes, 0) - self.member_sizes
            big = len(group_ids) + 1
            gmin = torch.full((len(ms),), big).scatter_reduce_(0, seg, torch.where(valid, grp_all, big), "amin")
            gmax = torch.full((len(ms),), -1).scatter_reduce_(0, seg, grp_all, "amax")
            ident = (local_all == torch.arange(len(ids)) - offsets[seg]).long()
            ident = torch.ones(len(ms), dtype=torch.long).scatter_reduce_(0, seg, ident, "amin")
            self._seg, self._comps_all = seg, comps_all
            self.member_comps = list(torch.split(comps_all, lens))
            grp_split, local_split = torch.split(grp_all, lens), torch.split(local_all, lens)
            single = ((gmin == gmax) & (gmin < big)).tolist()
            gmin, gmax, ident, counts_l = gmin.tolist(), gmax.tolist(), ident.tolist(), counts.tolist()
            # members in several groups (a layer reading a concatenation): their (member, group)
            # pairs from one stable sort by (member, group), positions in order within a pair
            multi = torch.tensor([not s and g >= 0 for s, g in zip(single, gmax)], dtype=torch.bool)
            pairs: dict[int, list[tuple[int, Tensor, Tensor]]] = {}
            if bool(multi.any()):
                pick = (valid & multi[seg]).nonzero().flatten()
                key = seg[pick] * big + grp_all[pick]
                sort = torch.argsort(key, stable=True)
                pick, key = pick[sort], key[sort]
                pair_key, pair_n = torch.unique_consecutive(key, return_counts=True)
                pos_split = torch.split(pick - offsets[seg[pick]], pair_n.tolist())
                chan_split = torch.split(local_all[pick], pair_n.tolist())
                for (i, g), pos, chans in zip(_divmod(pair_key, big), pos_split, chan_split):
                    pairs.setdefault(i, []).append((g, pos, chans))
            aranges: dict[int, Tensor] = {}
            for i, m in enumerate(ms):
                size, identity = lens[i], False
                if gmax[i] < 0:
                    continue
                if single[i] and bool(ident[i]) and size == counts_l[gmin[i]]:
                    identity = True
                    pos = aranges.get(size)
                    if pos is None:
                        pos = aranges[size] = torch.arange(size)
                    parts = [(gmin[i], pos, pos)]
                elif single[i]:
                    pos = (grp_split[i] == gmin[i]).nonzero().flatten()
                    parts = [(gmin[i], pos, local_split[i][pos])]
                else:
                    parts = pairs[i]
                for g, pos, chans in parts:
                    members[g].append(
                        GroupMember(
                            m.name,
                            m.kind,
                            m.dim,
                            m.role,
                            pos,
                            chans,
                            size,
                            m.module,
                            m.handler,
                            m.param,
                            m.axis,
                            identity,
                        )
                    )
        else:
            self._seg = self._comps_all = torch.empty(0, dtype=torch.long)
            self.member_comps = []
        slices = torch.split(order, counts.tolist())
        frozen_slices = torch.split(frozen[order], counts.tolist())
        self.groups = [
            ChannelGroup(g, int(counts[g]), members[g], frozen_slices[g], reasons[g], not bool(inexact[g]))
            for g in range(len(group_ids))
        ]
        self._comp_of_group_local = slices

    def removed_per_member(self, removed: Tensor) -> Tensor:
        """How many positions of each member (of ``trace.members``) ``removed`` cuts."""
        out = torch.zeros(len(self.trace.members), dtype=torch.long)
        return out.index_add_(0, self._seg, removed[self._comps_all].long())

    def comps(self, group: ChannelGroup) -> Tensor:
        """Global channel index of each of ``group``'s channels."""
        return self._comp_of_group_local[group.index]

    def removal_mask(self) -> Tensor:
        """All False: one entry per channel, plus a last one for positions no channel owns."""
        return torch.zeros(self.n_comps + 1, dtype=torch.bool)

    def gone(self, index: int, removed: Tensor) -> Tensor:
        """Bool per position of member ``index`` (of ``trace.members``): cut by ``removed``
        (a :meth:`removal_mask`)."""
        return removed[self.member_comps[index]]


def build_graph(
    model: nn.Module,
    example_inputs: Any,
    ignore: tuple[str, ...] | list[str] = (),
    approximate: tuple[str, ...] | list[str] = (),
) -> ChannelGraph:
    """Trace ``model`` once and build its channel groups (``approximate``: see ``trace_channels``)."""
    return ChannelGraph(model, trace_channels(model, example_inputs, ignore, approximate=tuple(approximate)))


def dependency_groups(
    model: nn.Module,
    example_inputs: Any,
    ignore: tuple[str, ...] | list[str] = (),
    approximate: tuple[str, ...] | list[str] = (),
) -> list[ChannelGroup]:
    """The coupled channel groups of ``model`` (printable: ``print(*groups, sep="\\n")``)."""
    return build_graph(model, example_inputs, ignore, approximate).groups
