"""A strategy's plan: the list of steps the pipeline executes, and what they share.

A strategy never runs anything itself: from the built (or trained) model it *plans* a list
of steps, and the pipeline only calls ``step.run(model, runtime)`` on each. The same plan
is first executed as a dry run on a copy of the untrained model (prune steps cut for real,
training and measurement are skipped), so every bad combination fails before the baseline
trains, through the code that prunes rather than a second copy of the rules.

    Prune(label, apply)            cut channels or set masks; ``apply(model, rt) -> record``
    Train(label, retrain, ...)     (re)train: fine-tune, re-initialise (Scratch-E/B), freeze, distil, average
    RecalibrateBN(label, batches)  re-estimate BatchNorm statistics after pruning (weights unchanged)
    Measure(name, full)            test the model and count it; stored as the phase ``name``
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

import pruning
from experiments.checks import ConfigError
from experiments.models.registry import reinitialize_like
from experiments.training.context import BaselineRecipe, MeasureSettings, Phase, RunContext, measure_model, seed_phase
from experiments.training.module import Classifier

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What the steps of one run share. ``dry`` marks the validation pass (no data, no training).
    ``baseline`` is the baseline's training recipe, which training from scratch reuses (None:
    no step trains from scratch); ``measure`` says how the headline phases are timed."""

    example: torch.Tensor
    build_model: Callable[[], nn.Module]
    strategy: Any
    seed: int
    baseline: BaselineRecipe | None = None
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    ctx: RunContext | None = None
    dry: bool = False
    scan: Any = None
    dense_counts: pruning.measure.Counts | None = None
    phases: dict[str, Phase] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, float] = field(
        default_factory=lambda: {"prune_wall_s": 0.0, "retrain_wall_s": 0.0, "retrain_steps": 0, "retrain_epochs": 0.0}
    )
    current: str = "plan"
    _teacher: nn.Module | None = None
    _calibration: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _baseline_state: dict[str, torch.Tensor] | None = None

    def remember_baseline(self, model: nn.Module) -> None:
        """Keep the dense baseline's weights (for a distillation teacher made on demand)."""
        self._baseline_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def teacher(self) -> nn.Module:
        """The dense baseline, frozen, built once when a step first asks for it."""
        if self._teacher is None:
            teacher = self.build_model()
            if self._baseline_state is not None:
                teacher.load_state_dict(self._baseline_state)
            self._teacher = teacher.eval().requires_grad_(False)
        return self._teacher

    def steps_per_epoch(self) -> int:
        return 1 if self.ctx is None else self.ctx.steps_per_epoch()

    def calibration(self, batches: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``batches`` batches of the training split (seeded by the run), for data-driven criteria;
        drawn once per run, so the scan and the prune steps score on the same images."""
        if batches not in self._calibration:
            self._calibration[batches] = self._draw_calibration(batches)
        return self._calibration[batches]

    def _draw_calibration(self, batches: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ctx is None:  # dry run: shapes are all that matter
            n = max(2, len(self.example))
            x = self.example[:1].expand(n, *self.example.shape[1:]).clone()
            return x, torch.zeros(n, dtype=torch.long)
        seed_phase(self.seed, self.ctx.datamodule, "calibration")
        xs, ys = [], []
        for i, (x, y) in enumerate(self.ctx.datamodule.train_dataloader()):
            if i >= batches:
                break
            xs.append(x)
            ys.append(y)
        return torch.cat(xs), torch.cat(ys)


class Step:
    """One thing a plan does to the model (``label`` names it in logs, curves and errors)."""

    label: str

    def run(self, model: nn.Module, rt: Runtime) -> None:
        raise NotImplementedError


@dataclass
class Prune(Step):
    """Cut channels or set masks: ``apply(model, rt)`` returns the JSON record of the step."""

    label: str
    apply: Callable[[nn.Module, Runtime], dict[str, Any]]

    def run(self, model: nn.Module, rt: Runtime) -> None:
        start = time.perf_counter()
        record = self.apply(model, rt)
        rt.totals["prune_wall_s"] += time.perf_counter() - start
        rt.records.append({"step": self.label, **record})


@dataclass
class Train(Step):
    """(Re)train the model in place.

    ``steps`` optimizer steps (a share of the schedule's budget) or ``epochs`` full epochs;
    ``epochs`` may be a callable ``(model, rt) -> int`` (Scratch-B scales it by the MACs
    ratio, known only once the model is cut). ``init="reinit"`` re-initialises the pruned
    architecture with the model's own initialisation first (training from scratch).
    ``retrain.lr_schedule=rewind`` trains with the baseline's optimizer and its schedule replayed
    from :func:`rewind_start` (learning-rate rewinding). ``freeze`` names modules or parameters kept fixed (their BatchNorm statistics too, unless
    ``freeze_bn_stats`` is false: then frozen BatchNorm layers keep re-estimating their running
    statistics while their weights stay fixed).
    """

    label: str
    retrain: Any
    epochs: int | Callable[[nn.Module, Runtime], int] | None = None
    steps: int | None = None
    init: str = "keep"
    freeze: Sequence[str] = ()
    hooks: Callable[[], tuple[Callable | None, list[Callable]]] | None = None
    average: bool = False
    optimizer: Any = None  # default: the Retrain's
    lr_schedule: str | None = None
    freeze_bn_stats: bool = True

    def run(self, model: nn.Module, rt: Runtime) -> None:
        epochs = self.epochs(model, rt) if callable(self.epochs) else self.epochs
        if epochs is None and self.steps is None:
            epochs = self.retrain.epochs
        if self.init == "reinit":
            reinitialize(model, rt)
        optimizer, schedule, replay = self.optimizer or self.retrain.optimizer, self.lr_schedule, None
        if schedule is None and getattr(self.retrain, "lr_schedule", None) == "rewind":
            start, per_epoch = rewind_start(self.retrain, rt.baseline), rt.steps_per_epoch()
            optimizer, schedule = rt.baseline.optimizer, rt.baseline.lr_schedule
            replay = (start * per_epoch, rt.baseline.schedule_length * per_epoch)
            rt.totals["rewind_epoch"] = start  # the row's retrain/rewind_epoch: where the replay started
        if rt.dry:
            check_freeze(model, self.freeze)
            return
        if (self.steps or 0) <= 0 and (epochs or 0) <= 0:
            return
        penalty, after_step = self.hooks() if self.hooks is not None else (None, [])
        teacher = rt.teacher() if self.retrain.distill > 0 else None
        frozen = freeze(model, self.freeze)
        module = Classifier(
            model,
            optimizer,
            schedule or self.retrain.lr_schedule,
            teacher=teacher,
            distill=self.retrain.distill,
            temperature=self.retrain.temperature,
            penalty=penalty,
            after_step=after_step,
            average=self.average,
            frozen_modules=frozen if self.freeze_bn_stats else (),
            label_smoothing=getattr(self.retrain, "label_smoothing", 0.0),
            select_best=getattr(self.retrain, "select", "last") == "best_val",
            replay=replay,
        )
        try:
            wall = rt.ctx.fit(module, self.label, epochs or 0, steps=self.steps)
        finally:
            for p in model.parameters():
                p.requires_grad_(True)
        if self.average:
            refresh_batchnorm(model, rt.ctx.datamodule)
        per_epoch = rt.steps_per_epoch()
        steps = self.steps if self.steps is not None else epochs * per_epoch
        rt.totals["retrain_wall_s"] += wall
        rt.totals["retrain_steps"] += steps
        rt.totals["retrain_epochs"] += steps / per_epoch


def rewind_start(retrain: Any, baseline: BaselineRecipe | None, key: str = "strategy.retrain") -> int:
    """The baseline epoch learning-rate rewinding replays from, checked against the baseline's
    schedule: the replay of ``retrain.epochs`` epochs must end within it. While an ``auto``
    baseline has not trained (the dry run), ``rewind_epoch=None`` must also fit the shortest
    run its rule allows, so a replay that would start before epoch 0 is refused before training."""
    if baseline is None:
        raise ConfigError(
            f"{key}.lr_schedule=rewind replays the baseline's schedule, but this run has no baseline recipe"
        )
    length = baseline.schedule_length
    start = retrain.rewind_epoch if retrain.rewind_epoch is not None else baseline.epochs - retrain.epochs
    follows = getattr(retrain, "follows_baseline", False)  # epochs=baseline: the replay is the whole baseline run
    if baseline.pending and retrain.rewind_epoch is None and not follows and retrain.epochs > baseline.fewest_epochs:
        raise ConfigError(
            f"{key}.rewind_epoch=None replays the baseline's last {retrain.epochs} epoch(s), but baseline.epochs=auto "
            f"may stop after {baseline.fewest_epochs} (baseline.plateau_window={baseline.plateau.window} + 1): "
            f"give {key}.rewind_epoch in [0, {max(0, length - retrain.epochs)}] or at most "
            f"{baseline.fewest_epochs} {key}.epochs"
        )
    if start < 0 or start + retrain.epochs > length:
        raise ConfigError(
            f"{key}.rewind_epoch={retrain.rewind_epoch}: replaying {retrain.epochs} epoch(s) from epoch {start} runs "
            f"outside the baseline's {length}-epoch lr schedule; use a rewind_epoch in "
            f"[0, {max(0, length - retrain.epochs)}] (null: {max(0, baseline.epochs - retrain.epochs)}, "
            "the baseline's last epochs)"
        )
    return start


@dataclass
class RecalibrateBN(Step):
    """Re-estimate every BatchNorm layer's running statistics on ``batches`` training batches
    (the run's seeded calibration draw) after pruning; weights are untouched. Pruning changes
    the statistics a BatchNorm layer sees, so without this the accuracy measured before
    retraining mostly reflects stale statistics. Its time counts as pruning time."""

    label: str
    batches: int

    def run(self, model: nn.Module, rt: Runtime) -> None:
        if rt.dry:
            return
        start = time.perf_counter()
        x, _ = rt.calibration(self.batches)
        recalibrate_batchnorm(model, x, max(1, len(x) // self.batches))
        rt.totals["prune_wall_s"] += time.perf_counter() - start


@dataclass
class Measure(Step):
    """Test the model and count it; ``full`` adds bytes and latency (the headline phases)."""

    label: str
    full: bool = True

    def run(self, model: nn.Module, rt: Runtime) -> None:
        if rt.dry:
            return
        metrics = rt.ctx.test(Classifier(model, None), self.label.replace("/", "-"))
        if self.full:
            metrics.update(measure_model(model, rt.example, rt.measure, rt.strategy))
        else:
            counts = pruning.count(model, rt.example)
            metrics.update(params=counts.params, macs=counts.macs, nonzero_params=counts.nonzero_params)
        rt.phases[self.label] = Phase(self.label, metrics)


def execute(steps: Sequence[Step], model: nn.Module, rt: Runtime) -> None:
    """Run the plan; ``rt.current`` names the step in progress (failed rows report it)."""
    for i, step in enumerate(steps, start=1):
        rt.current = step.label
        if not rt.dry and isinstance(step, (Prune, Train)):
            log.info("step %d of %d: %s", i, len(steps), step.label)
        step.run(model, rt)
    rt.current = "finish"


def dry_run(make_strategy: Callable[[], Any], model: nn.Module, rt: Runtime) -> list[Step]:
    """Plan and execute on a copy of ``model`` without data or training: every config error
    surfaces here, before the baseline trains. Returns the plan."""
    strategy = make_strategy()
    strategy.validate(model)
    trial = copy.deepcopy(model)
    dry = Runtime(
        example=rt.example,
        build_model=rt.build_model,
        strategy=strategy,
        seed=rt.seed,
        baseline=rt.baseline,
        measure=rt.measure,
        dry=True,
        dense_counts=rt.dense_counts,
    )
    steps = strategy.plan(trial, dry)
    try:
        execute(steps, trial, dry)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError) as err:
        raise ConfigError(f"strategy {getattr(strategy, 'name', '?')!r} cannot run on this model: {err}") from err
    return steps


# -- helpers of the Train step ------------------------------------------------------------
def reinitialize(model: nn.Module, rt: Runtime) -> None:
    """Re-initialise the (pruned) model as its builder initialises a new one: the builder's
    own init on a fresh dense model, cut to this structure, then each layer re-initialised
    for its new fan-in/fan-out the way the builder's init does."""
    torch.manual_seed(rt.seed + 7919)
    fresh = rt.build_model()
    pruning.apply_record(fresh, rt.strategy.structure_record())
    reinitialize_like(fresh)
    model.load_state_dict(fresh.state_dict(), strict=True)


def _resolve(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    out = []
    for name in names:
        if name in modules:
            out.append(modules[name])
        elif name in params:
            out.append(params[name])
        else:
            raise ConfigError(f"strategy.freeze names {name!r}, which is not a module or parameter of the model")
    return out


def check_freeze(model: nn.Module, names: Sequence[str]) -> None:
    """Reject unknown names, and a freeze that leaves nothing to train."""
    if not names:
        return
    frozen = set()
    for item in _resolve(model, names):
        frozen |= {id(p) for p in (item.parameters() if isinstance(item, nn.Module) else [item])}
    trainable = [p for p in model.parameters() if p.requires_grad and id(p) not in frozen]
    if not trainable:
        raise ConfigError(
            f"strategy.freeze={list(names)} freezes every trainable parameter: nothing would be retrained"
        )


def freeze(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """Stop gradients of the named modules/parameters; returns the frozen modules (kept in
    eval mode while training so their BatchNorm statistics stay fixed too)."""
    modules = []
    for item in _resolve(model, names):
        if isinstance(item, nn.Module):
            item.requires_grad_(False)
            modules.append(item)
        else:
            item.requires_grad_(False)
    return modules


def refresh_batchnorm(model: nn.Module, datamodule: Any) -> None:
    """Recompute BatchNorm running statistics after weight averaging (none to do without BN)."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        torch.optim.swa_utils.update_bn(datamodule.train_dataloader(), model)
        model.eval()


def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Reset BatchNorm running statistics and re-estimate them as the plain average over the
    batches of ``x`` (momentum ``None``); other layers stay in eval mode, weights unchanged."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for chunk in x.split(batch_size):
                model(chunk.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()


def split_budget(total: int, parts: int) -> list[int]:
    """``total`` optimizer steps split into ``parts`` near-equal shares (the last ones larger)."""
    if parts < 1:
        return []
    base, extra = divmod(int(total), parts)
    return [base + (1 if i >= parts - extra else 0) for i in range(parts)]


def scratch_optimizer(baseline: BaselineRecipe) -> Any:
    """The baseline's optimizer, for training the pruned architecture from scratch."""
    return baseline.optimizer
