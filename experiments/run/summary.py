"""The short before -> after table printed at the end of a run."""

from __future__ import annotations

import re
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


def format_deploy_table(metrics: Mapping[str, Any], final_phase: str = "retrained") -> str | None:
    """dense fp32 -> pruned fp32 -> pruned int8, all in ONNX Runtime: test top-1, ONNX file bytes and
    latency per batch size: median ms and, in brackets, the median of the per-round ratios to dense
    fp32 (to pruned fp32 when the dense model could not be exported). None without an int8 model."""
    batches = sorted({int(m[1]) for k in metrics if (m := re.fullmatch(r"deploy/int8/b(\d+)/int8_ms", k))})
    if metrics.get("deploy/int8_status") != "ok" or not batches:
        return None
    dense = "deploy/dense_onnx_bytes" in metrics
    base = "dense" if dense else "fp32"
    rows = [
        ("dense fp32", "baseline/acc", "deploy/dense_onnx_bytes", "dense"),
        ("pruned fp32", f"{final_phase}/acc", "deploy/onnx_bytes", "fp32"),
        ("pruned int8", "deploy/int8_top1", "deploy/int8_bytes", "int8"),
    ][0 if dense else 1 :]
    header = f"{'ONNX Runtime':<14}{'top-1':>9}{'bytes':>12}" + "".join(f"{f'b{b} ms (x {base})':>22}" for b in batches)
    lines = [header, "-" * len(header)]
    for label, acc, size, name in rows:
        cells = [_cell(metrics.get(acc), "{:.4f}", 9), _cell(metrics.get(size), "{:,.0f}", 12)]
        for b in batches:
            ms = metrics.get(f"deploy/int8/b{b}/{name}_ms")
            ratio = 1.0 if name == base else metrics.get(f"deploy/int8/b{b}/{name}_vs_{base}")
            text = "-" if ms is None else f"{ms:.3f}" + (f" ({ratio:.3f})" if ratio is not None else "")
            cells.append(f"{text:>22}")
        lines.append(f"{label:<14}" + "".join(cells))
    return "\n".join(lines)


def _cell(value: Any, fmt: str, width: int) -> str:
    return f"{fmt.format(value) if value is not None else '-':>{width}}"
