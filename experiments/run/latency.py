"""Baseline-vs-final latency of a run, measured interleaved so the ratio can be trusted.

Two medians taken minutes apart on a loaded machine can differ by 2x for the same model, so
the run's latency ratios come from ``pruning.compare_latency``: the dense baseline and the
final model timed A B A B ... in one loop, until the 95% interval of the ratio is within
``measure.latency_ci`` (or ``measure.latency_max_time_s`` passed: ``converged`` is false).

Row fields per batch size N of ``measure.latency_batch_sizes``: ``ratio/latency_b<N>`` (final /
baseline), ``latency/b<N>/ci_low``, ``ci_high``, ``baseline_ms``, ``final_ms``, ``rounds``,
``converged``; once per run ``latency/threads``, ``latency/device`` (the CPU model or GPU
name) and ``latency/wall_s``. The baseline and final phases' ``latency_b<N>_ms`` are replaced
by the two medians of the same comparison, so the row's numbers agree with each other.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig
from torch import nn

import pruning
from experiments.checks import ConfigError, check_number
from experiments.training.context import MeasureSettings, Phase

log = logging.getLogger(__name__)

DEFAULTS = {"compare_latency": True, "latency_ci": 0.03, "latency_max_time_s": 10.0}


@dataclass(frozen=True)
class LatencySettings:
    """The end-of-run comparison: on or off (``measure.compare_latency``), timed until the ratio's
    95% interval is within +-``ci`` (``measure.latency_ci``) or ``max_time_s`` passed per batch
    size (``measure.latency_max_time_s``), at each of ``batch_sizes`` (``measure.latency_batch_sizes``)."""

    compare: bool = True
    ci: float = 0.03
    max_time_s: float = 10.0
    batch_sizes: tuple[int, ...] = (1, 64)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> LatencySettings:
        """Read and check the keys, with :data:`DEFAULTS` for those a config lacks."""
        s = {k: cfg.measure.get(k, v) for k, v in DEFAULTS.items()}
        if not isinstance(s["compare_latency"], bool):
            raise ConfigError(f"measure.compare_latency={s['compare_latency']!r}: must be true or false")
        ci = s["latency_ci"]
        check_number(
            "measure.latency_ci",
            ci,
            0,
            1,
            low_open=True,
            high_open=True,
            suffix=" (the 95% interval's relative half-width)",
        )
        cap = s["latency_max_time_s"]
        check_number("measure.latency_max_time_s", cap, 0, low_open=True, suffix=" (seconds)")
        return cls(
            compare=s["compare_latency"],
            ci=float(ci),
            max_time_s=float(cap),
            batch_sizes=MeasureSettings.from_config(cfg).latency_batch_sizes,
        )


def compare_to_baseline(
    baseline: nn.Module,
    final: nn.Module,
    example: Any,
    settings: LatencySettings,
    phases: dict[str, Phase],
    final_phase: str,
) -> dict[str, Any]:
    """Time ``baseline`` against ``final`` at every configured batch size; return the row's fields and
    write the two medians into ``phases['baseline']`` and ``phases[final_phase]``."""
    if not settings.compare:
        return {}
    start = time.perf_counter()
    try:
        return _compare(baseline, final, example, settings, phases, final_phase) | {
            "latency/wall_s": time.perf_counter() - start
        }
    except Exception as err:  # noqa: BLE001 - a failed measurement must not lose the run's results
        log.error("latency comparison failed: %s: %s", type(err).__name__, err, exc_info=True)
        return {"latency/error": f"{type(err).__name__}: {err}", "latency/wall_s": time.perf_counter() - start}


def _compare(
    baseline: nn.Module,
    final: nn.Module,
    example: Any,
    settings: LatencySettings,
    phases: dict[str, Phase],
    final_phase: str,
) -> dict[str, Any]:
    baseline = baseline.to(next(final.parameters()).device)
    out: dict[str, Any] = {}
    medians: list[tuple[str, int, float]] = []
    for b in settings.batch_sizes:
        c = pruning.compare_latency(baseline, final, example, int(b), ci=settings.ci, max_time_s=settings.max_time_s)
        out.update(
            {
                f"ratio/latency_b{b}": c.ratio,
                f"latency/b{b}/ci_low": c.ci_low,
                f"latency/b{b}/ci_high": c.ci_high,
                f"latency/b{b}/baseline_ms": c.median_a_ms,
                f"latency/b{b}/final_ms": c.median_b_ms,
                f"latency/b{b}/rounds": c.rounds,
                f"latency/b{b}/converged": c.converged,
            }
        )
        out["latency/threads"], out["latency/device"] = c.threads, c.device
        medians += [("baseline", b, c.median_a_ms), (final_phase, b, c.median_b_ms)]
    for phase, b, ms in medians:  # only once every batch size was measured
        if phase in phases:
            phases[phase].metrics[f"latency_b{b}_ms"] = ms
    return out
