"""The short before -> after table printed at the end of a run."""

from __future__ import annotations

from typing import Any, Mapping

ROWS = (
    ("acc", "top-1 accuracy", "{:.4f}"),
    ("acc_top5", "top-5 accuracy", "{:.4f}"),
    ("loss", "test loss", "{:.4f}"),
    ("params", "params (conv+fc weights)", "{:,.0f}"),
    ("nonzero_params", "non-zero params", "{:,.0f}"),
    ("params_total", "params (all)", "{:,.0f}"),
    ("macs", "MACs (conv+fc)", "{:,.0f}"),
    ("macs_total", "MACs (all)", "{:,.0f}"),
    ("dense_bytes", "dense bytes", "{:,.0f}"),
    ("compressed_bytes", "compressed bytes (file)", "{:,.0f}"),
    ("latency_b1_ms", "latency batch 1 (ms)", "{:.3f}"),
    ("latency_b64_ms", "latency batch 64 (ms)", "{:.3f}"),
    ("wall_s", "phase wall time (s)", "{:.1f}"),
)


def format_summary(phases: Mapping[str, Any], ratios: Mapping[str, float] | None = None) -> str:
    """A plain-text table: one row per metric, one column per phase, then final/baseline.

    ``ratios`` (metric key -> ratio) replaces final/baseline where the run measured the ratio
    itself: latency's is the median of interleaved per-round ratios (what the row holds), not
    the ratio of the two medians.
    """
    ratios = ratios or {}
    names = list(phases)
    metrics = {n: phases[n].metrics for n in names}
    header = f"{'metric':<26}" + "".join(f"{n:>16}" for n in names) + f"{'final/base':>12}"
    lines = [header, "-" * len(header)]
    for key, label, fmt in ROWS:
        if not any(key in m for m in metrics.values()):
            continue
        cells = "".join(f"{fmt.format(metrics[n][key]) if key in metrics[n] else '-':>16}" for n in names)
        base, final = metrics[names[0]].get(key), metrics[names[-1]].get(key)
        if ratios.get(key) is not None:
            ratio = f"{ratios[key]:.3f}"
        else:
            ratio = f"{final / base:.3f}" if base and final is not None and key != "wall_s" else ""
        lines.append(f"{label:<26}{cells}{ratio:>12}")
    return "\n".join(lines)
