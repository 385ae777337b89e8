"""Per-group sensitivity without retraining: prune one group at a time, measure, repeat.

:func:`sensitivity` prunes each dependency group alone at each ratio and measures the
model on held-out batches without retraining (Li et al. 2017, Fig. 2), never copying or
cutting the model. Without retraining, removing a group's channels changes the network
only where they are read: at the group's consumers (the convs and linears that take the
channels as inputs, on every branch of a residual stream). So the scan runs the unpruned
model with each consumer's forward swapped for a copy of that one layer with its inputs
cut as ``prune_filters`` cuts them, and reruns only the layers from the group's first
consumer on: the forward is split with ``torch.fx``, the activations before each cut are
computed once (one pass, advanced group by group in forward order), and the ratios of a
group run stacked in one batch. Channels are chosen by
:func:`pruning.structured.surgery.plan_removal`, as ``prune_filters`` chooses them. A model fx
cannot split runs whole (still no copies); a group whose removal changes what the kept
channels compute (``exact=False``: channels normalised together) is measured by pruning a copy.

``pruning.sensitivity`` is the function: import the rest with ``from pruning.structured.scan import ...``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from pruning.checks import check_number
from pruning.criteria import Criterion, get_criterion
from pruning.evaluation import (
    Batch,
    Metric,
    eval_mode,
    first_tensor,
    materialize,
    mean_metric,
    model_device,
    top1,
    weighted_metric,
)
from pruning.graph.groups import ChannelGraph, ChannelGroup, build_graph
from pruning.structured.cut import check_ratio, prune_filters
from pruning.structured.forward_program import ForwardProgram, cut_inputs, swapped_forwards
from pruning.structured.removal_cost import RemovalCosts
from pruning.structured.surgery import group_name, plan_removal

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
Progress = Callable[[int, int, str], None]


@dataclass
class SensitivityTable:
    """The unpruned metric and cost, and one row per (group, ratio) with the keys ``group``
    (a name ``prune_filters`` accepts as a ratio key), ``ratio``, ``channels``, ``kept``
    (what ``prune_filters(model, x, {group: ratio})`` keeps), ``metric``, ``macs_removed``
    and ``params_removed`` (what the whole model loses, by ``pruning.count``'s rule)."""

    base_metric: float
    base_macs: int
    base_params: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_records(self) -> list[dict[str, Any]]:
        """The rows as new dicts (JSON-able)."""
        return [dict(r) for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-able; ``SensitivityTable(**d)`` reads it back."""
        return {
            "base_metric": self.base_metric,
            "base_macs": self.base_macs,
            "base_params": self.base_params,
            "rows": self.to_records(),
        }

    def curves(self) -> dict[str, list[tuple[float, float]]]:
        """``{group: [(ratio, metric), ...]}`` in row order."""
        out: dict[str, list[tuple[float, float]]] = {}
        for r in self.rows:
            out.setdefault(r["group"], []).append((r["ratio"], r["metric"]))
        return out


def _select(graph: ChannelGraph, groups: Sequence[str] | None) -> list[ChannelGroup]:
    prunable = [g for g in graph.groups if g.n_prunable > 0]
    if groups is None:
        return prunable
    groups = [groups] if isinstance(groups, str) else list(groups)
    if not groups:
        raise ValueError("groups=[] selects nothing; pass None to scan every prunable group")
    by_name, chosen = {n: g for g in graph.groups for n in g.names}, {}
    for name in groups:
        g = by_name.get(name)
        if g is None:
            names = [group_name(x) for x in prunable]
            raise ValueError(
                f"groups names {name!r}, which is not a layer with prunable output channels; groups: "
                + ", ".join(names[:40])
                + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
            )
        if g.n_prunable == 0:
            raise ValueError(
                f"group {name!r} cannot be pruned: {'; '.join(g.reasons) or 'all its channels are frozen'}"
            )
        chosen[g.index] = g
    return [chosen[i] for i in sorted(chosen)]


def sensitivity(
    model: nn.Module,
    example_inputs: Any,
    batches: Iterable,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    criterion: str | Criterion = "l1",
    groups: Sequence[str] | None = None,
    metric: Metric | None = None,
    progress: Progress | None = None,
    *,
    ignore: Sequence[str] = (),
    round_to: int = 1,
    max_rows: int = 256,
) -> SensitivityTable:
    """Prune each group alone at each ratio and measure ``metric`` without retraining.

    batches: ``(inputs, targets)`` pairs (inputs a tensor or tuple), iterated once and held
        in memory, with the activations of one layer for all of them.
    ratios: fractions of each group's prunable channels to remove, each in [0, 1).
    criterion, ignore, round_to: as in ``prune_filters``, which would keep the same channels.
    groups: names of the groups to scan (any layer of a group); default every prunable group.
    metric: ``metric(outputs, targets) -> float`` per batch, averaged weighted by batch size;
        default :func:`top1` (a fraction). ``outputs``: the model's first output tensor.
    progress: ``progress(i, n, group)`` is called as group ``i`` of ``n`` (from 1) starts.
    max_rows: at most this many rows (images x stacked ratio copies) per forward pass.
    The model is left as it was: structure, tensors and train/eval modes.
    """
    if isinstance(ratios, (str, bytes)) or not isinstance(ratios, Iterable):
        raise TypeError(f"ratios must be a sequence of numbers in [0, 1), got {ratios!r}")
    ratios = [check_ratio(f"ratios[{i}]", r) for i, r in enumerate(ratios)]
    if not ratios:
        raise ValueError("ratios is empty: give at least one ratio in [0, 1)")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable as progress(i, n, group), got {progress!r}")
    check_number("max_rows", max_rows, 1, integer=True)
    data, metric = materialize(batches, model), metric or top1
    ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    crit, scores = get_criterion(criterion), {}

    def cached(g: ChannelGroup) -> Tensor | None:  # scored once for all ratios, after one prepare
        return scores[g.index] if g.index in scores else scores.setdefault(g.index, crit(g))

    with eval_mode(model):
        graph = build_graph(model, example_inputs, ignore)
        chosen = _select(graph, groups)
        if getattr(crit, "prepare", None) is not None and any(r > 0 for r in ratios):
            crit.prepare(model, chosen)
        plans = {
            g.index: [
                plan_removal(graph, {g.index: r}, cached, round_to) if r > 0 else graph.removal_mask() for r in ratios
            ]
            for g in chosen
        }
        costs = RemovalCosts(model, graph, example_inputs)

        def naive(g: ChannelGroup, ratio: float) -> float:  # copy, prune, evaluate
            pruned = copy.deepcopy(model)
            prune_filters(pruned, example_inputs, {group_name(g): ratio}, crit, ignore, round_to)
            return mean_metric(pruned, data, metric)

        metrics, base = _scan(model, graph, chosen, ratios, plans, data, metric, progress, max_rows, naive)
    rows = []
    for g in chosen:
        for r, removed in zip(ratios, plans[g.index]):
            macs, params = costs(removed)
            rows.append(
                {
                    "group": group_name(g),
                    "ratio": r,
                    "channels": g.n_channels,
                    "kept": g.n_channels - int(removed[graph.comps(g)].sum()),
                    "metric": metrics.get((g.index, _key(removed)), base),
                    "macs_removed": macs,
                    "params_removed": params,
                }
            )
    return SensitivityTable(base, costs.base_macs, costs.base_params, rows)


def _key(removed: Tensor) -> tuple[int, ...]:
    return tuple(removed.nonzero().flatten().tolist())


def _program(model: nn.Module, x: tuple, rows: int) -> ForwardProgram:
    """A split program if fx reproduces the model, else the whole model (stacking ratio
    copies if the model runs on other batch sizes)."""
    program = ForwardProgram(model, len(x))
    try:
        program.probe(x, rows)
    except Exception:  # the nodes do not run like the model: run it whole
        program = ForwardProgram(model, len(x), split=False)
        try:
            program.probe(x, rows)
        except Exception:  # not even on other batch sizes: one ratio at a time
            program.stackable = False
    return program


def _scan(
    model: nn.Module,
    graph: ChannelGraph,
    chosen: list[ChannelGroup],
    ratios: list[float],
    plans: dict[int, list[Tensor]],
    data: list[Batch],
    metric: Metric,
    progress: Progress | None,
    max_rows: int,
    naive: Callable[[ChannelGroup, float], float],
) -> tuple[dict[tuple, float], float]:
    """``{(group index, removal key): metric}`` for every removal that cuts something, and
    the unpruned metric."""
    members, total = graph.trace.members, sum(n for _, _, n in data)
    with torch.inference_mode():
        program = _program(model, data[0][0], data[0][2])
    consumers, cuts = {}, {}
    for g in chosen:  # consumers: the layers that read the group's channels (inputs, dim 1)
        touched = graph.removed_per_member(graph.removal_mask().index_fill(0, graph.comps(g), True)) > 0
        consumers[g.index] = [i for i, m in enumerate(members) if m.kind == "module" and m.dim == 1 and touched[i]]
        cuts[g.index] = program.cut([members[i].module for i in consumers[g.index]]) if g.exact else None
    order = sorted(chosen, key=lambda g: (len(program.nodes) if cuts[g.index] is None else cuts[g.index], g.index))
    metrics: dict[tuple, float] = {}
    with torch.inference_mode():
        envs = [program.inputs(tuple(t.clone() if isinstance(t, Tensor) else t for t in x)) for x, _, _ in data]
    at = program.start
    for step, g in enumerate(order, 1):
        if progress is not None:
            progress(step, len(order), group_name(g))
        todo: dict[tuple, tuple[float, Tensor]] = {}
        for r, removed in zip(ratios, plans[g.index]):
            if bool(removed[graph.comps(g)].any()):
                todo.setdefault(_key(removed), (r, removed))
        cut, keys = cuts[g.index], list(todo)
        if cut is None:
            metrics.update({(g.index, k): naive(g, r) for k, (r, _) in todo.items()})
            continue
        per = max(1, max_rows // max(n for _, _, n in data)) if program.stackable else 1
        keeps = {
            i: [(~graph.gone(i, todo[k][1])).nonzero().flatten().to(model_device(model)) for k in keys]
            for i in consumers[g.index]
        }
        chunks = [
            (
                j,
                len(keys[j : j + per]),
                [(members[i].module, cut_inputs(members[i].module, keep[j : j + per])) for i, keep in keeps.items()],
            )
            for j in range(0, len(keys), per)
        ]
        sums = [0.0] * len(keys)
        with torch.inference_mode():
            for env in envs:  # advance the cached activations to this group's cut
                program.run(env, at, cut)
            at = cut
            for env, (_, y, n) in zip(envs, data):
                for j, r, swaps in chunks:
                    with swapped_forwards(swaps):
                        out = first_tensor(program.run(program.copies(env, r), cut))
                    for c in range(r):
                        sums[j + c] += weighted_metric(metric, out[c * n : (c + 1) * n] if r > 1 else out, y, n)
        metrics.update({(g.index, k): s / total for k, s in zip(keys, sums)})
    with torch.inference_mode():
        base = sum(weighted_metric(metric, program.run(env, at), y, n) for env, (_, y, n) in zip(envs, data))
    return metrics, base / total
