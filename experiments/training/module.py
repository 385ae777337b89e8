"""The LightningModule: a classifier with loss, top-1/top-5 metrics and a config-bound optimizer."""

from __future__ import annotations

import inspect
import math
from typing import Callable, Iterable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

LR_SCHEDULES = ("constant", "cosine", "multistep")  # multistep: /10 at 50% and 75%


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The learning rate at optimizer ``step`` of a ``total``-step ``schedule``, as a fraction of the
    optimizer's lr (``constant``: 1; ``cosine``: half a cosine to 0 at ``total``; ``multistep``: /10
    at 50% and again at 75%)."""
    if schedule == "constant":
        return 1.0
    total = max(1, int(total))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    if schedule == "multistep":
        return 0.1 ** ((step >= total // 2) + (step >= 3 * total // 4))
    raise ValueError(f"lr_schedule={schedule!r}: allowed values are {LR_SCHEDULES}")


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """Number of samples whose target is among the k highest logits."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == targets[:, None]).any(dim=1).sum()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), batch mean (Hinton et al. 2015)."""
    t = temperature
    target = F.log_softmax(teacher_logits / t, dim=1)
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), target, log_target=True, reduction="batchmean") * t * t


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite: the weights are useless and are not kept."""


class Classifier(L.LightningModule):
    """Wraps any nn.Module classifier; the optimizer is a partial bound here.

    ``penalty`` (optional) is a callable ``model -> Tensor`` added to the training loss
    (L1/L2 regularisation of connection pruning); ``after_step`` hooks run after every
    optimizer step (mask enforcement keeps pruned weights exactly zero); ``trainable``
    returns the parameters to optimise (default: the model's that require grad; Deep
    Compression's centroid fine-tuning passes the codebooks). With a ``teacher`` (a frozen
    model, e.g. the dense baseline) the loss is Hinton's knowledge distillation:
    ``(1 - distill) * CE + distill * T^2 * KL(teacher_T || student_T)``. ``frozen_modules``
    stay in eval mode while training (a frozen layer's BatchNorm statistics do not move).
    ``label_smoothing`` smooths the cross-entropy targets; with ``select_best`` the weights
    of the validation epoch with the best accuracy are restored when fitting ends.
    ``replay=(offset, total)`` steps the schedule as a ``total``-step schedule from its step
    ``offset`` on, instead of one laid out over this fit (learning-rate rewinding replays the
    baseline's schedule this way).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_schedule: str = "constant",
        penalty: Callable[[nn.Module], torch.Tensor] | None = None,
        after_step: list[Callable[[nn.Module], None]] | None = None,
        trainable: Callable[[], Iterable[nn.Parameter]] | None = None,
        teacher: nn.Module | None = None,
        distill: float = 0.0,
        temperature: float = 4.0,
        average: bool = False,
        frozen_modules: Iterable[nn.Module] = (),
        label_smoothing: float = 0.0,
        select_best: bool = False,
        replay: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False  # see training_step
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={lr_schedule!r}: allowed values are {LR_SCHEDULES}")
        self.model = model
        self.optimizer_factory = optimizer
        self.lr_schedule = lr_schedule
        self.penalty = penalty
        self.after_step = after_step or []
        self.trainable = trainable
        # kept out of the module tree: not trained, not checkpointed, never put in train mode
        self._teacher = [teacher.eval().requires_grad_(False)] if teacher is not None and distill > 0 else []
        self.distill = float(distill)
        self.temperature = float(temperature)
        self._sums: dict[str, dict[str, float]] = {}
        self.average = average
        self._average: dict[str, torch.Tensor] = {}
        self._averaged = 0
        self._frozen = list(frozen_modules)  # kept in eval mode: frozen BatchNorm statistics stay fixed
        self.label_smoothing = float(label_smoothing)
        self.select_best = select_best
        self._best: tuple[float, dict[str, torch.Tensor]] | None = None
        self.replay = replay

    def __setattr__(self, name: str, value) -> None:
        # Lightning sets this plain string twice per hook call; nn.Module.__setattr__ would
        # check it against parameters, buffers and submodules every time (~40 times a step)
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_loss(
        self, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(total loss to optimise, cross-entropy, logits)`` of a training batch."""
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        total = loss
        if self._teacher:
            total = (1 - self.distill) * loss + self.distill * self.distillation_loss(logits, x)
        if self.penalty is not None:
            total = total + self.penalty(self.model)
        return total, loss, logits

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimizer step, written out (manual optimization).

        The same operations in the same order as Lightning's automatic optimization (forward,
        zero_grad, backward, step, then the per-step lr schedule), with a fraction of its
        per-step hook calls: on small models those cost as much as the step itself.
        """
        logs = self._logs_this_step()
        optimizer = self.optimizers()
        total, loss, logits = self.training_loss(batch)
        value = total.item()  # one scalar read: torch.isfinite is a composite op, 40x the cost
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"the training loss is {value} at step {self.global_step + 1} (epoch {self.current_epoch + 1}): "
                "training diverged; lower this phase's learning rate (baseline.optimizer.lr or strategy.retrain.optimizer.lr)"
            )
        optimizer.zero_grad()
        self.manual_backward(total)
        optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        if logs:
            acc = (logits.argmax(1) == batch[1]).float().mean()
            self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False)
            self.log("train/acc", acc, prog_bar=True, on_step=True, on_epoch=False)
        return total.detach()

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Move an ``(x, y)`` tensor pair directly; anything else goes through Lightning's collection walk.

        Lightning's generic version costs tens of microseconds a step, as much as a small model's
        optimizer update.
        """
        if type(batch) in (tuple, list) and all(isinstance(t, torch.Tensor) for t in batch):
            non_blocking = device.type not in ("cpu", "mps")  # as Lightning's own transfer
            return type(batch)(t.to(device, non_blocking=non_blocking) for t in batch)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _logs_this_step(self) -> bool:
        """Whether the loggers write this step (every ``trainer.log_every_n_steps``).

        ``self.log`` costs about as much as a training step of a small MLP, so the training
        curves are only computed on the steps that are written (and shown by the progress bar).
        """
        trainer = self._trainer
        if trainer is None:
            return True
        every = max(1, int(trainer.log_every_n_steps))
        return (self.global_step + 1) % every == 0

    # Lightning reads this signature on every step (to decide whether to pass batch_idx); a
    # precomputed one makes that lookup several times cheaper
    training_step.__signature__ = inspect.signature(training_step)

    def distillation_loss(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Hinton's loss against the frozen teacher's outputs on ``x``."""
        with torch.no_grad():
            teacher_logits = self._teacher[0](x)
        return distillation_loss(logits, teacher_logits, self.temperature)

    def on_fit_start(self) -> None:
        if self._teacher:
            self._teacher[0].to(self.device)

    def on_train_epoch_start(self) -> None:
        for module in self._frozen:
            module.eval()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        for hook in self.after_step:
            hook(self.model)

    @torch.no_grad()
    def on_train_epoch_end(self) -> None:
        if not self.average:
            return
        self._averaged += 1
        for name, value in self.model.state_dict().items():
            if name not in self._average:
                self._average[name] = value.detach().clone()
            elif value.is_floating_point():
                self._average[name] += (value - self._average[name]) / self._averaged

    def on_fit_end(self) -> None:
        if self.average and self._average:
            self.model.load_state_dict(self._average)
        if self.select_best and self._best is not None:
            self.model.load_state_dict(self._best[1])

    # -- evaluation: exact sums over the whole split, not averages of batch means --------
    def _eval_step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, y = batch
        logits = self.model(x)
        sums = self._sums.setdefault(stage, {"loss": 0.0, "top1": 0.0, "top5": 0.0, "n": 0.0})
        sums["loss"] += float(F.cross_entropy(logits, y, reduction="sum"))
        sums["top1"] += float(topk_correct(logits, y, 1))
        sums["top5"] += float(topk_correct(logits, y, 5))
        sums["n"] += len(y)

    def _eval_end(self, stage: str) -> None:
        sums = self._sums.pop(stage, None) or {"loss": 0.0, "top1": 0.0, "top5": 0.0, "n": 0.0}
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:  # DDP: every rank saw its own shard
            keys = ("loss", "top1", "top5", "n")
            total = trainer.strategy.reduce(torch.tensor([sums[k] for k in keys], dtype=torch.float64), reduce_op="sum")
            sums = dict(zip(keys, total.tolist()))
        if not sums["n"]:
            return
        n = sums["n"]
        # the sanity check sees the untrained weights on part of the split: never a candidate
        candidate = stage == "val" and self.select_best and not (trainer is not None and trainer.sanity_checking)
        if candidate and (self._best is None or sums["top1"] / n > self._best[0]):
            # every rank holds the same reduced sums and weights, so all keep the same epoch
            self._best = (sums["top1"] / n, {k: v.detach().clone() for k, v in self.model.state_dict().items()})
        self.log(f"{stage}/loss", sums["loss"] / n, prog_bar=stage == "val")
        self.log(f"{stage}/acc", sums["top1"] / n, prog_bar=stage == "val")
        if self.model_num_classes() > 5:
            self.log(f"{stage}/acc_top5", sums["top5"] / n)

    def model_num_classes(self) -> int:
        last = [m for m in self.model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
        return last.out_features if isinstance(last, nn.Linear) else last.out_channels

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def configure_optimizers(self):
        params = list(self.trainable()) if self.trainable else [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.lr_schedule == "constant":
            return optimizer
        offset, total = self.replay or (0, int(self.trainer.estimated_stepping_batches))
        schedule = self.lr_schedule
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(schedule, offset + step, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
