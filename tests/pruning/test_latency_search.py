"""The latency search against a stubbed clock: the "true" latency of a model is a function of
its MACs, and the table's layer times are made wrong on purpose. What the search reports and
decides must follow the measured models, never the table."""

import math

import pytest
import torch
from torch import nn

import pruning
import pruning.latency.search as search
import pruning.latency.table as table_module
from pruning.latency.comparison import LatencyComparison
from pruning.latency.search import along, next_scale

X = torch.randn(1, 3, 16, 16)


def net() -> nn.Module:
    torch.manual_seed(0)
    layers, c_in = [], 3
    for c in (32, 48, 64, 64, 64, 96, 96, 128):  # enough groups that one grid step moves latency little
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))


def true_ratio(dense: nn.Module, pruned: nn.Module, overhead: float) -> float:
    """The stub clock: a fixed overhead plus time proportional to MACs, as a ratio to the dense model."""
    macs = pruning.count(pruned, X).macs / pruning.count(dense, X).macs
    return (overhead + macs) / (overhead + 1.0)


@pytest.fixture
def stub_clock(monkeypatch):
    """Measured comparisons follow :func:`true_ratio`; every layer entry of the table is timed as
    ``wrong(shape)``: the table's per-layer sums are wrong in the way the test chooses."""
    calls = {"compare": 0}

    def install(wrong, overhead=0.2, ci=0.01):
        def compare(a, b, example_inputs, batch_size=1, **kw):
            calls["compare"] += 1
            calls.setdefault("seconds", []).append(kw.get("max_time_s"))
            r = true_ratio(a, b, overhead)
            return LatencyComparison(r, r * (1 - ci), r * (1 + ci), 10.0, 10.0 * r, 10, True, 1, "stub", batch_size)

        def time_module(module, shape, device, threads, repeats):
            return wrong(module, shape)

        def time_ratio(module, shape, reference, reference_shape, device, threads, repeats):
            return wrong(module, shape) / wrong(reference, reference_shape)

        monkeypatch.setattr(search, "compare_latency", compare)
        monkeypatch.setattr(table_module, "compare_latency", compare)
        monkeypatch.setattr(table_module, "time_module", time_module)
        monkeypatch.setattr(table_module, "time_ratio", time_ratio)
        table_module.forget_timings()
        return calls

    yield install
    table_module.forget_timings()


def weights(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("target", [0.5, 0.7])
def test_wrong_per_layer_sums_are_corrected_by_measured_models(stub_clock, target):
    # layer times grow with the square root of the weights: the table overestimates what
    # pruning saves at some cuts and underestimates at others, nowhere a common factor
    stub_clock(lambda m, shape: 1.0 + weights(m) ** 0.5 / 10)
    model = net()
    r = pruning.prune_for_latency(model, X, target, 1, threads=1, passes=6)
    assert r.hit and abs(r.measured_ratio / target - 1) <= 0.05
    assert r.measured_ratio == pytest.approx(true_ratio(net(), model, 0.2))  # the model handed back is the measured one
    assert 1 <= len(r.passes) <= 6 and r.passes[-1]["measured_ratio"] == pytest.approx(r.measured_ratio)


def test_a_table_that_calls_the_target_unreachable_is_overruled_by_measurement(stub_clock, monkeypatch):
    stub_clock(lambda m, shape: 5.0, overhead=0.05)
    # a table that predicts no cut makes the model any faster
    monkeypatch.setattr(table_module.LatencyTable, "predict_ratio", lambda self, channels, measure=True: 1.0)
    r = pruning.prune_for_latency(net(), X, 0.6, 1, threads=1, passes=6)
    first = r.passes[0]["channels"]
    assert all(first[g] == 8 for g in ("0", "3", "6"))  # the first model timed is the smallest one
    assert r.hit and abs(r.measured_ratio / 0.6 - 1) <= 0.05


def test_unreachable_is_raised_only_after_the_smallest_model_measured_a_miss(stub_clock):
    calls = stub_clock(lambda m, shape: 1.0 + weights(m) ** 0.5 / 10, overhead=1.0)
    model = net()
    before = pruning.count(model, X).params
    # a fixed overhead as large as the dense model's compute: no model gets below about 0.5
    with pytest.raises(pruning.latency.UnreachableTarget, match=r"target=0.3: unreachable; .* measured") as e:
        pruning.prune_for_latency(model, X, 0.3, 1, threads=1, passes=6)
    assert 0.5 <= e.value.best < 0.6 and calls["compare"] >= 4  # three calibration points, then the smallest model
    assert e.value.models_timed >= 1
    assert pruning.count(model, X).params == before  # left as it was


def test_a_miss_of_the_smallest_model_within_its_interval_is_measured_again(stub_clock):
    calls = stub_clock(lambda m, shape: 1.0 + weights(m) ** 0.5 / 10, overhead=1.0, ci=0.3)
    with pytest.raises(pruning.latency.UnreachableTarget):
        pruning.prune_for_latency(net(), X, 0.45, 1, threads=1, passes=6, max_time_s=3.0)
    assert calls["seconds"][-2:] == [3.0, 6.0]  # the smallest model, then again for twice as long


def test_every_miss_reports_the_closest_measured_model(stub_clock):
    stub_clock(lambda m, shape: 1.0 + weights(m) ** 0.5 / 10)
    r = pruning.prune_for_latency(net(), X, 0.5, 1, threads=1, passes=1, tolerance=0.001)
    assert len(r.passes) == 1 and r.hit == (abs(r.measured_ratio / 0.5 - 1) <= 0.001)
    assert r.as_dict()["measured_ratio"] == r.passes[0]["measured_ratio"]


def test_next_scale_extrapolates_then_keeps_inside_the_bracket():
    dense = (0.0, 1.0)
    # no point below the target: the log ratio extrapolated from the dense model, capped at the floor
    assert next_scale(0.7, [dense, (1.0, 0.8)]) == pytest.approx(math.log(0.7) / math.log(0.8))
    assert next_scale(0.1, [dense, (1.0, 0.9)]) == 2.0
    # a bracket: the secant of the log ratio, inside its inner 80%
    s = next_scale(0.5, [dense, (1.0, 0.6), (1.5, 0.4)])
    assert s == pytest.approx(1.0 + 0.5 * (math.log(0.6) - math.log(0.5)) / (math.log(0.6) - math.log(0.4)))
    # a step: both sides far from the target, the next scale still inside the bracket
    s = next_scale(0.5, [dense, (1.0, 0.9), (1.1, 0.1)])
    assert 1.01 <= s <= 1.09


def test_along_scales_every_groups_removed_channels_alike():
    allowed = {"a": [8, 16, 24, 32, 40, 48, 56, 64], "b": [8, 16, 24, 32]}
    dense, floor, anchor = {"a": 64, "b": 32}, {"a": 8, "b": 8}, {"a": 32, "b": 24}
    assert along(0.0, anchor, floor, allowed, dense) == {}
    assert along(1.0, anchor, floor, allowed, dense) == anchor
    assert along(0.5, anchor, floor, allowed, dense) == {"a": 48}  # b: 28 -> 32 (ties keep more)
    assert along(2.0, anchor, floor, allowed, dense) == floor
    assert along(1.5, anchor, floor, allowed, dense) == {"a": 24, "b": 16}
