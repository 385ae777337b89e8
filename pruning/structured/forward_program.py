"""A model's forward as ``torch.fx`` nodes that can be run from any node on, with swapped layers.

A sensitivity scan cuts one group's consumers at a time. :class:`ForwardProgram` computes the
activations before a cut once and reruns only the nodes after it; ``cut_inputs`` builds a
forward that runs stacked copies of a layer's input through copies of the layer cut as
``prune_filters`` cuts them; ``swapped_forwards`` installs such forwards for the duration of a block.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn
from torch.fx.node import map_arg

from pruning.evaluation import first_tensor
from pruning.graph.handlers import get_handler

PROBE_ROWS = 7  # rows of the probe batch: a value with this many rows is per-sample


class HandlerLeaves(torch.fx.Tracer):
    """Keeps every layer with a pruning handler as one call (whose forward can be swapped)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return get_handler(m) is not None or super().is_leaf_module(m, qualname)


class ForwardProgram:
    """The model's forward as fx nodes, runnable from any position on (``split``), or one
    node that calls the whole model where fx cannot trace it."""

    def __init__(self, model: nn.Module, n_inputs: int, split: bool = True):
        self.model, self.consts, self.split, graph = model, {}, split, None
        if split:
            before = {id(m): set(vars(m)) for m in model.modules()}
            try:
                graph = HandlerLeaves().trace(model)
            except Exception:  # any tracing failure: run the model whole
                self.split = False
            finally:  # fx stores tensor constants on the traced module: keep them here instead
                for m in model.modules():
                    for key in set(vars(m)) - before.get(id(m), set()):
                        self.consts[key] = vars(m).pop(key)
        if graph is None:
            graph = torch.fx.Graph()
            graph.output(graph.call_module("", tuple(graph.placeholder(f"x{i}") for i in range(n_inputs))))
        self.nodes = list(graph.nodes)
        index = {n: i for i, n in enumerate(self.nodes)}
        self.last = [max((index[u] for u in n.users), default=i) for i, n in enumerate(self.nodes)]
        self.mods = {n.target: model.get_submodule(n.target) for n in self.nodes if n.op == "call_module"}
        self.frees: list[list[torch.fx.Node]] = [[] for _ in self.nodes]
        self.first_call: dict[int, int] = {}  # id(module) -> index of its first call
        for i, n in enumerate(self.nodes):
            self.frees[self.last[i]].append(n)
            if n.op == "call_module":
                self.first_call.setdefault(id(self.mods[n.target]), i)
        self.start = next(i for i, n in enumerate(self.nodes) if n.op != "placeholder")
        self.per_sample, self.valid, self.stackable = set(self.nodes[: self.start]), [True] * len(self.nodes), False

    def inputs(self, x: tuple) -> dict[torch.fx.Node, Any]:
        if len(x) > self.start or any(not n.args for n in self.nodes[len(x) : self.start]):
            raise ValueError(
                f"the batches give {len(x)} inputs; the model's forward takes "
                f"{', '.join(str(n.target) for n in self.nodes[: self.start])}"
            )
        return {n: x[i] if i < len(x) else n.args[0] for i, n in enumerate(self.nodes[: self.start])}

    def run(self, env: dict[torch.fx.Node, Any], start: int, stop: int | None = None) -> Any:
        """Run nodes ``start:stop`` on ``env`` (the values live at ``start``), in place: after
        it ``env`` holds the values live at ``stop``. Returns the output if it was reached."""
        get = env.__getitem__
        for i in range(start, len(self.nodes) if stop is None else stop):
            n = self.nodes[i]
            if n.op == "output":
                return map_arg(n.args[0], get)
            args, kwargs = map_arg(n.args, get), map_arg(n.kwargs, get)
            if n.op == "call_module":
                env[n] = self.mods[n.target](*args, **kwargs)
            elif n.op == "call_function":
                env[n] = n.target(*args, **kwargs)
            elif n.op == "call_method":
                env[n] = getattr(args[0], n.target)(*args[1:], **kwargs)
            elif n.op == "get_attr":
                owner, _, name = n.target.rpartition(".")
                env[n] = (
                    self.consts[n.target] if n.target in self.consts else getattr(self.model.get_submodule(owner), name)
                )
            else:
                raise RuntimeError(f"fx node {n.format_node()} cannot be run")
            for dead in self.frees[i]:
                env.pop(dead, None)
        return None

    def probe(self, x: tuple, rows: int) -> None:
        """On a small batch: check the nodes reproduce the model; learn which values are
        per-sample (copies stack on dim 0) and where the forward may be cut (not where a
        batch-dependent value that is not per-sample, e.g. a batch size, is live)."""
        x = tuple(
            t[:1].expand(PROBE_ROWS, *t.shape[1:]).contiguous()
            if isinstance(t, Tensor) and t.dim() and t.shape[0] == rows
            else t
            for t in x
        )
        env = self.inputs(x)
        each = {n for n, v in env.items() if isinstance(v, Tensor) and v.dim() and v.shape[0] == PROBE_ROWS}
        depends, out = set(each), None
        for i in range(self.start, len(self.nodes)):
            n = self.nodes[i]
            out = self.run(env, i, i + 1)
            if any(a in depends for a in n.all_input_nodes):
                depends.add(n)
                if isinstance(v := env.get(n), Tensor) and v.dim() and v.shape[0] == PROBE_ROWS:
                    each.add(n)
        got, want = first_tensor(out), first_tensor(self.model(*x))
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
            raise RuntimeError("the fx nodes do not reproduce the model's forward")
        self.stackable = bool(got.dim() and got.shape[0] == PROBE_ROWS and each & set(self.nodes[: self.start]))
        self.per_sample = each
        for i, n in enumerate(self.nodes):
            if n in depends and n not in each:
                self.valid[i + 1 : self.last[i] + 1] = [False] * (self.last[i] - i)

    def cut(self, modules: Sequence[nn.Module]) -> int | None:
        """The latest position before every call of ``modules`` where the forward can be cut;
        None where one of them is never called as a node."""
        calls = [self.first_call.get(id(m)) for m in modules] if self.split else [self.start]
        if not modules or None in calls:
            return None
        k = min(calls)
        while k > self.start and not self.valid[k]:
            k -= 1
        return k

    def copies(self, env: dict[torch.fx.Node, Any], r: int) -> dict[torch.fx.Node, Any]:
        """Fresh per-sample values for ``r`` stacked copies (objects shared stay shared)."""
        made: dict[int, Tensor] = {}
        out = dict(env)
        for n, v in env.items():
            if n in self.per_sample and isinstance(v, Tensor):
                if id(v) not in made:
                    made[id(v)] = v.repeat(r, *([1] * (v.dim() - 1))) if r > 1 else v.clone()
                out[n] = made[id(v)]
        return out


def cut_inputs(module: nn.Module, keeps: list[Tensor]) -> Callable:
    """A forward for ``module`` that runs each stacked copy of its input on the positions
    ``keeps[copy]`` only, through a copy of the layer cut as ``prune_filters`` cuts it: the
    pruned model's arithmetic at the pruned layer's cost (exactly removal, for a consumer)."""
    handler, parts = get_handler(module), []
    with torch.inference_mode(False), torch.no_grad():
        for keep in keeps:
            part = copy.copy(module)  # shares nothing it cuts: new parameter and buffer dicts
            part._parameters, part._buffers = dict(module._parameters), dict(module._buffers)
            handler.prune_in(part, keep)
            parts.append(part)

    def forward(input: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        axis = handler.channel_axis(module, input) % input.dim()
        xs = input.chunk(len(parts)) if len(parts) > 1 else (input,)
        return torch.cat([p.forward(x.index_select(axis, k), *args, **kwargs) for p, x, k in zip(parts, xs, keeps)])

    return forward


@contextmanager
def swapped_forwards(swaps: list[tuple[nn.Module, Callable]]) -> Iterator[None]:
    """``module.forward`` replaced inside (an instance attribute, as the trace does), restored after."""
    saved = [(m, m.__dict__.get("forward")) for m, _ in swaps]
    try:
        for m, f in swaps:
            m.__dict__["forward"] = f
        yield
    finally:
        for m, old in saved:
            if old is None:
                m.__dict__.pop("forward", None)
            else:
                m.__dict__["forward"] = old
