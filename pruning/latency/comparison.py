"""Latency you can trust: two models timed interleaved until their ratio is known to +-``ci``.

A single median per model (``measure_latency``) drifts with the machine's load: the same
model measured twice on a shared CPU can differ by 2x. :func:`compare_latency` times the
two models in alternating order inside one loop, so slow phases of the machine hit both,
and reports the ratio of B to A with a distribution-free 95% confidence interval.
"""

from __future__ import annotations

import gc
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from pruning.checks import check_number
from pruning.evaluation import eval_mode
from pruning.measure import steady_allocator

_MIN_SAMPLE_S = 0.002  # one timed sample repeats the forward pass until it lasts about this long
_MAX_INNER = 1000


@dataclass(frozen=True)
class LatencyComparison:
    """B's latency relative to A's: ``ratio = latency(B) / latency(A)`` (< 1: B is faster).

    ``ci_low``/``ci_high`` bound ``ratio`` with 95% confidence; ``converged`` is False when
    the time cap stopped the loop before the interval was within the requested width.
    Medians are per forward pass of a batch, in milliseconds.
    """

    ratio: float
    ci_low: float
    ci_high: float
    median_a_ms: float
    median_b_ms: float
    rounds: int
    converged: bool
    threads: int
    device: str
    batch_size: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``, else what ``platform`` says)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "processor\t: ")) and ":" in line:
                    name = line.split(":", 1)[1].strip()
                    if name and not name.isdigit():
                        return name
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def device_name(device: torch.device | str) -> str:
    """A human-readable name of ``device``: the CUDA device's name or the CPU model."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer), CPU for a stateless model."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def batch_inputs(example_inputs: Any, batch_size: int, device: torch.device) -> tuple:
    """``example_inputs`` (a tensor or a tuple) with each tensor's first sample repeated to ``batch_size``."""
    check_number("batch_size", batch_size, 1, integer=True)
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    out = []
    for x in inputs:
        if torch.is_tensor(x) and x.dim() > 0:
            x = x[:1].to(device)
            x = x.expand(batch_size, *x.shape[1:]).contiguous()
        out.append(x)
    return tuple(out)


@contextmanager
def pinned_threads(threads: int | None, collect: bool = True) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(threads)`` (None: as it is), restored after;
    yields the thread count in effect. Garbage collection is paused too (after a full
    collection when ``collect``), so it cannot land inside a timed call, and malloc is kept
    from handing activations back to the system between calls (:func:`pruning.measure.steady_allocator`)."""
    steady_allocator()
    before = torch.get_num_threads()
    if threads is not None:
        check_number("threads", threads, 1, integer=True, suffix=" or None (keep the current setting)")
        torch.set_num_threads(threads)
    gc_was_enabled = gc.isenabled()
    if collect:
        gc.collect()
    gc.disable()
    try:
        yield torch.get_num_threads()
    finally:
        if gc_was_enabled:
            gc.enable()
        torch.set_num_threads(before)


def make_timer(model: nn.Module, inputs: tuple, device: torch.device) -> Callable[[int], float]:
    """A function ``inner -> seconds per call``, averaged over ``inner`` back-to-back calls.

    On CUDA the time is read from CUDA events around the calls (after a synchronize), so
    it measures the kernels and not the launch; on CPU from ``time.perf_counter``.
    """
    if device.type == "cuda":

        def run_cuda(inner: int) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            for _ in range(inner):
                model(*inputs)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / inner

        return run_cuda

    def run_cpu(inner: int) -> float:
        start = time.perf_counter()
        for _ in range(inner):
            model(*inputs)
        return (time.perf_counter() - start) / inner

    return run_cpu


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median of ``values`` (order statistics of
    the sign test: the ``k``-th smallest and largest, ``k`` the largest with
    ``P(Binomial(n, 1/2) < k) <= (1 - level) / 2``). At 95%, fewer than 6 values give the full range."""
    xs = sorted(values)
    n = len(xs)
    alpha = (1.0 - level) / 2
    cdf, j = 0.0, 0
    while j < n:  # stop at the first j with P(Binomial(n, 1/2) <= j) > alpha
        cdf += math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) - n * math.log(2))
        if cdf > alpha:
            break
        j += 1
    k = max(j, 1)  # the interval is [k-th smallest, k-th largest]; j = 0: no bound, the full range
    return xs[k - 1], xs[n - k]


def ratio_interval(logs: list[float], ci: float, min_rounds: int) -> tuple[float, float, float, bool]:
    """From per-round log ratios: the median, its 95% interval (:func:`median_interval`), and
    whether both ends lie within ``+-ci`` (relative) of the median after at least
    ``min_rounds`` (and 6) rounds: the stopping rule of an interleaved comparison."""
    mid = statistics.median(logs)
    lo, hi = median_interval(logs)
    done = len(logs) >= max(min_rounds, 6) and hi - mid <= math.log1p(ci) and mid - lo <= -math.log1p(-ci)
    return mid, lo, hi, done


def compare_latency(
    model_a: nn.Module,
    model_b: nn.Module,
    example_inputs: Any,
    batch_size: int = 1,
    *,
    warmup: int = 5,
    min_rounds: int = 10,
    max_time_s: float = 30.0,
    ci: float = 0.03,
    threads: int | None = None,
) -> LatencyComparison:
    """Time ``model_a`` and ``model_b`` interleaved; return ``latency(B) / latency(A)`` with its 95% CI.

    Both run in eval mode under ``torch.inference_mode`` on the device of ``model_a``'s
    parameters (both must be on it), on ``example_inputs``' first sample repeated to
    ``batch_size``. After ``warmup`` calls of each, every round times A and B once each,
    alternating which goes first, so drift and load hit both alike. A timed sample repeats
    the forward pass until it lasts about 2 ms (the same count for A and B), so tiny models
    are not timer noise.

    Statistic: the median over rounds of the per-round log ratio ``log(t_B / t_A)``; its
    95% interval comes from order statistics (the sign test), which needs no normality
    and ignores the heavy tail of a shared machine's slow calls. The loop stops once both
    ends of the interval are within ``+-ci`` of the ratio (after at least ``min_rounds``
    rounds), or when ``max_time_s`` seconds have passed (``converged=False``).

    threads: ``torch.set_num_threads`` for the measurement (restored after); None keeps it.
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci={ci!r}: the relative half-width must be in (0, 1)")
    if warmup < 0 or min_rounds < 1 or max_time_s <= 0:
        raise ValueError(f"warmup={warmup}, min_rounds={min_rounds}, max_time_s={max_time_s}: need >= 0, >= 1, > 0")
    device = model_device(model_a)
    if model_device(model_b) != device:
        raise ValueError(f"model_a is on {device} but model_b on {model_device(model_b)}: move both to one device")
    inputs = batch_inputs(example_inputs, batch_size, device)
    timers = (make_timer(model_a, inputs, device), make_timer(model_b, inputs, device))
    times: tuple[list[float], list[float]] = ([], [])
    logs: list[float] = []
    lo = hi = 0.0
    converged = False
    with pinned_threads(threads) as n_threads, eval_mode(model_a, model_b), torch.inference_mode():
        for t in timers:
            t(max(1, warmup))
        once = min(t(1) for t in timers)
        inner = max(1, min(_MAX_INNER, math.ceil(_MIN_SAMPLE_S / max(once, 1e-9))))
        deadline = time.perf_counter() + max_time_s
        while True:
            order = (0, 1) if len(logs) % 2 == 0 else (1, 0)
            sample = [0.0, 0.0]
            for i in order:
                sample[i] = timers[i](inner)
                times[i].append(sample[i])
            logs.append(math.log(max(sample[1], 1e-12) / max(sample[0], 1e-12)))
            _, lo, hi, converged = ratio_interval(logs, ci, min_rounds)
            if converged:
                break
            if time.perf_counter() > deadline:
                break
    ratio = math.exp(statistics.median(logs))
    return LatencyComparison(
        ratio=ratio,
        ci_low=math.exp(lo),
        ci_high=math.exp(hi),
        median_a_ms=statistics.median(times[0]) * 1e3,
        median_b_ms=statistics.median(times[1]) * 1e3,
        rounds=len(logs),
        converged=converged,
        threads=n_threads,
        device=device_name(device),
        batch_size=batch_size,
    )
