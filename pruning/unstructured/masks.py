"""Connection (weight) pruning with masks (Han et al. 2015).

Masks are boolean tensors keyed by the *parameter names* of the model (``"fc1.weight"``;
no ``weight_orig``/``weight_mask`` re-parametrisation) and live in one :class:`Masks`
object. A training loop keeps pruned weights exactly zero by calling
:meth:`Masks.mask_grads_` before and :meth:`Masks.apply_` after every optimizer step (the
Lightning module runs ``apply_`` as an after-step hook; :meth:`Masks.hook_optimizer` does
both for a plain PyTorch loop), and saves
:meth:`Masks.state_dict` with the checkpoint.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import NamedTuple

import torch
from torch import nn

Include = None | str | Iterable[str] | Callable[[str, nn.Parameter], bool]
PerLayer = float | Mapping[str, float]

_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class MaskCount(NamedTuple):
    """Weights kept and weights in total for one layer (or the whole mask set)."""

    kept: int
    total: int


class Sparsity(NamedTuple):
    """Fraction of pruned weights per masked parameter and over all of them."""

    layers: dict[str, float]
    total: float


def select_parameters(model: nn.Module, include: Include = None, allow_empty: bool = False) -> dict[str, nn.Parameter]:
    """The parameters ``include`` names, in model order.

    ``None``: the weights of every Conv1d/2d/3d and Linear (no biases, no BatchNorm).
    Strings may be parameter names (``"fc1.weight"``), module names (``"fc1"`` means its
    weight) or glob patterns (``"features.*.weight"``); a callable gets (name, parameter).
    """
    params = dict(model.named_parameters())
    if include is None:
        chosen = set()
        for mod_name, module in model.named_modules():
            if isinstance(module, _PRUNABLE) and isinstance(module.weight, nn.Parameter):
                chosen.add(f"{mod_name}.weight" if mod_name else "weight")
    elif callable(include):
        chosen = {name for name, p in params.items() if include(name, p)}
    else:
        chosen = set()
        for item in [include] if isinstance(include, str) else list(include):
            chosen |= set(_resolve_name(item, params))
    if not chosen and not allow_empty:
        raise ValueError(f"include={include!r} selects no parameter of {type(model).__name__}")
    return {name: p for name, p in params.items() if name in chosen}


def _resolve_name(item: str, params: Mapping[str, nn.Parameter]) -> list[str]:
    if item in params:
        return [item]
    if f"{item}.weight" in params:
        return [f"{item}.weight"]
    matches = fnmatch.filter(params, item) if any(c in item for c in "*?[") else []
    if not matches:
        sample = ", ".join(list(params)[:8])
        raise ValueError(
            f"'{item}' matches no parameter of the model; use parameter names, module names "
            f"or glob patterns, e.g. {sample}"
        )
    return matches


class Masks:
    """Boolean keep-masks (True = kept) keyed by parameter name."""

    def __init__(self, masks: Mapping[str, torch.Tensor]) -> None:
        for name, mask in masks.items():
            if not torch.is_tensor(mask) or mask.dtype != torch.bool:
                raise TypeError(f"mask '{name}' must be a bool tensor, got {type(mask).__name__}")
        self._masks: dict[str, torch.Tensor] = dict(masks)

    # --- mapping-like access ---
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __contains__(self, name: object) -> bool:
        return name in self._masks

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def items(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self._masks.items()

    def __repr__(self) -> str:
        s = self.sparsity()
        return f"Masks({len(self)} parameters, sparsity {s.total:.2%})"

    # --- enforcement ---
    def validate(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Check every mask names a parameter of ``model`` with the same shape."""
        params = dict(model.named_parameters())
        for name, mask in self._masks.items():
            if name not in params:
                raise KeyError(
                    f"mask for unknown parameter '{name}': {type(model).__name__} has no such "
                    f"parameter (masks are keyed by names like {next(iter(params), 'fc.weight')!r})"
                )
            if params[name].shape != mask.shape:
                raise ValueError(
                    f"mask '{name}' has shape {tuple(mask.shape)} but the parameter has "
                    f"{tuple(params[name].shape)}; was the model pruned structurally after masking?"
                )
        return {name: params[name] for name in self._masks}

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> None:
        """Zero the pruned weights of ``model`` in place (to +0.0)."""
        for name, p in self.validate(model).items():
            p.masked_fill_(~self._masks[name].to(p.device), 0.0)

    @torch.no_grad()
    def mask_grads_(self, model: nn.Module) -> None:
        """Zero the gradients of pruned weights (call after backward, before the step)."""
        for name, p in self.validate(model).items():
            if p.grad is not None:
                p.grad.masked_fill_(~self._masks[name].to(p.grad.device), 0.0)

    def hook_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> HookHandles:
        """Mask gradients before and weights after every ``optimizer.step()``."""
        pre = optimizer.register_step_pre_hook(lambda *_: self.mask_grads_(model))
        post = optimizer.register_step_post_hook(lambda *_: self.apply_(model))
        return HookHandles([pre, post])

    def penalty(self, model: nn.Module, kind: str = "l1") -> torch.Tensor:
        """L1 (sum |w|) or L2 (sum w^2) of the kept weights, for regularised retraining."""
        if kind not in ("l1", "l2"):
            raise ValueError(f"kind={kind!r}: choose 'l1' or 'l2'")
        terms = []
        for name, p in self.validate(model).items():
            kept = p * self._masks[name].to(p.device)
            terms.append(kept.abs().sum() if kind == "l1" else kept.pow(2).sum())
        return torch.stack(terms).sum()

    # --- statistics ---
    def counts(self) -> dict[str, MaskCount]:
        """Kept and total weights per masked parameter."""
        return {n: MaskCount(int(m.sum()), m.numel()) for n, m in self._masks.items()}

    def sparsity(self) -> Sparsity:
        """Fraction pruned per layer and over all masked weights."""
        counts = self.counts()
        kept = sum(c.kept for c in counts.values())
        total = sum(c.total for c in counts.values())
        layers = {n: 1.0 - c.kept / c.total if c.total else 0.0 for n, c in counts.items()}
        return Sparsity(layers, 1.0 - kept / total if total else 0.0)

    # --- checkpoints ---
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (bool), loadable with ``torch.load(weights_only=True)``."""
        return {name: mask.detach().clone() for name, mask in self._masks.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace all masks by those in ``state`` (as written by :meth:`state_dict`)."""
        self.__init__({name: state[name] for name in state})

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> Masks:
        return cls(dict(state))


class HookHandles:
    """Removable group of hook handles."""

    def __init__(self, handles: list) -> None:
        self._handles = handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def prune_weights(
    model: nn.Module,
    *,
    sparsity: PerLayer | None = None,
    quality: PerLayer | None = None,
    scope: str = "layer",
    include: Include = None,
    apply: bool = True,
) -> Masks:
    """Prune small-magnitude weights and return their masks (applied unless ``apply=False``).

    ``quality``: Han's rule, prune |w| <= quality x std of the layer's non-zero weights.
    ``sparsity``: prune exactly round(sparsity x n) smallest weights per layer
    (``scope="layer"``) or over all included weights (``scope="global"``). Both accept a
    float or a dict keyed by parameter/module name. Existing zeros count as smallest, so
    repeated calls with growing sparsity implement iterative pruning.
    """
    if (sparsity is None) == (quality is None):
        raise ValueError("give exactly one of sparsity= or quality=")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope={scope!r}: choose 'layer' or 'global'")
    amount = sparsity if sparsity is not None else quality
    if isinstance(amount, Mapping) and include is None:
        include = list(amount)
    params = select_parameters(model, include)
    per_layer = _per_layer(model, amount, params, "sparsity" if sparsity is not None else "quality")
    if scope == "global":
        if quality is not None or isinstance(sparsity, Mapping):
            raise ValueError("scope='global' needs a single float sparsity= (no quality, no dict)")
        masks = _global_masks(params, float(sparsity))
    elif sparsity is not None:
        masks = {n: _smallest_pruned(p.detach().abs(), per_layer[n]) for n, p in params.items()}
    else:
        masks = {n: _quality_mask(p.detach(), per_layer[n]) for n, p in params.items()}
    result = Masks(masks)
    if apply:
        result.apply_(model)
    return result


def _per_layer(model: nn.Module, amount: PerLayer, params: Mapping, what: str) -> dict[str, float]:
    if isinstance(amount, Mapping):
        values = {}
        for key, value in amount.items():
            for name in _resolve_name(key, dict(model.named_parameters())):
                values[name] = float(value)
        missing = [n for n in params if n not in values]
        if missing:
            raise ValueError(f"no {what} given for included layer(s) {missing}")
    else:
        values = {name: float(amount) for name in params}
    for name, value in values.items():
        if what == "sparsity" and not 0.0 <= value < 1.0:
            raise ValueError(f"sparsity={value} for layer '{name}': sparsities must be in [0, 1)")
        if what == "quality" and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"quality={value} for layer '{name}': quality must be a finite number >= 0")
    return {name: values[name] for name in params}


def _smallest_pruned(magnitude: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask pruning exactly round(sparsity * n) entries, smallest first, ties by index."""
    flat = magnitude.reshape(-1)
    k = int(round(sparsity * flat.numel()))
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k > 0:
        threshold = flat.float().kthvalue(k).values
        below = flat < threshold
        ties = torch.nonzero(flat == threshold).reshape(-1)[: k - int(below.sum())]
        keep[below] = False
        keep[ties] = False
    return keep.reshape(magnitude.shape)


def _global_masks(params: Mapping[str, nn.Parameter], sparsity: float) -> dict[str, torch.Tensor]:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity}: sparsities must be in [0, 1)")
    flat = torch.cat([p.detach().abs().reshape(-1).float().cpu() for p in params.values()])
    keep = _smallest_pruned(flat, sparsity)
    masks, start = {}, 0
    for name, p in params.items():
        masks[name] = keep[start : start + p.numel()].reshape(p.shape).to(p.device)
        start += p.numel()
    return masks


def _quality_mask(weight: torch.Tensor, quality: float) -> torch.Tensor:
    nonzero = weight[weight != 0]
    std = float(nonzero.float().std()) if nonzero.numel() > 1 else 0.0
    return (weight.abs() > quality * std) & (weight != 0)


def adjusted_dropout(rate: float, masks: Masks, name: str) -> float:
    """Han's dropout for a pruned layer: D_r = D_o * sqrt(C_ir / C_io).

    C_io / C_ir are the layer's connections before / after pruning, read from the mask
    of parameter (or module) ``name``.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate={rate}: must be in [0, 1)")
    key = name if name in masks else f"{name}.weight"
    if key not in masks:
        raise KeyError(f"no mask for '{name}'; masked parameters: {list(masks)}")
    kept, total = masks.counts()[key]
    return rate * math.sqrt(kept / total)


@torch.no_grad()
def regrow(masks: Masks, model: nn.Module, fraction: float) -> Masks:
    """Move ``fraction`` of each layer's kept weights at constant sparsity (RigL, Evci et al. 2020).

    Per masked parameter, the ``k = int(fraction x kept)`` kept weights of smallest magnitude
    are dropped and the ``k`` pruned weights with the largest gradient magnitude (the
    gradient of the last backward pass, computed densely) are grown; grown weights start
    at their current value (zero under enforced masks). Parameters without a gradient keep
    their mask. Returns new masks; ``masks`` is not modified.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction={fraction}: must be in [0, 1]")
    params = masks.validate(model)
    new: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        p = params[name]
        flat = mask.to(p.device).flatten().clone()
        kept = int(flat.sum())
        k = min(int(fraction * kept), flat.numel() - kept)
        if k == 0 or p.grad is None:
            new[name] = mask
            continue
        inf = torch.tensor(float("inf"), device=p.device)
        drop = torch.topk(torch.where(flat, p.detach().abs().flatten(), inf), k, largest=False).indices
        grow = torch.topk(torch.where(flat, -inf, p.grad.abs().flatten()), k).indices
        flat[drop] = False
        flat[grow] = True
        new[name] = flat.view_as(mask).to(mask.device)
    return Masks(new)
