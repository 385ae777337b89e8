"""Connection (weight) pruning strategies: Han et al. 2015 and Deep Compression.

A composition of pure parts from ``pruning/``: ``prune_weights`` (quality x std or target
sparsity, per layer or global), ``sparsity_schedule`` (iterative rounds), ``Masks``
(kept exactly zero after every optimizer step), optional L1/L2 penalty, Han's dropout
adjustment, freezing conv or FC layers, and optionally weight sharing with centroid
fine-tuning followed by compressed storage (CSR relative indices, codebooks, Huffman).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

import pruning
from experiments.checks import ConfigError, check_choice, check_number, check_ratio
from experiments.storage.files import atomic_write_bytes
from experiments.strategies.parts import Retrain, Strategy, follow_baseline, freeze_spec
from experiments.strategies.plan import Measure, Prune, Runtime, Step, Train
from experiments.training.context import Phase, measure_model
from experiments.training.distributed import is_global_zero
from experiments.training.module import Classifier

FREEZE_CHOICES = (None, "conv", "fc")
SCHEDULE_CHOICES = ("linear", "geometric", "cubic", "gradual")
REGULARIZATION_CHOICES = (None, "l1", "l2")
VALUE_FORMATS = ("fp32", "fp16", "codebook")


@dataclass
class Storage:
    """How the final model is stored (see docs/compressed_format.md)."""

    index_bits: int | str = 5  # or "auto": per layer the width that stores it smallest
    values: str = "fp32"  # fp32 | fp16 | codebook
    conv_bits: int = 8
    fc_bits: int = 5
    huffman: bool = False
    codebook_dtype: str = "fp32"  # fp32 | fp16
    rest: str = "exact"  # exact | fp16: biases, BatchNorm and other tensors that are not pruned

    def validate(self, key: str = "strategy.storage") -> None:
        check_choice(f"{key}.values", self.values, VALUE_FORMATS)
        check_choice(f"{key}.codebook_dtype", self.codebook_dtype, ("fp32", "fp16"))
        check_choice(f"{key}.rest", self.rest, ("exact", "fp16"))
        for name in ("index_bits", "conv_bits", "fc_bits"):
            value = getattr(self, name)
            if name == "index_bits" and value == "auto":
                continue
            check_number(
                f"{key}.{name}", value, 1, 16, integer=True, suffix=" or 'auto'" if name == "index_bits" else ""
            )

    def bits_for(self, model: nn.Module, names: Iterable[str]) -> dict[str, int]:
        modules = dict(model.named_modules())
        return {
            n: self.conv_bits if isinstance(modules[n.rsplit(".", 1)[0]], nn.Conv2d) else self.fc_bits for n in names
        }


@dataclass
class WeightPruning(Strategy):
    """Magnitude pruning of individual weights with masks, one-shot or iterative.

    Exactly one of ``sparsity`` (fraction of zeros; float or {layer: float}) and
    ``quality`` (Han: threshold = quality x std of the layer's weights) is set. With
    ``rounds`` > 1 the target grows along ``schedule`` with retraining in between.
    ``average`` (a Retrain) trains that many more epochs after the last round and keeps the
    mean of the weights at the end of each epoch (SWA; pruned weights stay zero).
    ``quantize_retrain`` > 0 epochs shares weights by k-means (``storage`` bits) and
    fine-tunes the centroids (Deep Compression) after that.

    ``schedule=gradual`` (Zhu & Gupta 2017) replaces the rounds by one run of
    ``rounds x retrain.epochs`` epochs that prunes every ``gradual_every`` optimizer steps
    along a cubic schedule, reaching the final sparsity after ``gradual_until`` of the run.
    ``regrow`` > 0 moves that (cosine-decaying) fraction of each layer's kept weights every
    ``regrow_every`` steps of the last round's retraining, in its first 75% (RigL, Evci et
    al. 2020): the smallest kept weights are dropped, the pruned ones with the largest
    gradients grown, at constant sparsity.
    """

    name: str = "weight"
    sparsity: float | Mapping[str, float] | None = None
    quality: float | Mapping[str, float] | None = None
    scope: str = "layer"
    include: list[str] | None = None
    rounds: int = 1
    schedule: str = "geometric"
    regularization: str | None = None
    regularization_strength: float = 0.0
    adjust_dropout: bool = False
    freeze: Any = None  # kept fixed while retraining: "conv" (retrain FC only), "fc", or a list of module names
    retrain: Retrain = field(default_factory=Retrain)
    storage: Storage = field(default_factory=Storage)
    quantize_retrain: Retrain | None = None
    average: Retrain | None = None
    gradual_every: int = 100
    gradual_until: float = 0.5
    regrow: float = 0.0
    regrow_every: int = 100
    masks: pruning.Masks | None = field(default=None, init=False, repr=False)

    # -- validation ------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> None:
        if (self.sparsity is None) == (self.quality is None):
            raise ConfigError("strategy.sparsity / strategy.quality: set exactly one of them (the other null)")
        check_choice("strategy.scope", self.scope, ("layer", "global"))
        check_choice("strategy.schedule", self.schedule, SCHEDULE_CHOICES)
        for key in ("gradual_every", "regrow_every"):
            check_number(f"strategy.{key}", getattr(self, key), 1, integer=True, suffix=" (optimizer steps)")
        check_number("strategy.gradual_until", self.gradual_until, 0, 1, low_open=True)
        check_number("strategy.regrow", self.regrow, 0, 1, suffix=" (0: off)")
        if self.schedule == "gradual":
            if self.sparsity is None:
                raise ConfigError(
                    "strategy.schedule=gradual needs strategy.sparsity (quality thresholds are per round)"
                )
            if self.regrow:
                raise ConfigError(
                    "strategy.regrow works with the round schedules (linear, geometric, cubic), not gradual"
                )
        check_choice("strategy.regularization", self.regularization, REGULARIZATION_CHOICES)
        if isinstance(self.freeze, Mapping):
            raise ConfigError(
                "strategy.freeze.most_sensitive needs a sensitivity scan, which weight pruning does not "
                "run: freeze by kind (conv, fc) or a list of module names"
            )
        if isinstance(self.freeze, str) or self.freeze is None:
            check_choice("strategy.freeze", self.freeze, FREEZE_CHOICES)
        else:
            freeze_spec(self.freeze)
        if self.retrain.mode not in ("finetune", "none"):
            raise ConfigError(
                f"strategy.retrain.mode={self.retrain.mode}: training from scratch needs a pruned "
                "architecture (filter pruning); weight pruning keeps the dense shapes. Use finetune or none"
            )
        check_number("strategy.rounds", self.rounds, 1, integer=True)
        if self.regularization_strength < 0:
            raise ConfigError(f"strategy.regularization_strength={self.regularization_strength}: must be >= 0")
        params = dict(model.named_parameters())
        modules = dict(model.named_modules())
        for key, amount in (("sparsity", self.sparsity), ("quality", self.quality)):
            if isinstance(amount, Mapping):
                for layer, value in amount.items():
                    if layer not in params and layer not in modules:
                        raise ConfigError(
                            f"strategy.{key} names {layer!r}, which is not a parameter or module of the model"
                        )
                    if key == "sparsity":
                        check_ratio(f"strategy.sparsity.{layer}", value)
                    elif value < 0:
                        raise ConfigError(f"strategy.quality.{layer}={value}: must be >= 0")
            elif amount is not None:
                if key == "sparsity":
                    check_ratio("strategy.sparsity", amount)
                elif amount < 0:
                    raise ConfigError(f"strategy.quality={amount}: must be >= 0")
        if self.scope == "global" and (self.quality is not None or isinstance(self.sparsity, Mapping)):
            raise ConfigError("strategy.scope=global needs a single float strategy.sparsity (no quality, no dict)")
        self.retrain.validate()
        self.storage.validate()
        if self.quantize_retrain is not None:
            self.quantize_retrain.validate("strategy.quantize_retrain")
        if self.average is not None:
            self.average.validate("strategy.average")

    # -- pruning ----------------------------------------------------------------------------
    def _amount_at(self, amount: Any, round_index: int) -> Any:
        """This round's target: the schedule applied to each layer's final amount."""

        def at(final: float) -> float:
            if self.quality is not None:  # quality grows linearly to its final value
                return final * (round_index + 1) / self.rounds
            return pruning.schedules.sparsity_schedule(round_index + 1, self.rounds, float(final), kind=self.schedule)

        return {k: at(v) for k, v in amount.items()} if isinstance(amount, Mapping) else at(amount)

    def tighten(self, model: nn.Module, **amount: Any) -> pruning.Masks:
        """Prune to ``sparsity=`` or ``quality=``; weights pruned before never come back."""
        new = pruning.prune_weights(model, scope=self.scope, include=self.include, **amount)
        if self.masks is not None:
            new = pruning.Masks({n: new[n] & self.masks[n] for n in new})
            new.apply_(model)
        self.masks = new
        return new

    def prune(self, model: nn.Module, example_inputs: torch.Tensor, round_index: int) -> dict[str, Any]:
        original_dropout = {n: m.p for n, m in model.named_modules() if isinstance(m, nn.Dropout)}
        if self.sparsity is not None:
            new = self.tighten(model, sparsity=self._amount_at(self.sparsity, round_index))
        else:
            new = self.tighten(model, quality=self._amount_at(self.quality, round_index))
        if self.adjust_dropout and round_index == 0:
            self._adjust_dropout(model, original_dropout)
        return self._record(new, round_index)

    def prune_final(self, model: nn.Module) -> dict[str, Any]:
        """The gradual schedule's last step: the final sparsity exactly (normally reached already)."""
        return self._record(self.tighten(model, sparsity=self.sparsity), 0)

    @staticmethod
    def _record(masks: pruning.Masks, round_index: int) -> dict[str, Any]:
        """The JSON record of a pruning step: kept/total per masked parameter and the sparsity."""
        return {
            "round": round_index,
            "kind": "weight",
            "layers": {n: {"kept": c[0], "total": c[1]} for n, c in masks.counts().items()},
            "sparsity": float(masks.sparsity().total),
        }

    def _adjust_dropout(self, model: nn.Module, original: dict[str, float]) -> None:
        """Han: D_r = D_o * sqrt(C_ir / C_io) for each Dropout feeding a masked Linear."""
        assert self.masks is not None
        pending: str | None = None
        for name, module in model.named_modules():
            if isinstance(module, nn.Dropout):
                pending = name
            elif isinstance(module, nn.Linear) and pending is not None:
                if f"{name}.weight" in self.masks:
                    dropout = dict(model.named_modules())[pending]
                    dropout.p = pruning.unstructured.adjusted_dropout(original[pending], self.masks, f"{name}.weight")
                pending = None

    # -- retraining ---------------------------------------------------------------------------
    def retrain_hooks(self, mask_update: Callable[[nn.Module], None] | None = None) -> tuple[Callable | None, list]:
        """The penalty and after-step hooks: ``mask_update`` (gradual pruning, regrowth) may
        replace ``self.masks`` during training, so the hooks read the current masks."""
        penalty = None
        if self.regularization is not None and self.regularization_strength > 0:
            kind, strength = self.regularization, self.regularization_strength

            def penalty(model: nn.Module) -> torch.Tensor:
                return strength * self.masks.penalty(model, kind) if self.masks is not None else torch.zeros(())

        def enforce(model: nn.Module) -> None:
            if self.masks is not None:
                self.masks.apply_(model)

        return penalty, ([mask_update] if mask_update is not None else []) + [enforce]

    def gradual_hook(self, rt: Runtime, epochs: int) -> Callable[[nn.Module], None]:
        """Prune every ``gradual_every`` steps along the cubic schedule (Zhu & Gupta 2017)."""
        ramp = max(1, int(epochs * rt.steps_per_epoch() * self.gradual_until))
        every = min(self.gradual_every, ramp)
        events = max(1, ramp // every)
        final = self.sparsity
        step = 0

        def at(event: int) -> Any:
            def one(value: float) -> float:
                return pruning.schedules.sparsity_schedule(event, events, float(value), kind="cubic")

            return {k: one(v) for k, v in final.items()} if isinstance(final, Mapping) else one(final)

        def hook(model: nn.Module) -> None:
            nonlocal step
            step += 1
            if step % every == 0 and step // every <= events:
                self.tighten(model, sparsity=at(step // every))

        return hook

    def regrow_hook(self, rt: Runtime, epochs: int) -> Callable[[nn.Module], None]:
        """RigL-style mask updates at constant sparsity in the first 75% of a retraining."""
        end = 0.75 * epochs * rt.steps_per_epoch()
        step = 0

        def hook(model: nn.Module) -> None:
            nonlocal step
            step += 1
            if step % self.regrow_every == 0 and step <= end and self.masks is not None:
                fraction = self.regrow / 2 * (1 + math.cos(math.pi * step / end))
                self.masks = pruning.unstructured.regrow(self.masks, model, fraction)

        return hook

    def frozen_names(self, model: nn.Module) -> list[str]:
        """Modules kept fixed while retraining: every conv or linear layer of a kind, or a list."""
        if self.freeze is None:
            return []
        if isinstance(self.freeze, str):
            kind = {"conv": nn.Conv2d, "fc": nn.Linear}[self.freeze]
            return [n for n, m in model.named_modules() if isinstance(m, kind)]
        return list(self.freeze)

    # -- the plan -------------------------------------------------------------------------
    def plan(self, model: nn.Module, rt: Runtime) -> list[Step]:
        """rounds x (prune, measure, retrain), optional averaging, optional quantization."""
        self.masks = None
        follow_baseline(self, rt.baseline)  # retrain.epochs=baseline: the baseline's epochs in this runtime
        frozen = self.frozen_names(model)
        steps: list[Step] = []
        if self.schedule == "gradual":  # one run that prunes as it trains: no "pruned" point before retraining
            epochs = self.retrain.epochs * self.rounds
            if self.retrain.mode == "finetune":
                steps.append(
                    Train(
                        "retrain",
                        self.retrain,
                        epochs=epochs,
                        freeze=frozen,
                        hooks=lambda: self.retrain_hooks(self.gradual_hook(rt, epochs)),
                    )
                )
            steps.append(Prune("prune", lambda m, rt: self.prune_final(m)))  # exactly the final masks
        for r in range(self.rounds if self.schedule != "gradual" else 0):
            last = r == self.rounds - 1
            label = f"round{r}" if self.rounds > 1 else ""
            steps.append(Prune(f"{label}/prune" if label else "prune", lambda m, rt, r=r: self.prune(m, rt.example, r)))
            steps.append(Measure("pruned") if last else Measure(f"{label}/pruned", full=False))
            if self.retrain.mode == "finetune":
                regrow = self.regrow > 0 and last
                steps.append(
                    Train(
                        f"{label}/retrain" if label else "retrain",
                        self.retrain,
                        epochs=self.retrain.epochs,
                        freeze=frozen,
                        hooks=(lambda: self.retrain_hooks(self.regrow_hook(rt, self.retrain.epochs)))
                        if regrow
                        else self.retrain_hooks,
                    )
                )
                if not last:
                    steps.append(Measure(f"{label}/retrained", full=False))
        if self.average is not None and self.average.epochs > 0 and self.retrain.mode == "finetune":
            steps.append(
                Train(
                    "average",
                    self.average,
                    epochs=self.average.epochs,
                    freeze=frozen,
                    hooks=self.retrain_hooks,
                    average=True,
                )
            )
        steps.append(Measure("retrained"))
        if self.quantize_retrain is not None:
            steps.append(Quantize("quantized", self))
        return steps

    def parts(self) -> dict[str, Any]:
        amount = self.sparsity if self.sparsity is not None else self.quality
        return {
            "kind": "weight",
            "criterion": "magnitude",
            "schedule": "gradual" if self.schedule == "gradual" else ("iterative" if self.rounds > 1 else "oneshot"),
            "rounds": self.rounds,
            "ratio": str(float(amount)) if isinstance(amount, (int, float)) else "per_layer",
            "ratio_policy": "sparsity" if self.sparsity is not None else "quality",
            "max_drop": None,
            "target_reduction": None,
            "scoring": self.scope,
            "retrain": self.retrain.mode,
            "freeze": "none"
            if not self.freeze
            else (self.freeze if isinstance(self.freeze, str) else "list:" + ",".join(self.freeze)),
            "epochs_budget": self.retrain.epochs * self.rounds + (self.average.epochs if self.average else 0),
            "recipe": self.recipe(),
        }

    def recipe(self) -> str:
        """The retraining recipe in a few words (a column to group a recipe screen by)."""
        r = self.retrain
        opt = r.optimizer
        kwargs = getattr(opt, "keywords", {}) or {}
        name = getattr(getattr(opt, "func", opt), "__name__", type(opt).__name__).lower() if opt is not None else "none"
        words = [name] + [
            f"{k}{kwargs[k]:g}" for k in ("lr", "weight_decay") if isinstance(kwargs.get(k), (int, float))
        ]
        words.append(f"{r.epochs}ep")
        if r.distill:
            words.append(f"distill{r.distill:g}")
        if r.label_smoothing:
            words.append(f"smooth{r.label_smoothing:g}")
        if r.select != "last":
            words.append(r.select)
        if self.regrow:
            words.append(f"regrow{self.regrow:g}/{self.regrow_every}")
        if self.schedule == "gradual":
            words.append(f"gradual/{self.gradual_every}")
        if self.average is not None and self.average.epochs:
            words.append(f"avg{self.average.epochs}")
        return " ".join(words).replace("weight_decay", "wd")

    def tables(self, model: nn.Module) -> dict[str, Any]:
        layers = [
            {"name": n, "kind": "weight", "total": c[1], "kept": c[0], "density": c[0] / c[1] if c[1] else 0.0}
            for n, c in (self.masks.counts().items() if self.masks is not None else [])
        ]
        out: dict[str, Any] = {"layers": layers}
        if getattr(self, "storage_rows", None):
            out["storage"] = self.storage_rows
        return out

    # -- final storage ----------------------------------------------------------------------
    def storage_options(self, model: nn.Module) -> dict[str, Any]:
        names = [n for n in (self.masks or {})]
        options: dict[str, Any] = {
            "index_bits": self.storage.index_bits,
            "values": self.storage.values,
            "huffman": self.storage.huffman,
            "rest": self.storage.rest,
        }
        if self.storage.values == "codebook":
            options["bits"] = self.storage.bits_for(model, names) if names else None
            options["codebook_dtype"] = self.storage.codebook_dtype
        return options


@dataclass
class Quantize(Step):
    """Deep Compression: share weights by k-means, fine-tune the centroids, store compactly.

    The stored file is loaded back into the model, which is then tested, so the reported
    size and accuracy are of the model the file holds; ``storage_max_abs_diff`` is how far
    its outputs moved (0 unless lossy storage options such as fp16 codebooks are used).
    """

    label: str
    strategy: WeightPruning

    def run(self, model: nn.Module, rt: Runtime) -> None:
        if rt.dry:
            return
        strategy, ctx, example = self.strategy, rt.ctx, rt.example
        start = time.perf_counter()
        options = strategy.storage_options(model)
        masks = strategy.masks
        shared = pruning.compress.share_weights(
            model, bits=options.get("bits"), include=list(masks) if masks is not None else None
        )
        tuner = pruning.compress.CentroidTuner(model, shared)
        retrain = strategy.quantize_retrain
        teacher = rt.teacher() if retrain.distill > 0 and retrain.epochs > 0 else None
        module = Classifier(
            model,
            retrain.optimizer,
            retrain.lr_schedule,
            teacher=teacher,
            distill=retrain.distill,
            temperature=retrain.temperature,
            trainable=tuner.parameters,
            after_step=[tuner.sync_] + ([masks.apply_] if masks is not None else []),
            label_smoothing=retrain.label_smoothing,
        )
        ctx.fit(module, "quantize", retrain.epochs)
        for name, codebook in zip(tuner.names, tuner.codebooks):
            shared[name].codebook = codebook.detach().clone()
        path = ctx.output_dir / "model.pkdc"
        report = pruning.save_compressed(
            model, path, shared=shared, **{k: v for k, v in options.items() if k != "bits"}
        )
        if is_global_zero():
            atomic_write_bytes(ctx.output_dir / "storage_report.txt", (str(report) + "\n").encode())
        strategy.storage_rows = [
            {
                "layer": r.name,
                "dense_bytes": r.dense,
                "pruned_bytes": r.pruned,
                "quantized_bytes": r.quantized,
                "huffman_bytes": r.huffman,
            }
            for r in getattr(report, "layers", [])
        ]
        with torch.inference_mode():
            before = model.eval()(example)
        pruning.load_compressed(path, model)  # from here on the model is exactly what the file holds
        with torch.inference_mode():
            diff = float((model.eval()(example) - before).abs().max())
        total = report.total()
        rt.phases[self.label] = Phase(
            self.label,
            {
                **ctx.test(Classifier(model, None), "quantized"),
                **measure_model(model, example, rt.measure),
                "compressed_bytes": report.file_bytes,
                "storage_pruned_bytes": total.pruned,
                "storage_quantized_bytes": total.quantized,
                "storage_huffman_bytes": total.huffman,
                "storage_max_abs_diff": diff,
                "wall_s": time.perf_counter() - start,
            },
        )
