"""Were the baselines at their plateau? The rise of each run's baseline over its last epochs, from the row.

Every trained baseline's row carries its per-epoch validation accuracy and the plateau rule
(``baseline_training``: ``val_acc``, ``rule.plateau_window``). The rise is the rule's own
measure: the best accuracy of the last ``window`` epochs minus the best before them. A lesson
whose baselines still rose by more than its margin is flagged: more training alone moves
accuracy by more than the effect the lesson resolves, so an arm that trains longer may win
for that reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

DEFAULT_WINDOW = 3


def baseline_rise(row: Mapping[str, Any]) -> tuple[float, int] | None:
    """(rise of the baseline's validation accuracy over its last window epochs, as a fraction; the window),
    or None when the row has no curve longer than one epoch."""
    training = row.get("baseline_training") or {}
    curve = [float(a) for a in training.get("val_acc") or []]
    rule = training.get("rule") or {}
    window = int(rule.get("plateau_window") or DEFAULT_WINDOW)
    if len(curve) < 2:
        return None
    window = min(window, len(curve) - 1)  # a short curve: its epochs after the first
    return max(curve[-window:]) - max(curve[:-window]), window


def rising_note(rows: Iterable[Mapping[str, Any]], margin: float) -> str:
    """A note naming the baselines of ``rows`` that still rose by more than ``margin``; "" if none did."""
    by_seed: dict[Any, tuple[float, int]] = {}  # the arms of a seed share its baseline: counted once
    for row in rows:
        measured = baseline_rise(row)
        if measured is not None and measured[0] > margin and measured[0] > by_seed.get(row.get("seed"), (-1.0, 0))[0]:
            by_seed[row.get("seed")] = measured
    if not by_seed:
        return ""
    seed, (rise, window) = max(by_seed.items(), key=lambda kv: kv[1][0])
    return (
        f"baseline still rising: the baselines of {len(by_seed)} seed(s) gained more than the ±{margin * 100:g} pp margin "
        f"over their last epochs (most: +{rise * 100:.2f} pp over {window} epoch(s), seed {seed}); "
        "an arm that trains longer may win for that reason alone"
    )
