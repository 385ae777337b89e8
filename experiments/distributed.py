"""Which process of a multi-process (DDP) run this is: only global rank 0 writes."""

from __future__ import annotations

import os


def global_rank() -> int:
    """This process's rank among all training processes (0 when not distributed)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def is_global_zero() -> bool:
    """True in the one process that claims the output folder and writes rows, cache and W&B."""
    return global_rank() == 0
