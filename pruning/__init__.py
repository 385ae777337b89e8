"""prunekit's pruning library: pure PyTorch, no Hydra/Lightning/W&B.

Filter pruning that physically removes channels, connection pruning with masks,
Deep Compression storage, BatchNorm folding and honest measurement.

The names below are the ones most work needs; the rest live in namespaces:
``pruning.criteria`` (channel scores), ``pruning.graph`` (channel dependencies and layer
surgery), ``pruning.structured`` (filter pruning, records, sensitivity, regularisers),
``pruning.latency`` (timing, latency tables, latency targets), ``pruning.unstructured``
(weight masks, sparse layers), ``pruning.compress`` (Deep Compression storage),
``pruning.measure``, ``pruning.schedules``, ``pruning.fold``, ``pruning.evaluation``.
"""

from pruning import compress, criteria, evaluation, fold, graph, latency, measure, schedules, structured, unstructured
from pruning.compress import load_compressed, save_compressed
from pruning.criteria import register_criterion
from pruning.fold import fold_batchnorm
from pruning.graph import ChannelMappingError, dependency_groups, register_handler, register_op_rule
from pruning.latency import compare_latency, prune_for_latency
from pruning.measure import count, measure_latency
from pruning.structured import (
    PruningRecord,
    apply_record,
    group_channels,
    load_pruned,
    planned_channels,
    prune_filters,
    prune_to,
    save_pruned,
    sensitivity,
)
from pruning.unstructured import Masks, prune_weights

__all__ = [
    "apply_record",
    "ChannelMappingError",
    "compare_latency",
    "compress",
    "count",
    "criteria",
    "dependency_groups",
    "evaluation",
    "fold",
    "fold_batchnorm",
    "graph",
    "group_channels",
    "latency",
    "load_compressed",
    "load_pruned",
    "Masks",
    "measure",
    "measure_latency",
    "planned_channels",
    "prune_filters",
    "prune_for_latency",
    "prune_to",
    "prune_weights",
    "PruningRecord",
    "register_criterion",
    "register_handler",
    "register_op_rule",
    "save_compressed",
    "save_pruned",
    "schedules",
    "sensitivity",
    "structured",
    "unstructured",
]
