"""The plateau rule of ``baseline.epochs=auto``, and the callback that records the validation curve.

A baseline is at its plateau when the best validation accuracy of its last ``window`` epochs
beats the best of the epochs before them by less than ``pp`` percentage points (the running
best, so one noisy epoch neither stops nor prolongs training). Training stops at the first
epoch where that holds, or at ``max_epochs`` (the cap), where the verdict says how much the
accuracy was still rising.

The learning-rate schedule of an ``auto`` baseline spans the cap: ``cosine`` and
``multistep`` are laid out over ``max_epochs`` epochs and training may stop part-way, so
the schedule is a fixed function of the step wherever the rule stops it (learning-rate
rewinding replays exactly that function). With ``constant`` the plateau is that of the
learning rate itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import lightning as L


@dataclass(frozen=True)
class PlateauRule:
    """Stop when the validation accuracy gains less than ``pp`` points over the last ``window`` epochs;
    at most ``max_epochs`` epochs."""

    pp: float = 0.1
    window: int = 3
    max_epochs: int = 30

    def gain_pp(self, curve: Sequence[float]) -> float | None:
        """Best accuracy of the last ``window`` epochs minus the best before them, in points
        (None until the curve has more than ``window`` epochs). ``curve`` holds fractions."""
        if len(curve) <= self.window:
            return None
        return (max(curve[-self.window :]) - max(curve[: -self.window])) * 100.0

    def reached(self, curve: Sequence[float]) -> bool:
        """Whether the curve is at its plateau by this rule."""
        gain = self.gain_pp(curve)
        return gain is not None and gain < self.pp

    def verdict(self, curve: Sequence[float]) -> dict[str, Any]:
        """What the rule says of a finished curve: reached (and at which epoch) or still rising at the cap."""
        gain = self.gain_pp(curve)
        reached = self.reached(curve)
        epochs = len(curve)
        if reached:
            text = (
                f"plateau reached at epoch {epochs}: +{gain:.2f} pp over the last {self.window} epochs (< {self.pp:g})"
            )
        elif gain is None:
            text = f"not judged: {epochs} epoch(s), the rule needs more than {self.window}"
        else:
            text = f"stopped at epoch {epochs} while still rising by {gain:.2f} pp over the last {self.window} epochs"
        return {"reached": reached, "epoch": epochs, "gain_pp": gain, "window": self.window, "text": text}

    def as_dict(self) -> dict[str, Any]:
        return {"plateau_pp": self.pp, "plateau_window": self.window, "max_epochs": self.max_epochs}


class ValidationCurve(L.Callback):
    """Records the validation accuracy of every training epoch; with a ``rule``, stops training
    once the rule says the curve is at its plateau."""

    def __init__(self, rule: PlateauRule | None = None) -> None:
        self.rule = rule
        self.by_epoch: dict[int, float] = {}
        self.epochs = 0  # training epochs completed

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs += 1

    @property
    def curve(self) -> list[float]:
        return [self.by_epoch[e] for e in sorted(self.by_epoch)]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val/acc" not in trainer.callback_metrics:
            return
        self.by_epoch[int(trainer.current_epoch)] = float(trainer.callback_metrics["val/acc"])  # the epoch's last
        if self.rule is not None and self.rule.reached(self.curve):
            trainer.should_stop = True
