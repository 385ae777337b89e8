"""Channel dependencies: trace a model into the groups of (module, dim) members that must
lose the same channels, and the per-module-type surgery that cuts them.

``trace`` follows channels through a forward pass, ``oprules`` says how each tensor op maps
them, ``dryrun`` runs shapes only, ``handlers`` cuts layers, ``groups`` builds the groups.
"""

from pruning.graph.groups import ChannelGraph, ChannelGroup, GroupMember, build_graph, dependency_groups
from pruning.graph.handlers import (
    ChannelwiseHandler,
    FilterHandler,
    get_handler,
    register_handler,
    registered_handlers,
)
from pruning.graph.oprules import register_op_rule
from pruning.graph.trace import ChannelMappingError

__all__ = [
    "build_graph",
    "ChannelGraph",
    "ChannelGroup",
    "ChannelMappingError",
    "ChannelwiseHandler",
    "dependency_groups",
    "FilterHandler",
    "get_handler",
    "GroupMember",
    "register_handler",
    "register_op_rule",
    "registered_handlers",
]
