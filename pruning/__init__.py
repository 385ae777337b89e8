"""prunekit's pruning library: pure PyTorch, no Hydra/Lightning/W&B.

Filter pruning that physically removes channels, connection pruning with masks,
Deep Compression storage, BatchNorm folding and honest measurement.
"""

# --- measurement (measure.py) ---
# --- connection pruning, Deep Compression, sparse inference, BN folding ---
from pruning.compress import (
    CentroidTuner,
    CompressedFormatError,
    SharedWeights,
    SizeReport,
    compression_report,
    load_compressed,
    save_compressed,
    share_weights,
)

# --- structured pruning engine (trace, oprules, dryrun, graph, handlers, criteria, structured, record) ---
from pruning.criteria import (
    FPGM,
    L1,
    L2,
    ActivationMean,
    ActivationStd,
    APoZ,
    BNGamma,
    Criterion,
    GroupNorm,
    LargestL1,
    Random,
    Taylor,
    criterion_names,
    get_criterion,
    register_criterion,
)
from pruning.fold import fold_batchnorm, foldable_pairs
from pruning.graph import ChannelGroup, GroupMember, dependency_groups
from pruning.handlers import ChannelwiseHandler, FilterHandler, register_handler
from pruning.latency import LatencyComparison, compare_latency, cpu_model, device_name
from pruning.latency_prune import LatencyPruning, UnreachableTarget, prune_for_latency
from pruning.latency_table import LatencyTable, latency_table
from pruning.masks import MaskCount, Masks, Sparsity, adjusted_dropout, prune_weights, regrow
from pruning.measure import Counts, count, dense_bytes, measure_latency, nonzero_params
from pruning.oprules import register_op_rule
from pruning.record import (
    PruningRecord,
    RecordError,
    RecordMismatchError,
    apply_record,
    load_pruned,
    read_record,
    save_pruned,
)
from pruning.regularizers import GroupLasso, l1_penalty, norm_scales, soft_prune_
from pruning.schedules import channel_schedule, sparsity_schedule
from pruning.sensitivity import SensitivityTable, sensitivity
from pruning.sparse import SparseChoice, SparseConv2d, SparseLinear, sparsify
from pruning.structured import group_channels, kept_channels, planned_channels, prune_filters, prune_to
from pruning.trace import ChannelMappingError

__all__ = [
    "ActivationMean",
    "ActivationStd",
    "adjusted_dropout",
    "APoZ",
    "apply_record",
    "BNGamma",
    "CentroidTuner",
    "channel_schedule",
    "ChannelGroup",
    "ChannelMappingError",
    "ChannelwiseHandler",
    "CompressedFormatError",
    "compression_report",
    "count",
    "Counts",
    "compare_latency",
    "cpu_model",
    "Criterion",
    "criterion_names",
    "dense_bytes",
    "dependency_groups",
    "device_name",
    "FilterHandler",
    "fold_batchnorm",
    "foldable_pairs",
    "FPGM",
    "get_criterion",
    "group_channels",
    "GroupLasso",
    "GroupMember",
    "GroupNorm",
    "kept_channels",
    "L1",
    "l1_penalty",
    "L2",
    "LatencyComparison",
    "LatencyPruning",
    "LatencyTable",
    "latency_table",
    "LargestL1",
    "load_compressed",
    "load_pruned",
    "MaskCount",
    "Masks",
    "measure_latency",
    "nonzero_params",
    "norm_scales",
    "planned_channels",
    "prune_filters",
    "prune_for_latency",
    "UnreachableTarget",
    "prune_to",
    "prune_weights",
    "regrow",
    "PruningRecord",
    "Random",
    "read_record",
    "RecordError",
    "RecordMismatchError",
    "register_criterion",
    "register_handler",
    "register_op_rule",
    "save_compressed",
    "save_pruned",
    "sensitivity",
    "SensitivityTable",
    "share_weights",
    "SharedWeights",
    "soft_prune_",
    "SizeReport",
    "SparseChoice",
    "SparseConv2d",
    "SparseLinear",
    "sparsify",
    "Sparsity",
    "sparsity_schedule",
    "Taylor",
]
