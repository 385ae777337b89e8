"""The deploy step (fold BN -> ONNX -> ONNX Runtime check -> model.onnx) and the run's interleaved latency."""

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from experiments.checks import ConfigError
from experiments.run.deploy import (
    DeploySettings,
    OnnxExportError,
    OnnxMismatch,
    deploy,
    export_verified_onnx,
)
from experiments.run.pipeline import run
from experiments.storage.results import read_rows
from tests.experiments.conftest import FAST


def bn_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5),
    )  # fmt: skip
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


class Spectral(nn.Module):
    """An op the ONNX exporter has no mapping for (aten::fft_rfft)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(torch.fft.rfft(x.flatten(1)[:, :8]).abs())


class Noisy(nn.Module):
    """Exports, but ONNX Runtime draws other random numbers than PyTorch: the outputs disagree."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(x.flatten(1)) + torch.rand(x.shape[0], 3)


def settings(**deploy_keys) -> DeploySettings:
    return DeploySettings(batch_sizes=(1, 4), repeats=2, **deploy_keys)


def test_verified_onnx_is_folded_has_a_dynamic_batch_and_matches_pytorch():
    model = bn_cnn()
    x = torch.randn(6, 1, 9, 9)
    shipped = export_verified_onnx(model, x, threads=1)
    assert shipped.folded_bn == 2 and shipped.max_abs_diff < 1e-5
    graph = onnx.load_from_string(shipped.data).graph
    assert not any(n.op_type == "BatchNormalization" for n in graph.node)
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(shipped.data, providers=["CPUExecutionProvider"])
    for n in (1, 3, 6):  # one file serves every batch size
        (y,) = session.run(None, {"input": x[:n].numpy()})
        with torch.no_grad():
            assert float((torch.from_numpy(y) - model(x[:n])).abs().max()) < 1e-5
    assert model[1].__class__ is nn.BatchNorm2d  # the run's model is not folded in place
    unfolded = export_verified_onnx(model, x, fold_bn=False, threads=1)
    assert unfolded.folded_bn == 0 and unfolded.max_abs_diff < 1e-5


def test_unexportable_model_is_an_export_error_naming_the_key_and_writes_nothing(tmp_path):
    x = torch.randn(4, 1, 4, 4)
    with pytest.raises(OnnxExportError, match=r"fft_rfft.*deploy\.onnx=false"):
        export_verified_onnx(Spectral().eval(), x)
    (tmp_path / "model.onnx").write_bytes(b"stale")
    fields = deploy(Spectral().eval(), x, settings(), tmp_path)
    assert fields["deploy/status"] == "export_failed"
    assert "deploy.onnx=false" in fields["deploy/error"] and "fft_rfft" in fields["deploy/error"]
    assert "deploy/onnx_bytes" not in fields and not (tmp_path / "model.onnx").exists()


def test_disagreeing_onnx_is_refused_with_its_difference_recorded(tmp_path):
    x = torch.randn(8, 1, 4, 4)
    with pytest.raises(OnnxMismatch, match=r"above deploy\.max_abs_diff=0\.0001") as err:
        export_verified_onnx(Noisy().eval(), x)
    assert err.value.max_abs_diff > 0.05  # uniform noise in [0, 1) drawn twice
    fields = deploy(Noisy().eval(), x, settings(), tmp_path)
    assert fields["deploy/status"] == "refused" and fields["deploy/onnx_max_abs_diff"] > 0.05
    assert "deploy.max_abs_diff" in fields["deploy/error"]
    assert not (tmp_path / "model.onnx").exists()
    # a threshold above the noise accepts it: the check is the only thing that refused it
    assert deploy(Noisy().eval(), x, settings(max_abs_diff=2.0), tmp_path)["deploy/status"] == "ok"
    assert (tmp_path / "model.onnx").exists()


def test_deploy_records_sizes_and_ort_latency_for_batch_1_and_every_measured_batch(tmp_path):
    fields = deploy(bn_cnn(), torch.randn(6, 1, 9, 9), settings(), tmp_path)
    assert fields["deploy/status"] == "ok" and "deploy/error" not in fields
    assert fields["deploy/onnx_bytes"] == (tmp_path / "model.onnx").stat().st_size
    assert fields["deploy/folded_bn"] == 2 and fields["deploy/onnx_max_abs_diff"] < 1e-5
    assert fields["deploy/ort_latency_ms_b1"] > 0 and fields["deploy/ort_latency_ms_b4"] > 0
    assert fields["deploy/ort_threads"] == torch.get_num_threads()
    assert deploy(bn_cnn(), torch.randn(2, 1, 9, 9), settings(onnx=False), tmp_path) == {"deploy/status": "off"}


@pytest.mark.parametrize(
    "override, message",
    [
        ("deploy.max_abs_diff=-1", r"deploy.max_abs_diff=-1: must be a number > 0"),
        ("deploy.max_abs_diff=0", r"deploy.max_abs_diff=0: must be a number > 0"),
        ("deploy.onnx=maybe", r"deploy.onnx='maybe': must be true or false"),
        ("deploy.fold_bn=2", r"deploy.fold_bn=2: must be true or false"),
        ("deploy.opset=3", r"deploy.opset=3: must be an integer >= 7, or null"),
        ("+deploy.format=tflite", r"deploy.format: unknown key; the deploy keys are onnx, fold_bn"),
        ("measure.latency_ci=1.5", r"measure.latency_ci=1.5: must be a number in \(0, 1\)"),
        ("measure.latency_max_time_s=0", r"measure.latency_max_time_s=0: must be a number > 0 \(seconds\)"),
        ("measure.compare_latency=yes", r"measure.compare_latency='yes': must be true or false"),
    ],
)
def test_bad_deploy_and_latency_keys_are_rejected_before_training(compose_cfg, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run(compose_cfg(*FAST, override))
    assert not (tmp_path / ".cache").exists(), "training started before validation"


def test_run_ships_a_verified_onnx_and_records_interleaved_latency(compose_cfg, tmp_path):
    row = run(compose_cfg(*FAST, "measure.latency_batch_sizes=[1,8]", "measure.latency_max_time_s=2"))
    m = row["metrics"]
    out = tmp_path / "out"
    assert m["deploy/status"] == "ok" and m["deploy/onnx_max_abs_diff"] <= 1e-4
    assert m["deploy/onnx_bytes"] == (out / "model.onnx").stat().st_size
    assert m["deploy/ort_latency_ms_b1"] > 0 and m["deploy/ort_latency_ms_b8"] > 0
    # deploy.quantize=none (the default): nothing quantized, no int8 fields or file
    assert row["config"]["deploy"]["quantize"] == "none" and not any(k.startswith("deploy/int8") for k in m)
    assert not (out / "model.int8.onnx").exists()
    # model.onnx computes what the shipped model.pt computes
    from hydra.utils import instantiate

    import pruning

    cfg = row["config"]
    loaded = pruning.load_pruned(
        lambda: instantiate(cfg["model"], num_classes=10, in_channels=1, input_size=16), out / "model.pt"
    ).eval()
    x = torch.randn(5, 1, 16, 16)
    (y,) = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()}
    )
    with torch.no_grad():
        assert float((torch.from_numpy(y) - loaded(x)).abs().max()) < 1e-4
    # latency: interleaved ratio with its interval; the phases carry the comparison's medians
    for b in (1, 8):
        assert m[f"latency/b{b}/ci_low"] <= m[f"ratio/latency_b{b}"] <= m[f"latency/b{b}/ci_high"]
        assert m[f"latency/b{b}/rounds"] >= 10
        assert m[f"baseline/latency_b{b}_ms"] == m[f"latency/b{b}/baseline_ms"] > 0
        assert m[f"retrained/latency_b{b}_ms"] == m[f"latency/b{b}/final_ms"] > 0
    assert m["latency/threads"] == torch.get_num_threads() and m["latency/device"]
    stored = read_rows(tmp_path / "results")[0]["metrics"]
    assert stored["deploy/status"] == "ok" and stored["ratio/latency_b8"] == m["ratio/latency_b8"]


def test_a_model_onnx_cannot_export_still_finishes_the_run_and_keeps_its_results(compose_cfg, tmp_path, monkeypatch):
    def unsupported(*args, **kwargs):
        raise torch.onnx.errors.UnsupportedOperatorError("aten::made_up", 20, 21)

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    from experiments.strategies.filters import FilterPruning

    # a strategy's own numbers (latency-aware pruning's prediction) join the row's metrics
    monkeypatch.setattr(FilterPruning, "metrics", lambda self: {"latency/b1/predicted_ratio": 0.5}, raising=False)
    row = run(compose_cfg(*FAST, "measure.latency_batch_sizes=[1]", "measure.compare_latency=false"))
    assert row["status"] == "ok"
    m = row["metrics"]
    assert m["deploy/status"] == "export_failed" and "aten::made_up" in m["deploy/error"]
    assert "deploy.onnx=false" in m["deploy/error"]
    out = tmp_path / "out"
    assert (out / "model.pt").exists() and not (out / "model.onnx").exists()
    (stored,) = read_rows(tmp_path / "results")
    assert stored["status"] == "ok" and stored["metrics"]["deploy/status"] == "export_failed"
    assert stored["metrics"]["retrained/params"] < stored["metrics"]["baseline/params"]
    # without the comparison the ratio is the phases' own medians, as before
    assert m["ratio/latency_b1"] == pytest.approx(m["retrained/latency_b1_ms"] / m["baseline/latency_b1_ms"])
    assert "latency/b1/ci_low" not in m
    assert m["latency/b1/predicted_ratio"] == 0.5


def test_latency_study_pairs_uniform_arms_with_latency_targets(compose_cfg):
    from hydra import compose, initialize_config_dir

    from tests.experiments.conftest import CONF

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        study = compose("config", overrides=["study=latency"], return_hydra_config=True)
    arms = study.hydra.sweeper.params.arm.split(",")
    assert study.hydra.sweeper.params.seed == "0,1,2" and 64 in study.measure.latency_batch_sizes
    assert study.deploy.quantize == "int8"  # every run: its fp32 model and its int8 deployment
    uniform = {a: compose_cfg("study=latency", f"arm={a}").strategy for a in arms if a.startswith("l1_oneshot")}
    aware = {a: compose_cfg("study=latency", f"arm={a}").strategy for a in arms if a.startswith("l1_latency")}
    assert sorted(s.ratio for s in uniform.values()) == [0.3, 0.5]
    assert {s.name for s in aware.values()} == {"l1_latency"}
    assert sorted(s.ratio.target for s in aware.values()) == [0.6, 0.8]
    assert all(s.ratio.batch_size == 64 and "LatencyTarget" in s.ratio._target_ for s in aware.values())
