"""Honest measurement: parameters and MACs by the papers' rule, bytes, latency.

Counting rule (Li et al. 2017, which reproduces their Table 1): ``params`` are the
weights of conv and linear layers (no biases, no BatchNorm); ``macs`` are the
multiply-accumulates of conv and linear layers. The "everything" counts are reported
separately (``params_total``, ``macs_total``) and never mixed into the paper columns.
"""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from pruning.evaluation import hooked_forward

WEIGHTED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
STEADY_ALLOCATOR_ENV = "PRUNEKIT_STEADY_ALLOCATOR"  # "0": leave the C library's malloc as it is
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's largest mmap threshold on 64-bit systems
_AFFINE_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class Counts:
    """Size and compute of a model for one input (batch 1).

    params / macs: conv + linear weights and multiply-accumulates (the papers' rule).
    params_total: every parameter. macs_total: ``macs`` plus one MAC per output element
    of each bias and of each affine normalisation layer.
    nonzero_params / nonzero_macs: the same paper counts restricted to non-zero weights
    (ShrinkBench: compression = params / nonzero_params, speedup = macs / nonzero_macs).
    """

    params: int
    macs: int
    params_total: int
    macs_total: int
    nonzero_params: int
    nonzero_macs: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _as_tuple(example_inputs: Any) -> tuple:
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def _first_of_batch(example_inputs: tuple) -> tuple:
    return tuple(x[:1] if torch.is_tensor(x) and x.dim() > 0 else x for x in example_inputs)


def count(model: nn.Module, example_inputs: Any) -> Counts:
    """Count params and MACs of ``model`` for one sample of ``example_inputs``.

    MACs are measured with forward hooks on a batch-1 forward pass in eval mode, so
    any architecture that runs counts correctly (shapes come from the real forward).
    """
    inputs = _first_of_batch(_as_tuple(example_inputs))
    macs = macs_extra = nz_macs = 0.0

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        nonlocal macs, macs_extra, nz_macs
        if not torch.is_tensor(output):
            return
        out_elems = output.numel()
        if isinstance(module, WEIGHTED_LAYERS):
            weight = module.weight
            if isinstance(module, nn.Linear):
                per_output = module.in_features
            else:
                per_output = weight.shape[1] * weight[0, 0].numel()
            layer_macs = out_elems * per_output
            density = float((weight != 0).sum()) / weight.numel()
            macs += layer_macs
            nz_macs += layer_macs * density
            if module.bias is not None:
                macs_extra += out_elems
        elif isinstance(module, _AFFINE_NORMS) and any(p is not None for p in module.parameters()):
            macs_extra += out_elems

    hooked_forward(
        model, inputs, [(m, hook) for m in model.modules() if isinstance(m, WEIGHTED_LAYERS + _AFFINE_NORMS)]
    )

    weights = [m.weight for m in model.modules() if isinstance(m, WEIGHTED_LAYERS)]
    params = sum(w.numel() for w in weights)
    nonzero = sum(int((w != 0).sum()) for w in weights)
    return Counts(
        params=int(params),
        macs=int(round(macs)),
        params_total=int(sum(p.numel() for p in model.parameters())),
        macs_total=int(round(macs + macs_extra)),
        nonzero_params=int(nonzero),
        nonzero_macs=int(round(nz_macs)),
    )


def nonzero_params(model: nn.Module) -> int:
    """Number of non-zero conv/linear weights (what connection pruning reduces)."""
    return int(sum(int((m.weight != 0).sum()) for m in model.modules() if isinstance(m, WEIGHTED_LAYERS)))


def dense_bytes(model: nn.Module) -> int:
    """Bytes of the model's state (parameters and buffers) stored densely in their dtypes."""
    return int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))


@lru_cache(maxsize=1)
def steady_allocator() -> bool:
    """Make glibc's malloc keep freed memory for reuse (once per process); True if it applied.

    By default glibc hands large freed blocks back to the system and maps them afresh on the next
    allocation, adapting its thresholds to what the process freed before. A forward pass on CPU
    then pays page faults for its activations that depend on the process's history: the same
    batch-16 MobileNetV2 measured 87 ms or 59 ms, and the same pruned model 0.57 or 0.39 of
    it. Every latency prunekit times first sets the mmap threshold to its maximum (32 MiB) and
    turns off trimming, the steady state a serving process reaches (and what jemalloc or
    tcmalloc give). Freed memory then stays with the process. Set the environment variable
    ``PRUNEKIT_STEADY_ALLOCATOR=0`` to leave malloc alone; other C libraries are left alone."""
    if os.environ.get(STEADY_ALLOCATOR_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1


def measure_latency(
    model: nn.Module,
    example_input: torch.Tensor,
    batch_size: int = 1,
    repeats: int = 20,
    warmup: int = 3,
) -> float:
    """Median wall-clock seconds of one eval-mode forward pass at ``batch_size``.

    The input is ``example_input[:1]`` repeated to ``batch_size``; runs on the
    device the model's parameters are on.
    """
    if repeats < 1 or batch_size < 1:
        raise ValueError(f"repeats={repeats}, batch_size={batch_size}: both must be >= 1")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = example_input[:1].to(device)
    x = x.expand(batch_size, *x.shape[1:]).contiguous()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    steady_allocator()
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                model(x)
                sync()
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return statistics.median(times)
