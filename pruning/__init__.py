"""prunekit's pruning library: pure PyTorch, no Hydra/Lightning/W&B.

Filter pruning that physically removes channels, connection pruning with masks,
Deep Compression storage, BatchNorm folding and honest measurement.
"""

# --- measurement (measure.py) ---
from pruning.measure import Counts, count, dense_bytes, measure_latency, nonzero_params

# --- structured pruning engine (trace, oprules, dryrun, graph, handlers, criteria, structured, record) ---
from pruning.criteria import (
    APoZ,
    BNGamma,
    FPGM,
    L1,
    L2,
    ActivationMean,
    ActivationStd,
    Criterion,
    LargestL1,
    Random,
    Taylor,
    criterion_names,
    get_criterion,
    register_criterion,
)
from pruning.graph import ChannelGroup, GroupMember, dependency_groups
from pruning.handlers import ChannelwiseHandler, FilterHandler, register_handler
from pruning.oprules import register_op_rule
from pruning.record import PruningRecord, apply_record, load_pruned, read_record, save_pruned
from pruning.structured import group_channels, kept_channels, planned_channels, prune_filters, prune_to
from pruning.sensitivity import SensitivityTable, sensitivity
from pruning.trace import ChannelMappingError

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
from pruning.fold import fold_batchnorm, foldable_pairs
from pruning.masks import Masks, MaskCount, Sparsity, adjusted_dropout, prune_weights
from pruning.schedules import channel_schedule, sparsity_schedule
from pruning.sparse import SparseChoice, SparseConv2d, SparseLinear, sparsify
