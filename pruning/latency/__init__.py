"""Latency: interleaved model-vs-model timing, per-layer latency tables, and pruning to a
latency target (a search over the table, corrected by measuring the cut model).

Importing this package registers ``round_to="auto"`` with :func:`pruning.prune_filters`.
"""

from pruning.latency.comparison import LatencyComparison, compare_latency, cpu_model, device_name
from pruning.latency.search import LatencyPruning, UnreachableTarget, check_target, prune_for_latency
from pruning.latency.table import LatencyTable, forget_timings, latency_table, round_auto
from pruning.structured.cut import register_rounding

register_rounding("auto", round_auto)

__all__ = [
    "check_target",
    "compare_latency",
    "cpu_model",
    "device_name",
    "forget_timings",
    "LatencyComparison",
    "LatencyPruning",
    "LatencyTable",
    "latency_table",
    "prune_for_latency",
    "round_auto",
    "UnreachableTarget",
]
