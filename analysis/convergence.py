"""Were the baselines at their plateau? The rise of each run's baseline over its last epochs, from the row.

Every trained baseline's row carries its per-epoch validation accuracy and the plateau rule
(``baseline_training``: ``val_acc``, ``rule.plateau_window``). The rise is the rule's own
measure: the best accuracy of the last ``window`` epochs minus the best before them. A lesson
whose baselines still rose by more than its margin is flagged: more training alone moves
accuracy by more than the effect the lesson resolves, so an arm that trains longer may win
for that reason. Unless the store shows it is not so: the same seeds trained on a longer
schedule (:mod:`analysis.baseline_schedules`), whose paired gain in test accuracy stays below
the margin (the upper end of its 95% interval: a longer schedule that loses accuracy gives an arm
that trains longer no advantage), show that the rise was the schedule's annealing, not
accuracy left on the table; the note then says so instead. A longer schedule that gains more
than the margin makes the note say that too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from analysis.baseline_schedules import schedule_name

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


def rising_note(rows: Iterable[Mapping[str, Any]], margin: float, gains: pd.DataFrame | None = None) -> str:
    """A note naming the baselines of ``rows`` that still rose by more than ``margin``; "" if none did.
    ``gains``: :func:`analysis.baseline_schedules.schedule_gains` of the store (longer schedules, paired)."""
    rows = list(rows)
    by_seed: dict[Any, tuple[float, int]] = {}  # the arms of a seed share its baseline: counted once
    for row in rows:
        measured = baseline_rise(row)
        if measured is not None and measured[0] > margin and measured[0] > by_seed.get(row.get("seed"), (-1.0, 0))[0]:
            by_seed[row.get("seed")] = measured
    if not by_seed:
        return ""
    seed, (rise, window) = max(by_seed.items(), key=lambda kv: kv[1][0])
    within = f"the baselines of {len(by_seed)} seed(s) gained more than the ±{margin * 100:g} pp margin over their last epochs (most: +{rise * 100:.2f} pp over {window} epoch(s), seed {seed})"
    check = _longer_schedule(rows, gains)
    if check is not None:
        longer = f"{check['B']} gained {check['gain_pp']:+.2f} pp [{check['ci_low']:+.2f}, {check['ci_high']:+.2f}] on {check['n']} seeds"
        if check["ci_high"] <= margin * 100:  # more training gains no more than the margin (losing is no advantage)
            return f"baseline at its plateau: {within}, but the same seeds on {longer}, within the margin"
        return f"baseline not at its plateau: {within}, and the same seeds on {longer}; an arm that trains longer may win for that reason alone"
    return f"baseline still rising: {within}; an arm that trains longer may win for that reason alone"


def _longer_schedule(rows: list[Mapping[str, Any]], gains: pd.DataFrame | None) -> dict[str, Any] | None:
    """The longest schedule paired against the rows' own (their dataset, model, schedule), if the store has one."""
    if gains is None or gains.empty or not rows:
        return None
    row = rows[0]
    own = schedule_name(dict(row))
    match = gains[(gains["dataset"] == row.get("dataset")) & (gains["model"] == row.get("model")) & (gains["A"] == own)]
    fixed = match[~match["B"].astype(str).str.startswith("auto")]  # a longer fixed schedule, not a stopping rule
    match = fixed if not fixed.empty else match
    return None if match.empty else match.sort_values("n", kind="stable").iloc[-1].to_dict()
