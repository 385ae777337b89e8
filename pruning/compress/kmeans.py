"""Weight sharing (Deep Compression): per-layer 1-D k-means and centroid fine-tuning.

Each layer's non-zero weights are clustered into ``k = 2**bits`` centroids (linear
initialisation over [min, max], Lloyd iterations); a weight is then a ``bits``-bit code
into the layer's codebook. Pruned (zero) weights stay zero and take no code.
:class:`CentroidTuner` retrains the centroids: the gradient of a centroid is the sum of
the gradients of the weights that share it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pruning.compress.bitstream import check_bits
from pruning.unstructured.masks import Include, select_parameters

CONV_BITS = 8
FC_BITS = 5


@dataclass
class SharedWeights:
    """One layer as a codebook, a code per kept weight (row-major) and the keep-mask."""

    codebook: torch.Tensor  # float32 [k]
    codes: torch.Tensor  # int64 [nnz], index into codebook
    mask: torch.Tensor  # bool, the weight's shape

    @property
    def bits(self) -> int:
        """Bits per code: enough for the codebook size (at least 1)."""
        return max(1, int(self.codebook.numel() - 1).bit_length())

    def compact(self) -> "SharedWeights":
        """The same weights with the centroids no weight uses dropped (fewer, shorter codes)."""
        used = torch.unique(self.codes)
        if used.numel() == self.codebook.numel() or self.codes.numel() == 0:
            return self
        return SharedWeights(self.codebook[used], torch.searchsorted(used, self.codes), self.mask)

    def weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense weight these codes stand for (pruned entries are +0.0)."""
        out = torch.zeros(self.mask.shape, dtype=dtype, device=self.codebook.device)
        out[self.mask] = self.codebook[self.codes].to(dtype)
        return out


def kmeans_1d(values: torch.Tensor, bits: int, iters: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster 1-D ``values`` into at most 2**bits centroids; return (codebook, codes).

    If the values already take at most 2**bits distinct values (e.g. after centroid
    fine-tuning), those values are the codebook and the coding is lossless.
    """
    k = 1 << check_bits(bits, "bits")
    v32 = values.detach().reshape(-1).float().cpu()
    if v32.numel() == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    v = v32.numpy()
    ordered = np.sort(v)
    if 1 + np.count_nonzero(ordered[1:] != ordered[:-1]) <= k:
        unique = np.unique(ordered)
        return torch.from_numpy(unique), torch.from_numpy(np.searchsorted(unique, v).astype(np.int64))
    ordered = ordered.astype(np.float64)  # clusters are contiguous runs of sorted values
    prefix = np.concatenate([[0.0], np.cumsum(ordered)])
    centroids = np.linspace(ordered[0], ordered[-1], k)  # Deep Compression's linear initialisation
    bounds = None
    for _ in range(iters):
        edges = np.searchsorted(ordered, (centroids[1:] + centroids[:-1]) / 2)
        new_bounds = np.concatenate([[0], edges, [ordered.size]])
        if bounds is not None and np.array_equal(new_bounds, bounds):
            break
        bounds = new_bounds
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)  # empty: keep
    codebook = np.sort(centroids.astype(np.float32))  # the stored codebook is the truth
    c64 = codebook.astype(np.float64)
    codes = np.searchsorted((c64[1:] + c64[:-1]) / 2, v.astype(np.float64))
    return torch.from_numpy(codebook), torch.from_numpy(codes.astype(np.int64))


def default_bits(module: nn.Module) -> int:
    """Deep Compression's defaults: 8 bits for conv layers, 5 for fully connected ones."""
    return FC_BITS if isinstance(module, nn.Linear) else CONV_BITS


def layer_bits(model: nn.Module, names: list[str], bits: int | Mapping[str, int] | None) -> dict[str, int]:
    """Bits per parameter name from an int, a dict (parameter or module names) or defaults."""
    modules = dict(model.named_modules())
    result = {}
    for name in names:
        module = modules.get(name.rpartition(".")[0], model)
        if isinstance(bits, Mapping):
            value = bits.get(name, bits.get(name.rpartition(".")[0], default_bits(module)))
        else:
            value = default_bits(module) if bits is None else bits
        result[name] = check_bits(value, f"bits for '{name}'")
    if isinstance(bits, Mapping):
        known = set(names) | {n.rpartition(".")[0] for n in names}
        unknown = [key for key in bits if key not in known]
        if unknown:
            raise ValueError(f"bits given for {unknown}, which are not among the shared layers {names}")
    return result


def share_weights(
    model: nn.Module,
    bits: int | Mapping[str, int] | None = None,
    include: Include = None,
    apply: bool = True,
) -> dict[str, SharedWeights]:
    """k-means each included layer's non-zero weights; write the shared values if ``apply``."""
    params = select_parameters(model, include)
    per_layer = layer_bits(model, list(params), bits)
    shared = {}
    for name, p in params.items():
        mask = (p.detach() != 0).cpu()
        codebook, codes = kmeans_1d(p.detach().cpu()[mask], per_layer[name])
        shared[name] = SharedWeights(codebook, codes, mask)
        if apply:
            with torch.no_grad():
                p.copy_(shared[name].weight(p.dtype).to(p.device))
    return shared


class CentroidTuner(nn.Module):
    """Trainable codebooks for a model whose weights are shared (Deep Compression retraining).

    Gradient hooks on the shared weights turn ``weight.grad`` into centroid gradients
    (scatter-add over the codes). Give ``tuner.parameters()`` to the optimizer (not the
    shared weights, which must still require grad) and call :meth:`sync_` after every
    step to write the centroids back into the weights.
    """

    def __init__(self, model: nn.Module, shared: Mapping[str, SharedWeights]) -> None:
        super().__init__()
        params = dict(model.named_parameters())
        unknown = [n for n in shared if n not in params]
        if unknown:
            raise KeyError(f"shared weights for unknown parameters {unknown}")
        self.names = list(shared)
        self.codebooks = nn.ParameterList(
            [nn.Parameter(shared[n].codebook.clone().float().to(params[n].device)) for n in self.names]
        )
        self._masks = [shared[n].mask.to(params[n].device) for n in self.names]
        self._positions = [torch.nonzero(m.reshape(-1)).reshape(-1) for m in self._masks]
        self._codes = [shared[n].codes.to(params[n].device) for n in self.names]
        self._handles = [params[n].register_hook(self._grad_hook(i)) for i, n in enumerate(self.names)]

    def _grad_hook(self, i: int):
        def hook(grad: torch.Tensor) -> None:
            centroid = self.codebooks[i]
            per_weight = grad.reshape(-1)[self._positions[i]].float()
            g = torch.zeros_like(centroid).index_add_(0, self._codes[i], per_weight)
            centroid.grad = g if centroid.grad is None else centroid.grad + g

        return hook

    @torch.no_grad()
    def sync_(self, model: nn.Module) -> None:
        """Write the current centroids into the model's weights (pruned entries stay 0)."""
        params = dict(model.named_parameters())
        for i, name in enumerate(self.names):
            flat = params[name].view(-1)
            flat[self._positions[i]] = self.codebooks[i][self._codes[i]].to(flat.dtype)

    def shared(self) -> dict[str, SharedWeights]:
        """The current codebooks as :class:`SharedWeights` (e.g. for ``save_compressed``)."""
        return {
            n: SharedWeights(self.codebooks[i].detach().cpu().clone(), self._codes[i].cpu(), self._masks[i].cpu())
            for i, n in enumerate(self.names)
        }

    def remove(self) -> None:
        """Detach the gradient hooks from the model."""
        for handle in self._handles:
            handle.remove()
