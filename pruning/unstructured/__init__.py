"""Connection pruning: weight masks kept through training, and sparse layers that execute
the pruned weights where that is measured faster than dense."""

from pruning.unstructured.masks import MaskCount, Masks, Sparsity, adjusted_dropout, prune_weights, regrow
from pruning.unstructured.sparse import SparseChoice, SparseConv2d, SparseLinear, sparsify, time_ms

__all__ = [
    "adjusted_dropout",
    "MaskCount",
    "Masks",
    "prune_weights",
    "regrow",
    "SparseChoice",
    "SparseConv2d",
    "SparseLinear",
    "sparsify",
    "Sparsity",
    "time_ms",
]
