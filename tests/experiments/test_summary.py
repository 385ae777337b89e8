from types import SimpleNamespace

from experiments.run.summary import format_summary


def _phases():
    return {
        "baseline": SimpleNamespace(metrics={"acc": 0.9, "macs": 1000.0, "latency_b64_ms": 10.0}),
        "retrained": SimpleNamespace(metrics={"acc": 0.8, "macs": 250.0, "latency_b64_ms": 7.3}),
    }


def test_summary_shows_final_over_baseline_and_the_measured_latency_ratio():
    lines = {line[:26].strip(): line.split() for line in format_summary(_phases()).splitlines()}
    assert lines["MACs (conv+fc)"][-1] == "0.250" and lines["top-1 accuracy"][-1] == "0.889"
    assert lines["latency batch 64 (ms)"][-1] == "0.730"  # ratio of the medians when no ratio was measured
    # the interleaved comparison's own ratio (median of per-round ratios) is what the row holds and is shown
    measured = format_summary(_phases(), {"latency_b64_ms": 0.72, "latency_b1_ms": None})
    assert [line for line in measured.splitlines() if line.startswith("latency batch 64")][0].split()[-1] == "0.720"
