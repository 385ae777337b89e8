"""What removing channels of one group costs the whole model in weights and MACs, exactly."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pruning.evaluation import first_tensor, hooked_forward
from pruning.graph.groups import ChannelGraph
from pruning.measure import WEIGHTED_LAYERS


class RemovalCosts:
    """Exact conv/linear weights and MACs (``pruning.count``'s rule, one sample) a removal
    mask takes from the whole model, from every layer's shape and the positions it loses."""

    def __init__(self, model: nn.Module, graph: ChannelGraph, example_inputs: Any):
        layers = {id(m): m for m in model.modules() if isinstance(m, WEIGHTED_LAYERS)}
        elems = dict.fromkeys(layers, 0)

        def hook(m: nn.Module, args: tuple, out: Any) -> None:
            elems[id(m)] += first_tensor(out).numel()

        x = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        one = tuple(t[:1] if isinstance(t, Tensor) and t.dim() else t for t in x)
        hooked_forward(model, one, [(m, hook) for m in layers.values()])
        index = {(id(m.module), m.dim): i for i, m in enumerate(graph.trace.members) if m.kind == "module"}
        rows = []
        for key, m in layers.items():
            w, conv = m.weight, not isinstance(m, nn.Linear)
            dw = conv and m.groups > 1 and m.groups == m.in_channels
            rows.append(
                [
                    w.shape[0],
                    w.shape[1],
                    w[0, 0].numel() if conv else 1,
                    elems[key] // w.shape[0],
                    m.groups if conv and not dw else 1,
                    int(dw),
                    index.get((key, 0), -1),
                    index.get((key, 1), -1),
                ]
            )
        self.graph = graph
        self.out, self.s1, self.k, self.pos, self.div, self.dw, self.i0, self.i1 = (
            torch.tensor(rows, dtype=torch.long).reshape(-1, 8).unbind(1)
        )
        self.base_params = int((self.out * self.s1 * self.k).sum())
        self.base_macs = int((self.pos * self.out * self.s1 * self.k).sum())

    def __call__(self, removed: Tensor) -> tuple[int, int]:
        """``(macs_removed, params_removed)`` of a :meth:`ChannelGraph.removal_mask`."""
        cut = torch.cat([self.graph.removed_per_member(removed), torch.zeros(1, dtype=torch.long)])
        out = self.out - cut[self.i0]
        s1 = torch.where(self.dw.bool(), self.s1, self.s1 - cut[self.i1] // self.div)
        params = int((out * s1 * self.k).sum())
        return self.base_macs - int((self.pos * out * s1 * self.k).sum()), self.base_params - params
