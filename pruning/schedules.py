"""Pure schedule functions: the target sparsity (or ratio) at a given pruning step."""

from __future__ import annotations

import math

from pruning.checks import check_number

SCHEDULE_KINDS = ("linear", "geometric", "cubic")


def _check_steps(step: int, total: int) -> None:
    check_number("total", total, 1, integer=True, suffix=" (the number of steps)")
    check_number("step", step, 0, total, integer=True, suffix=f" (total={total})")


def sparsity_schedule(step: int, total: int, final: float, initial: float = 0.0, kind: str = "linear") -> float:
    """Target sparsity after pruning step ``step`` of ``total`` (step 0 -> ``initial``,
    step ``total`` -> ``final``).

    ``linear``: sparsity grows by equal amounts. ``geometric``: the kept fraction shrinks
    by the same factor each step (Han's iterative prune/retrain: prune the same share of
    what is left). ``cubic``: fast at first, slow at the end (Zhu & Gupta 2017).
    """
    _check_steps(step, total)
    for label, value in (("final", final), ("initial", initial)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{label}={value}: sparsities must be in [0, 1)")
    t = step / total
    if kind == "linear":
        return initial + (final - initial) * t
    if kind == "geometric":
        return 1.0 - (1.0 - initial) * ((1.0 - final) / (1.0 - initial)) ** t
    if kind == "cubic":
        return final + (initial - final) * (1.0 - t) ** 3
    raise ValueError(f"kind={kind!r}: choose one of {SCHEDULE_KINDS}")


def channel_schedule(channels: int, kept: int, step: int, total: int) -> int:
    """Channels a group keeps after step ``step`` of ``total`` when it goes from ``channels``
    to ``kept`` in equal geometric steps (the same share of what is left each step); step
    ``total`` gives exactly ``kept``, so every schedule ends at the same architecture."""
    _check_steps(step, total)
    if not 1 <= kept <= channels:
        raise ValueError(f"kept={kept}: must be in [1, channels={channels}]")
    if step == total:
        return kept
    return max(kept, min(channels, math.ceil(round(channels * (kept / channels) ** (step / total), 9))))
