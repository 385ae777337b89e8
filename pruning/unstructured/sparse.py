"""Sparse inference: CSR execution of pruned Linear/Conv2d layers, used only where measured faster.

A masked layer stays dense in memory and compute unless it is replaced by a sparse module.
:func:`sparsify` times the dense layer against its sparse replacement on the layer's real
input (from ``example_inputs``) and swaps in the sparse one only when it is faster by
``min_speedup``; it returns every decision with its timings. Sparse modules are for
inference (no gradient through the weight) and run ``torch.sparse`` CSR kernels (MKL on
x86 CPUs) with 32-bit indices. ``num_threads`` lets a sparse layer run with fewer threads
than the process: on a busy machine a single-threaded sparse matvec avoids thread
synchronisation that can cost more than the product itself.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pruning.evaluation import hooked_forward
from pruning.measure import steady_allocator


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None or n == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _to_csr(matrix: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        csr = matrix.detach().to_sparse_csr()
        return torch.sparse_csr_tensor(
            csr.crow_indices().to(torch.int32),
            csr.col_indices().to(torch.int32),
            csr.values(),
            csr.shape,
            check_invariants=False,
        )


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` held as a CSR matrix (only its non-zeros)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, num_threads: int | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight_csr", _to_csr(weight))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.num_threads = num_threads

    @classmethod
    def from_dense(cls, linear: nn.Linear, num_threads: int | None = None) -> SparseLinear:
        return cls(linear.weight, linear.bias, num_threads)

    @property
    def nnz(self) -> int:
        return int(self.weight_csr.values().numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        with _threads(self.num_threads):
            if rows.shape[0] == 1:  # a matrix-vector product: MKL's mv is 1.1-3x faster than mm here
                v = rows[0].contiguous()
                y = torch.mv(self.weight_csr, v) if self.bias is None else torch.addmv(self.bias, self.weight_csr, v)
            else:
                y = torch.sparse.mm(self.weight_csr, rows.t()).t()
                if self.bias is not None:
                    y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        density = self.nnz / (self.in_features * self.out_features)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"density={density:.3f}, num_threads={self.num_threads}"
        )


class SparseConv2d(nn.Module):
    """A groups=1 Conv2d as a CSR matrix ``[out, in*kh*kw]`` times im2col columns."""

    def __init__(self, conv: nn.Conv2d, num_threads: int | None = None) -> None:
        super().__init__()
        if not supports_sparse(conv):
            raise ValueError(f"{conv} cannot run sparse: needs groups=1 and zero padding mode")
        self.out_channels = conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self.register_buffer("weight_csr", _to_csr(conv.weight.reshape(conv.out_channels, -1)))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.num_threads = num_threads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if isinstance(self.padding, str):
            raise NotImplementedError("string padding is not supported by SparseConv2d")
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        with _threads(self.num_threads):
            if self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0):
                cols = x.transpose(0, 1).reshape(x.shape[1], -1)  # 1x1 conv: no im2col needed
            else:
                cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
                cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)
            y = torch.sparse.mm(self.weight_csr, cols)  # [out, n * oh * ow]
            y = y.reshape(self.out_channels, n, oh, ow).transpose(0, 1)
            if self.bias is not None:
                y = y + self.bias.reshape(1, -1, 1, 1)
        return y


def supports_sparse(module: nn.Module) -> bool:
    """Whether :func:`sparsify` can give ``module`` a sparse replacement."""
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def to_sparse(module: nn.Module, num_threads: int | None = None) -> nn.Module:
    """The sparse replacement of a Linear or Conv2d (no measurement)."""
    if isinstance(module, nn.Linear):
        return SparseLinear.from_dense(module, num_threads)
    return SparseConv2d(module, num_threads)


@dataclass(frozen=True)
class SparseChoice:
    """What :func:`sparsify` decided for one layer, and why."""

    name: str
    density: float
    dense_ms: float | None
    sparse_ms: float | None
    num_threads: int | None
    chosen: str  # "sparse" or "dense"
    reason: str

    @property
    def speedup(self) -> float | None:
        return self.dense_ms / self.sparse_ms if self.dense_ms and self.sparse_ms else None

    def as_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup}


def time_ms(fn, *args, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn(*args)`` in milliseconds (no grad), malloc kept steady
    (:func:`pruning.measure.steady_allocator`)."""
    steady_allocator()
    with torch.no_grad():
        for _ in range(warmup):
            fn(*args)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _timed(module: nn.Module, x: torch.Tensor, threads: int | None, repeats: int) -> float:
    with _threads(threads):
        return time_ms(module, x, repeats=repeats)


@torch.no_grad()
def sparsify(
    model: nn.Module,
    example_inputs: Any,
    *,
    min_speedup: float = 1.2,
    max_density: float = 0.5,
    repeats: int = 10,
    thread_options: tuple[int | None, ...] | None = None,
) -> dict[str, SparseChoice]:
    """Replace Linear/Conv2d layers of ``model`` (in place) by sparse modules where that is
    measured to be ``min_speedup`` times faster on the layer's input from
    ``example_inputs``; everything else stays dense. Measure at the batch size you serve:
    sparse usually wins at batch 1 and loses at large batches.
    """
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if thread_options is None:
        thread_options = (None, 1) if torch.get_num_threads() > 1 else (None,)
    candidates = {n: m for n, m in model.named_modules() if supports_sparse(m)}
    captured: dict[str, torch.Tensor] = {}

    def capture(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            captured.setdefault(name, args[0])

        return hook

    hooked_forward(model, inputs, [(m, capture(name)) for name, m in candidates.items()])
    choices = {}
    for name, module in candidates.items():
        density = float((module.weight != 0).float().mean())
        x = captured.get(name)
        if x is None:
            choices[name] = SparseChoice(name, density, None, None, None, "dense", "not run by example_inputs")
            continue
        if density > max_density:
            choices[name] = SparseChoice(
                name, density, None, None, None, "dense", f"density {density:.2f} > {max_density}"
            )
            continue
        dense_ms = min(_timed(module, x, threads, repeats) for threads in thread_options)  # fair: best of both
        expected = module(x)
        best: tuple[float, int | None, nn.Module] | None = None
        for threads in thread_options:
            sparse = to_sparse(module, threads)
            if not torch.allclose(sparse(x), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max() + 1)):
                raise RuntimeError(f"sparse '{name}' disagrees with the dense layer; please report")
            ms = _timed(sparse, x, None, repeats)
            if best is None or ms < best[0]:
                best = (ms, threads, sparse)
        sparse_ms, threads, sparse = best
        if sparse_ms * min_speedup <= dense_ms:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, sparse)
            reason = f"{dense_ms / sparse_ms:.1f}x faster"
            choices[name] = SparseChoice(name, density, dense_ms, sparse_ms, threads, "sparse", reason)
        else:
            reason = f"sparse only {dense_ms / sparse_ms:.2f}x (< {min_speedup}x)"
            choices[name] = SparseChoice(name, density, dense_ms, sparse_ms, threads, "dense", reason)
    return choices
