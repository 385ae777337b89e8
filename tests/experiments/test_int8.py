"""deploy.quantize=int8: ONNX Runtime static quantization of the shipped model, measured end to end."""

import onnx
import pytest
import torch
from torch import nn

from experiments.checks import ConfigError
from experiments.run import int8 as int8_module
from experiments.run.deploy import DeploySettings, deploy, ort_session
from experiments.run.int8 import INT8_FILE, deploy_int8, interleaved_ort_latency, quantize_int8
from experiments.run.latency import LatencySettings
from experiments.run.pipeline import run
from experiments.run.summary import format_deploy_table
from experiments.storage.results import read_rows
from tests.experiments.conftest import FAST
from tests.experiments.test_deploy import bn_cnn

SETTINGS = DeploySettings(batch_sizes=(1, 4), repeats=2, quantize="int8", calibration_batches=1)
QUICK = LatencySettings(ci=0.5, max_time_s=0.2)


def labelled(model: nn.Module, n: int = 48) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Test batches labelled by ``model`` itself: its fp32 top-1 is 1 by construction."""
    torch.manual_seed(1)
    x = torch.randn(n, 1, 9, 9)
    with torch.no_grad():
        y = model(x).argmax(1)
    return list(zip(x.split(16), y.split(16)))


def shipped(tmp_path, model: nn.Module) -> torch.Tensor:
    """Run the fp32 deploy step into ``tmp_path``; return the batch it checked."""
    batch = torch.randn(6, 1, 9, 9)
    assert deploy(model, batch, SETTINGS, tmp_path)["deploy/status"] == "ok"
    return batch


def test_int8_model_is_qdq_per_channel_and_close_to_fp32(tmp_path):
    model = bn_cnn()
    batch = shipped(tmp_path, model)
    data = quantize_int8((tmp_path / "model.onnx").read_bytes(), torch.randn(200, 1, 9, 9))
    graph = onnx.load_from_string(data).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 6  # QDQ format
    weights = {i.name: i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2}
    assert len(weights) == 3  # both convs and the linear
    scales = {i.name: i for i in graph.initializer}
    per_channel = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights]
    assert sorted(len(onnx.numpy_helper.to_array(scales[n.input[1]])) for n in per_channel) == [5, 6, 8]
    session = ort_session(data, 1)
    (got,) = session.run(["logits"], {"input": batch.numpy()})
    with torch.no_grad():
        want = model(batch)
    assert float((torch.from_numpy(got) - want).abs().max()) < 0.05 * float(want.abs().max())


def test_int8_fields_files_and_the_deploy_table(tmp_path):
    model = bn_cnn()
    batch = shipped(tmp_path, model)
    fields = deploy_int8(model, batch, torch.randn(64, 1, 9, 9), labelled(model), SETTINGS, QUICK, tmp_path, (16,))
    assert fields["deploy/int8_status"] == "ok" and "deploy/int8_error" not in fields
    assert fields["deploy/int8_bytes"] == (tmp_path / INT8_FILE).stat().st_size
    assert fields["deploy/dense_onnx_bytes"] == (tmp_path / "model.onnx").stat().st_size  # the same model here
    assert fields["deploy/int8_quantized_weights"] == 3 and fields["deploy/int8_calibration_images"] == 64
    assert fields["deploy/int8_test_images"] == 48 and fields["deploy/int8_top1"] >= 0.9  # labels = fp32's argmax
    for b in (1, 4, 16):  # batch 1, the measured batches and the test split's
        f = {k.rsplit("/", 1)[1]: v for k, v in fields.items() if k.startswith(f"deploy/int8/b{b}/")}
        assert f["ci_low"] <= f["ratio"] <= f["ci_high"] and f["rounds"] >= 1
        assert f["dense_ms"] > 0 and f["fp32_ms"] > 0 and f["int8_ms"] > 0
        assert f["fp32_vs_dense"] > 0 and f["int8_vs_dense"] > 0
    metrics = {**fields, "baseline/acc": 0.9, "retrained/acc": 1.0, "deploy/onnx_bytes": 2000}
    lines = format_deploy_table(metrics).splitlines()
    assert lines[0].split()[:3] == ["ONNX", "Runtime", "top-1"] and "b16 ms (x dense)" in lines[0]
    assert [ln.split()[:2] for ln in lines[2:]] == [["dense", "fp32"], ["pruned", "fp32"], ["pruned", "int8"]]
    assert lines[2].split()[2:4] == ["0.9000", f"{fields['deploy/dense_onnx_bytes']:,}"]
    assert f"({fields['deploy/int8/b16/int8_vs_dense']:.3f})" in lines[4] and "(1.000)" in lines[2]
    assert format_deploy_table({**metrics, "deploy/int8_status": "failed"}) is None


def test_interleaved_timing_takes_the_median_of_per_round_ratios():
    class Sleeper:
        def __init__(self, seconds):
            self.seconds = seconds

        def run(self, names, feed):
            import time

            time.sleep(self.seconds)

    sessions = {"a": Sleeper(0.002), "b": Sleeper(0.001)}
    out = interleaved_ort_latency(sessions, torch.zeros(1, 1, 2, 2), 1, reference="a", subject="b", max_time_s=0.5)
    assert 0.3 < out["ratio"] < 0.8 and out["b_vs_a"] == pytest.approx(out["ratio"], rel=0.3)
    assert out["a_ms"] > out["b_ms"] and out["rounds"] >= 10


class ChannelMeans(nn.Module):
    """Exports to ONNX (a ReduceMean), but has no Conv, MatMul or Gemm for ONNX Runtime to quantize."""

    def forward(self, x):
        return x.mean(dim=(2, 3)).repeat(1, 3)


def test_a_model_that_cannot_be_quantized_says_why_and_writes_nothing(tmp_path, monkeypatch):
    batch = torch.randn(6, 1, 9, 9)
    calibration = torch.randn(8, 1, 9, 9)
    assert deploy(ChannelMeans(), batch, SETTINGS, tmp_path)["deploy/status"] == "ok"
    (tmp_path / INT8_FILE).write_bytes(b"stale")
    f = deploy_int8(ChannelMeans(), batch, calibration, labelled(ChannelMeans()), SETTINGS, QUICK, tmp_path)
    assert f["deploy/int8_status"] == "unquantized" and "quantized no weight" in f["deploy/int8_error"]
    assert "deploy.quantize=none" in f["deploy/int8_error"] and not (tmp_path / INT8_FILE).exists()
    # the quantizer itself failing: the reason, and the key that skips it
    model = bn_cnn()
    shipped(tmp_path, model)

    def broken(*args, **kwargs):
        raise RuntimeError("made-up quantizer failure\nsecond line")

    monkeypatch.setattr(int8_module, "quantize_int8", broken)
    f = deploy_int8(model, batch, calibration, labelled(model), SETTINGS, QUICK, tmp_path)
    assert f["deploy/int8_status"] == "failed" and "RuntimeError: made-up quantizer failure)" in f["deploy/int8_error"]
    # no verified model.onnx (export failed or refused): skipped, pointing at the fp32 deploy fields
    (tmp_path / "model.onnx").unlink()
    f = deploy_int8(model, batch, calibration, labelled(model), SETTINGS, QUICK, tmp_path)
    assert f["deploy/int8_status"] == "skipped" and "deploy/status" in f["deploy/int8_error"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["deploy.quantize=int4"], r"deploy.quantize='int4': allowed values are 'none', 'int8'"),
        (["deploy.calibration_batches=0"], r"deploy.calibration_batches=0: must be an integer >= 1 \(training"),
        (["deploy.calibration_batches=2.5"], r"deploy.calibration_batches=2.5: must be an integer >= 1"),
        (["deploy.quantize=int8", "deploy.onnx=false"], r"deploy.quantize=int8 needs deploy.onnx=true"),
    ],
)
def test_bad_int8_values_stop_the_run_before_training(compose_cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(compose_cfg(*FAST, *overrides))
    assert not (tmp_path / ".cache").exists() and not (tmp_path / "out").exists(), "training started first"


def test_run_with_int8_records_it_and_prints_the_three_row_table(compose_cfg, tmp_path, capsys):
    row = run(
        compose_cfg(*FAST, "deploy.quantize=int8", "deploy.calibration_batches=2", "measure.latency_max_time_s=1")
    )
    m = row["metrics"]
    out = tmp_path / "out"
    assert row["status"] == "ok" and m["deploy/status"] == "ok" and m["deploy/int8_status"] == "ok"
    assert m["deploy/int8_bytes"] == (out / INT8_FILE).stat().st_size < m["deploy/onnx_bytes"]
    assert m["deploy/int8_test_images"] == 128 and 0 <= m["deploy/int8_top1"] <= 1
    assert m["deploy/int8_calibration_images"] == 2 * 64  # two training batches of dataset.batch_size
    assert {1, 64, 256} <= {int(k.split("/")[2][1:]) for k in m if k.startswith("deploy/int8/b")}  # 256: test batch
    assert m["deploy/dense_onnx_bytes"] > m["deploy/onnx_bytes"]  # the dense baseline, pruned by lenet5's cut
    table = capsys.readouterr().out.split("ONNX Runtime")[-1].splitlines()
    assert [ln.split()[:2] for ln in table[2:5]] == [["dense", "fp32"], ["pruned", "fp32"], ["pruned", "int8"]]
    stored = read_rows(tmp_path / "results")[0]["metrics"]
    assert stored["deploy/int8_top1"] == m["deploy/int8_top1"]


@pytest.mark.slow
def test_int8_top1_within_one_point_of_fp32_on_vgg_small_fashion_mnist(compose_cfg, tmp_path):
    """Measured: a trained, pruned vgg_small on the real Fashion-MNIST test split (10,000 images)
    through the int8 ONNX Runtime session, against the same model in fp32. Trained on 8,000
    images to keep it near a minute on an idle 2-core machine; the full default run (55,000
    images) is measured in docs/benchmarks.md, "int8 after pruning"."""
    row = run(
        compose_cfg(
            "model=vgg_small",
            "dataset.train_subset=8000",
            "baseline.epochs=2",
            "strategy.retrain.epochs=1",
            "trainer.enable_progress_bar=false",
            "logger=[csv]",
            "measure.latency_batch_sizes=[1]",
            "measure.compare_latency=false",
            "measure.latency_max_time_s=0.5",
            "deploy.quantize=int8",
        )
    )
    m = row["metrics"]
    assert m["deploy/int8_status"] == "ok" and m["deploy/int8_test_images"] == 10_000
    assert m["retrained/acc"] > 0.8, "the model must be trained for the comparison to mean anything"
    assert abs(m["deploy/int8_top1"] - m["retrained/acc"]) <= 0.01
    assert m["deploy/int8_bytes"] < 0.5 * m["deploy/onnx_bytes"]
