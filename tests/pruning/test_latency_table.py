import json

import pytest
import torch
from torch import nn

import pruning
from pruning.latency.layers import cut_layer
from pruning.latency.table import LatencyTable, grid_counts, monotone_curve


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


X = torch.randn(1, 3, 16, 16)


def table(tmp_path=None, batch=2, **kw) -> LatencyTable:
    return LatencyTable(net(), X, batch, 8, tmp_path, threads=1, repeats=3, calibrate_s=1.0, **kw)


def test_grid_counts_are_multiples_of_the_grid_plus_the_dense_count():
    assert grid_counts(32, 0, 8) == [8, 16, 24, 32]
    assert grid_counts(100, 0, 8) == [8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 100]
    assert grid_counts(20, 10, 8) == [16, 20]  # never below the frozen channels
    assert grid_counts(4, 0, 8) == [4]
    assert grid_counts(960, 0, 8, max_points=16) == list(range(64, 960, 64)) + [960]  # step 8 x 8


def test_layers_of_each_group_and_the_shapes_a_cut_gives_them(tmp_path):
    t = table()
    assert t.groups == {"0": (32, 0), "3": (64, 0)}
    assert [layer.name for layer in t.affected("0")] == ["0", "1", "3"]  # producer, its BN, the consumer
    assert [layer.name for layer in t.affected("3")] == ["3", "4", "8"]
    conv2 = t.affected("3")[0]
    assert conv2.in_shape == (2, 32, 16, 16) and conv2.out_shape == (2, 64, 16, 16)
    cut = cut_layer(conv2, {"0": 16, "3": 40}, t._kept)
    assert tuple(cut.weight.shape) == (40, 16, 3, 3)
    before = len(t.times)
    t.layer_ms(conv2, {"0": 16, "3": 40})  # a shape the calibration (80%, 60%, 40%) did not time
    keys = list(t.times)[before:]
    assert len(keys) == 1 and "Conv2d(16, 40" in keys[0] and "(2, 16, 16, 16)" in keys[0]


def test_kept_channels_follow_the_criterion():
    model = net()
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(32, dtype=torch.float32).view(32, 1, 1, 1).expand(32, 3, 3, 3))
    t = LatencyTable(model, X, 1, 8, threads=1, repeats=1, calibrate_s=0.5)
    kept = t._kept("0", 8).nonzero().flatten().tolist()
    assert kept == list(range(24, 32))  # the 8 largest L1 norms, as prune_to keeps them


def test_prediction_is_the_measured_dense_latency_and_drops_when_cut():
    t = table(batch=8)  # big enough that the convs, not timer noise, make the time
    assert t.predict({}) == pytest.approx(t.dense_ms, rel=1e-9)
    assert t.predict_ratio({"0": 8, "3": 8}) < t.predict_ratio({"0": 24, "3": 48}) < 1.0
    # the activation volume the rest scales with: conv outputs and BN outputs at 8 x 16 x 16 plus the linear's
    full = 8 * 256 * (32 + 32 + 64 + 64) + 8 * 10
    assert t.volume({}) == full
    assert t.volume({"0": 16}) == full - 8 * 256 * (16 + 16)
    with pytest.raises(ValueError, match="channels\\['0'\\]=0: keep an integer in \\[1, 32\\]"):
        t.predict({"0": 0})
    with pytest.raises(ValueError, match="'nope', which is not a prunable group"):
        t.predict({"nope": 8})


def test_interpolation_between_grid_points_is_the_fallback():
    t = table()
    bn = t.affected("0")[1]
    t._memo[(bn.name, (8,))] = 1.0
    t._memo[(bn.name, (16,))] = 3.0
    assert t.layer_ms(bn, {"0": 12}, measure=False) == pytest.approx(2.0)
    assert t.layer_ms(bn, {"0": 10}, measure=False) == pytest.approx(1.5)


def test_cache_file_is_keyed_and_reused(tmp_path):
    t = table(tmp_path)
    t.build()
    assert t.measured > 0
    files = list(tmp_path.glob("latency-*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["meta"]["threads"] == 1 and data["meta"]["batch_size"] == 2
    assert data["meta"]["torch"] == torch.__version__ and data["meta"]["device"] == pruning.latency.cpu_model()
    assert len(data["times"]) == len(t.times)
    again = table(tmp_path)
    again.build()
    assert again.measured == 0 and again.times == t.times  # every shape read from the cache
    table(tmp_path, batch=4).save()
    assert len(list(tmp_path.glob("latency-*.json"))) == 2  # another batch size, another file


def test_latency_table_builds_every_grid_point_and_reports_its_error():
    progress = []
    t = pruning.latency.latency_table(
        net(), X, 2, 8, threads=1, repeats=3, calibrate_s=1.0, progress=lambda i, n, g: progress.append((i, n, g))
    )
    assert progress == [(1, 2, "0"), (2, 2, "3")]
    assert t.build_seconds > 0
    assert {c for (name, c) in t._memo if name == "1"} == {(8,), (16,), (24,), (32,)}  # BN of group "0"
    rows = t.check({"quarter": {"0": 8, "3": 16}}, max_time_s=2.0)
    (row,) = rows
    assert row["assignment"] == "quarter"
    assert row["measured_ratio"] < 0.8 and row["predicted_ratio"] < 0.8  # 1/4 of the channels is faster
    assert row["ratio_error"] == pytest.approx(row["predicted_ratio"] / row["measured_ratio"] - 1)


def test_round_to_auto_keeps_at_least_the_planned_channels_and_picks_the_fastest_multiple(monkeypatch):
    model = net()
    plain = pruning.planned_channels(model, X, 0.3)
    assert plain == {"0": (32, 22), "3": (64, 44)}

    def fake_ms(self, layer, channels, measure=True):  # multiples of 16 run at half the cost
        return float(sum(c * (0.5 if c % 16 == 0 else 1.0) for c in self._counts(layer, channels)))

    monkeypatch.setattr(LatencyTable, "layer_ms", fake_ms)
    auto = pruning.planned_channels(model, X, 0.3, round_to="auto")
    # group 0: 22 -> {22, 24, 32}: 32 is the fastest; group 3: 44 -> {44, 48}: 48 (x 0.5) is
    assert auto == {"0": (32, 32), "3": (64, 48)}
    pruning.prune_filters(model, X, 0.3, round_to="auto")
    assert tuple(model[3].weight.shape) == (48, 32, 3, 3)
    with pytest.raises(ValueError, match="round_to='fast': must be an integer >= 1 or 'auto'"):
        pruning.prune_filters(net(), X, 0.3, round_to="fast")


def test_round_to_auto_on_real_timings_never_keeps_fewer_channels():
    model = net()
    auto = pruning.planned_channels(model, torch.randn(2, 3, 16, 16), 0.3, round_to="auto")
    for g, k in {"0": 22, "3": 44}.items():
        n = auto[g][0]
        assert auto[g][1] in {k, min(n, -(-k // 8) * 8), min(n, -(-k // 16) * 16)}


def test_the_calibration_curve_is_monotone_and_inverts():
    assert monotone_curve([(0.5, 0.4), (0.2, 0.3), (0.8, 0.35), (1.0, 1.0)]) == [
        (0.2, 0.3),
        (0.5, pytest.approx(0.375)),  # 0.4 and 0.35 pooled to their mean, then kept rising
        (0.8, pytest.approx(0.375 + 0.0003)),
        (1.0, 1.0),
    ]
    t = LatencyTable.__new__(LatencyTable)
    t.curve = [(0.2, 0.3), (0.6, 0.5), (1.0, 1.0)]
    assert t.correct(0.4) == pytest.approx(0.4) and t.correct(0.1) == pytest.approx(0.15)
    assert t.correct(0.8) == pytest.approx(0.75)
    for r in (0.05, 0.3, 0.45, 0.7, 0.99):
        assert t.correct(t.uncorrect(r)) == pytest.approx(r)
