"""int8 after pruning, measured: ONNX Runtime static quantization of the shipped ``model.onnx``.

With ``deploy.quantize=int8`` the deploy step's verified, folded fp32 model is quantized by
ONNX Runtime (``quantize_static``: QDQ format, per-channel int8 weights in a 7-bit range,
uint8 activations whose ranges come from ``deploy.calibration_batches`` training batches), then:

- the whole test split runs through the int8 ONNX Runtime session (``int8_top1``: measured,
  not estimated);
- the dense fp32 model, the pruned fp32 model and the pruned int8 model, all three in ONNX
  Runtime, are timed interleaved (rotating order, each round one sample of each) at batch 1,
  every ``measure.latency_batch_sizes`` and the test split's batch, until the 95% interval of
  int8 / fp32 is within ``measure.latency_ci`` or ``measure.latency_max_time_s`` passed; each
  ratio is the median of the per-round ratios, so load shifts both sides alike;
- ``model.int8.onnx`` is written (atomically) beside ``model.onnx``.

A model that cannot be quantized keeps its ok row: ``deploy/int8_status`` says ``skipped`` (no
verified ``model.onnx``), ``unquantized`` (ONNX Runtime found no weight it quantizes) or
``failed``, and ``deploy/int8_error`` why.

Row fields (``deploy/...``): ``int8_status``, ``int8_error``, ``int8_top1``, ``int8_test_images``,
``int8_bytes``, ``dense_onnx_bytes``, ``int8_quantized_weights``, ``int8_calibration_images``,
``int8_wall_s``; per batch N ``int8/b<N>/dense_ms``, ``fp32_ms``, ``int8_ms`` (medians per
call), ``ratio`` (int8 / fp32) with ``ci_low``/``ci_high``, ``fp32_vs_dense``,
``int8_vs_dense``, ``rounds``, ``converged``.
"""

from __future__ import annotations

import logging
import math
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from experiments.run.deploy import (
    INPUT_NAME,
    ONNX_FILE,
    OUTPUT_NAME,
    DeployError,
    DeploySettings,
    export_verified_onnx,
    ort_session,
)
from experiments.run.latency import LatencySettings
from experiments.storage.files import atomic_write_bytes
from pruning.latency.comparison import ratio_interval

log = logging.getLogger(__name__)

INT8_FILE = "model.int8.onnx"
CALIBRATION_CHUNK = 64  # images per calibration call: min/max ranges do not depend on it, the memory does
SAMPLE_S = 0.002  # one timed sample repeats a call until it lasts about this long (tiny models are not timer noise)


class NoVerifiedOnnx(DeployError):
    """The deploy step wrote no ``model.onnx`` (export failed or refused): nothing to quantize."""

    status = "skipped"


class NothingToQuantize(DeployError):
    """ONNX Runtime's quantizer left every weight in fp32 (no Conv, MatMul or Gemm it handles)."""

    status = "unquantized"


def quantize_int8(data: bytes, calibration: torch.Tensor) -> bytes:
    """The int8 QDQ model of the fp32 ONNX ``data``: per-channel int8 weights, uint8 activations
    whose ranges (min/max) are those of ``calibration`` (images, first axis the batch).

    Weights use 7 of their 8 bits (``reduce_range``): on x86 CPUs without VNNI (AVX2 only) ONNX
    Runtime's uint8 x int8 kernels add pairs of products in int16, which full-range weights
    overflow; on this machine's AMD EPYC (AVX2) that cost one logit of a small test net 0.13
    (of 0.48), against 0.008 with 7-bit weights."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    chunks = torch.split(calibration.detach().cpu().float(), CALIBRATION_CHUNK)

    class Batches(CalibrationDataReader):  # read one chunk at a time (CalibStridedMinMax: ranges merged)
        def __init__(self) -> None:
            self.todo: list[torch.Tensor] = []

        def __len__(self) -> int:
            return len(chunks)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.todo = list(chunks[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return {INPUT_NAME: self.todo.pop(0).numpy()} if self.todo else None

    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        fp32, prepared, out = (Path(tmp) / n for n in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        fp32.write_bytes(data)
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # shapes known to every node
        quantize_static(
            str(prepared),
            str(out),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,  # 7-bit weights: see the docstring
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            extra_options={"CalibStridedMinMax": 1},  # ranges merged chunk by chunk: memory of one chunk
        )
        return out.read_bytes()


def quantized_weights(data: bytes) -> int:
    """How many weight tensors of the ONNX model ``data`` are stored as 8-bit integers."""
    import onnx

    graph = onnx.load_from_string(data).graph
    int8 = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    small = {i.name for i in graph.initializer if i.data_type in int8 and len(i.dims) >= 2}
    return sum(1 for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in small)


def ort_top1(session: Any, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, int]:
    """Top-1 accuracy of an ONNX Runtime ``session`` over ``batches`` of (images, labels), and the image count."""
    correct = total = 0
    for x, y in batches:
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().cpu().float().numpy()})
        correct += int((torch.from_numpy(logits).argmax(1) == y.cpu()).sum())
        total += len(y)
    if total == 0:
        raise DeployError("deploy: the test split is empty: int8 accuracy cannot be measured")
    return correct / total, total


def interleaved_ort_latency(
    sessions: dict[str, Any],
    example: torch.Tensor,
    batch_size: int,
    *,
    reference: str,
    subject: str,
    ci: float = 0.03,
    max_time_s: float = 10.0,
    min_rounds: int = 10,
    warmup: int = 3,
) -> dict[str, Any]:
    """Time ONNX Runtime ``sessions`` interleaved at ``batch_size`` (``example``'s first image repeated).

    Each round times every session once, in an order that rotates and reverses from round to
    round; a sample repeats the call until it lasts about 2 ms (the same count for all). Stops
    once the 95% interval of ``subject`` / ``reference`` is within ``+-ci`` (after
    ``min_rounds``) or ``max_time_s`` passed. Returns each session's median ms (``<name>_ms``),
    ``ratio`` (median of per-round ``subject / reference``) with ``ci_low``/``ci_high``,
    ``<name>_vs_<first>`` for every other session against the first, ``rounds``, ``converged``.
    """
    x = example[:1].detach().cpu().float()
    feed = {INPUT_NAME: x.expand(batch_size, *x.shape[1:]).contiguous().numpy()}
    names = list(sessions)

    def timed(name: str, inner: int) -> float:
        run = sessions[name].run
        start = time.perf_counter()
        for _ in range(inner):
            run([OUTPUT_NAME], feed)
        return (time.perf_counter() - start) / inner

    for name in names:
        timed(name, max(1, warmup))
    once = min(timed(name, 1) for name in names)
    inner = max(1, min(1000, math.ceil(SAMPLE_S / max(once, 1e-9))))
    times: dict[str, list[float]] = {n: [] for n in names}
    logs: list[float] = []
    converged = False
    deadline = time.perf_counter() + max_time_s
    while True:
        k = len(logs)
        order = names[k % len(names) :] + names[: k % len(names)]
        for name in reversed(order) if (k // len(names)) % 2 else order:
            times[name].append(timed(name, inner))
        logs.append(math.log(times[subject][-1] / max(times[reference][-1], 1e-12)))
        mid, lo, hi, converged = ratio_interval(logs, ci, min_rounds)
        if converged:
            break
        if time.perf_counter() > deadline:
            break
    out: dict[str, Any] = {f"{n}_ms": statistics.median(t) * 1e3 for n, t in times.items()}
    out.update({"ratio": math.exp(mid), "ci_low": math.exp(lo), "ci_high": math.exp(hi)})
    for name in names[1:]:
        out[f"{name}_vs_{names[0]}"] = statistics.median(a / b for a, b in zip(times[name], times[names[0]]))
    return out | {"rounds": len(logs), "converged": converged}


def deploy_int8(
    dense: nn.Module,
    batch: torch.Tensor,
    calibration: torch.Tensor,
    test_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    settings: DeploySettings,
    timing: LatencySettings,
    output_dir: Path,
    batch_sizes: Sequence[int] = (),
) -> dict[str, Any]:
    """Quantize the run's verified ``model.onnx`` in ``output_dir``, measure its test top-1, size and
    latency against the fp32 model and the ``dense`` baseline (exported here the same way), and
    write ``model.int8.onnx``. Returns the row's ``deploy/int8...`` fields; never raises for a
    model that cannot be quantized (the reason is in ``deploy/int8_status`` and ``_error``).

    Timed at batch 1, ``settings.batch_sizes`` and ``batch_sizes`` (the test split's batch)."""
    start = time.perf_counter()
    output_dir = Path(output_dir)
    path = output_dir / INT8_FILE
    out: dict[str, Any] = {}
    try:
        fp32_path = output_dir / ONNX_FILE
        if not fp32_path.exists():
            raise NoVerifiedOnnx("deploy: no verified model.onnx to quantize (deploy/status and deploy/error say why)")
        fp32 = fp32_path.read_bytes()
        data = quantize_int8(fp32, calibration)
        out["deploy/int8_calibration_images"] = len(calibration)
        out["deploy/int8_quantized_weights"] = quantized_weights(data)
        if out["deploy/int8_quantized_weights"] == 0:
            raise NothingToQuantize(
                "deploy: ONNX Runtime quantized no weight of this model (it quantizes Conv, MatMul and Gemm): "
                "model.int8.onnx not written; set deploy.quantize=none"
            )
        threads = torch.get_num_threads()
        sessions = {"fp32": ort_session(fp32, threads), "int8": ort_session(data, threads)}
        out["deploy/int8_top1"], out["deploy/int8_test_images"] = ort_top1(sessions["int8"], test_batches)
        out["deploy/int8_bytes"] = len(data)
        try:  # the dense side of the table; without it int8 is still timed against fp32
            dense_onnx = export_verified_onnx(
                dense, batch, fold_bn=settings.fold_bn, max_abs_diff=settings.max_abs_diff, opset=settings.opset
            ).data
            out["deploy/dense_onnx_bytes"] = len(dense_onnx)
            sessions = {"dense": ort_session(dense_onnx, threads), **sessions}
        except DeployError as err:
            out["deploy/int8_dense_error"] = str(err)
        for b in sorted({1, *settings.batch_sizes, *batch_sizes}):
            timed = interleaved_ort_latency(
                sessions, batch, int(b), reference="fp32", subject="int8", ci=timing.ci, max_time_s=timing.max_time_s
            )
            out.update({f"deploy/int8/b{b}/{k}": v for k, v in timed.items()})
        atomic_write_bytes(path, data)
        out["deploy/int8_status"] = "ok"
    except Exception as err:  # noqa: BLE001 - a model that cannot be quantized keeps the run's results
        error = err if isinstance(err, DeployError) else DeployError(_unexpected(err))
        path.unlink(missing_ok=True)  # never a stale int8 model beside a new model.onnx
        out.update({"deploy/int8_status": error.status, "deploy/int8_error": str(error)})
        log.error("%s", error, exc_info=not isinstance(err, DeployError))
    out["deploy/int8_wall_s"] = time.perf_counter() - start
    return out


def _unexpected(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else "no message"
    return f"deploy: int8 quantization failed ({type(err).__name__}: {first}); set deploy.quantize=none to skip it"
