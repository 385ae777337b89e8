"""Filter pruning: score channel groups, cut them physically, record the cut, scan sensitivity,
and the sparsity-training regularisers (slimming, group lasso, soft filter pruning) that make
groups cheap to remove.
"""

from pruning.structured.cut import (
    SCOPES,
    SCORINGS,
    global_channels,
    group_channels,
    group_members,
    group_name,
    kept_channels,
    planned_channels,
    prune_filters,
    prune_to,
    register_rounding,
)
from pruning.structured.ranking import GlobalRanking
from pruning.structured.record import (
    PruningRecord,
    RecordError,
    RecordMismatchError,
    apply_record,
    load_pruned,
    read_record,
    save_pruned,
)
from pruning.structured.regularizers import GroupLasso, l1_penalty, lowest_channels, norm_scales, soft_prune_
from pruning.structured.scan import SensitivityTable, sensitivity

__all__ = [
    "apply_record",
    "global_channels",
    "GlobalRanking",
    "group_channels",
    "group_members",
    "group_name",
    "GroupLasso",
    "kept_channels",
    "l1_penalty",
    "load_pruned",
    "lowest_channels",
    "norm_scales",
    "planned_channels",
    "prune_filters",
    "prune_to",
    "PruningRecord",
    "read_record",
    "RecordError",
    "RecordMismatchError",
    "register_rounding",
    "save_pruned",
    "SCOPES",
    "SCORINGS",
    "sensitivity",
    "SensitivityTable",
    "soft_prune_",
]
