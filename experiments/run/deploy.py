"""The deploy step that ends every run: fold BatchNorm, export ONNX, verify it in ONNX Runtime, time it.

The final model is folded (``pruning.fold_batchnorm``, exact up to float rounding), exported
with a dynamic batch axis (one file serves batch 1 and N), loaded into ONNX Runtime's CPU
provider and run on a real test batch. Its logits must match the PyTorch model's within
``deploy.max_abs_diff``; only then is ``model.onnx`` written (atomically) into the run's
folder. A model ONNX cannot export, or one whose ONNX output disagrees, is recorded in the
row (``deploy/status``, ``deploy/error``) and costs the run nothing else: the pruning
results are kept.

Row fields (``deploy/...``): ``status`` (``ok``, ``off``, ``export_failed``, ``refused``,
``failed``), ``error``, ``folded_bn``, ``onnx_max_abs_diff``, ``onnx_bytes``,
``ort_latency_ms_b<N>`` for batch 1 and every ``measure.latency_batch_sizes``, ``ort_threads``,
``wall_s``. ``deploy.quantize=int8`` adds the int8 model's fields (``experiments.run.int8``).
"""

from __future__ import annotations

import copy
import io
import logging
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

import pruning
from experiments.checks import ConfigError, check_choice, check_number
from experiments.storage.files import atomic_write_bytes
from experiments.training.context import MeasureSettings

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
DEFAULTS = {
    "onnx": True,
    "fold_bn": True,
    "max_abs_diff": 1e-4,
    "opset": None,
    "quantize": "none",
    "calibration_batches": 8,
}
QUANTIZE = ("none", "int8")


class DeployError(RuntimeError):
    """The deploy step could not ship the model; ``status`` is what the row records."""

    status = "failed"


class OnnxExportError(DeployError):
    """``torch.onnx.export`` cannot export the model (an op without an ONNX equivalent, ...)."""

    status = "export_failed"


class OnnxMismatch(DeployError):
    """ONNX Runtime's output differs from PyTorch's by more than ``deploy.max_abs_diff``: refused."""

    status = "refused"

    def __init__(self, message: str, max_abs_diff: float) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff


@dataclass(frozen=True)
class VerifiedOnnx:
    """An exported model that ONNX Runtime runs and that agrees with PyTorch."""

    data: bytes
    max_abs_diff: float
    folded_bn: int


@dataclass(frozen=True)
class DeploySettings:
    """The deploy step: on or off (``deploy.onnx``), BatchNorm folded first (``fold_bn``), the
    largest accepted |ONNX - PyTorch| of the logits (``max_abs_diff``), the ONNX ``opset`` (None:
    the exporter's default); ONNX Runtime is timed at batch 1 and each of ``batch_sizes``
    (``measure.latency_batch_sizes``), ``repeats`` times (``measure.latency_repeats``).
    ``quantize``: ``none`` or ``int8`` (ONNX Runtime static quantization of ``model.onnx``,
    calibrated on ``calibration_batches`` training batches)."""

    onnx: bool = True
    fold_bn: bool = True
    max_abs_diff: float = 1e-4
    opset: int | None = None
    quantize: str = "none"
    calibration_batches: int = 8
    batch_sizes: tuple[int, ...] = (1, 64)
    repeats: int = 20

    @classmethod
    def from_config(cls, cfg: DictConfig) -> DeploySettings:
        """Read and check ``deploy.*``, naming the key; :data:`DEFAULTS` for keys a config lacks
        (configs composed before the block existed)."""
        block = cfg.get("deploy") or {}
        unknown = sorted(set(block) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"deploy.{unknown[0]}: unknown key; the deploy keys are {', '.join(DEFAULTS)}")
        values = {k: block.get(k, v) for k, v in DEFAULTS.items()}
        for key in ("onnx", "fold_bn"):
            if not isinstance(values[key], bool):
                raise ConfigError(f"deploy.{key}={values[key]!r}: must be true or false")
        diff = values["max_abs_diff"]
        check_number(
            "deploy.max_abs_diff",
            diff,
            0,
            low_open=True,
            suffix=" (the largest accepted |ONNX - PyTorch| of the logits)",
        )
        opset = values["opset"]
        if opset is not None:
            check_number("deploy.opset", opset, 7, integer=True, suffix=", or null (the exporter's default)")
        quantize = check_choice("deploy.quantize", values["quantize"], QUANTIZE)
        if quantize != "none" and not values["onnx"]:
            raise ConfigError(
                f"deploy.quantize={quantize} needs deploy.onnx=true: it quantizes the exported model.onnx"
            )
        calibration = values["calibration_batches"]
        check_number("deploy.calibration_batches", calibration, 1, integer=True, suffix=" (training batches)")
        measure = MeasureSettings.from_config(cfg)
        return cls(
            onnx=values["onnx"],
            fold_bn=values["fold_bn"],
            max_abs_diff=float(diff),
            opset=opset,
            quantize=quantize,
            calibration_batches=int(calibration),
            batch_sizes=measure.latency_batch_sizes,
            repeats=measure.latency_repeats,
        )


def export_verified_onnx(
    model: nn.Module,
    batch: torch.Tensor,
    *,
    fold_bn: bool = True,
    max_abs_diff: float = 1e-4,
    opset: int | None = None,
    threads: int | None = None,
) -> VerifiedOnnx:
    """Fold (optionally) and export ``model`` with a dynamic batch axis; run the file in ONNX Runtime
    on ``batch`` and on its first sample, and compare with ``model``'s own eval-mode logits.

    Raises :class:`OnnxExportError` when export fails and :class:`OnnxMismatch` when the largest
    absolute difference exceeds ``max_abs_diff``. ``model`` is not changed (a CPU copy is exported).
    """
    model = copy.deepcopy(model).cpu().eval()
    batch = batch.detach().cpu().float()
    folded_bn = 0
    shipped = model
    if fold_bn:
        try:
            folded_bn = len(pruning.fold.foldable_pairs(model, batch))
            shipped = pruning.fold_batchnorm(model, batch)
        except (RuntimeError, ValueError) as err:
            raise DeployError(
                f"deploy: folding BatchNorm failed ({type(err).__name__}: {_first_line(err)}); "
                "set deploy.fold_bn=false to export the model unfolded"
            ) from err
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():  # the tracer's notes and the legacy exporter's notice: checked below
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            _export(shipped, batch[:2], buffer, opset)  # traced at 2, not 1: no size-1 special cases baked in
    except Exception as err:  # the exporter raises many types (UnsupportedOperatorError, RuntimeError, ...)
        raise OnnxExportError(
            f"deploy: ONNX cannot export this model ({type(err).__name__}: {_first_line(err)}). The run's "
            "other results are kept; set deploy.onnx=false to skip the deploy step, or make the op exportable "
            "(torch.onnx.register_custom_op_symbolic)"
        ) from err
    data = buffer.getvalue()
    session = ort_session(data, threads)
    diffs = []
    with torch.inference_mode():
        for x in (batch, batch[:1]):
            want = model(x)
            (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
            diffs.append(float((torch.from_numpy(got) - want).abs().max()))
    diff = float("nan") if any(d != d for d in diffs) else max(diffs)
    if not diff <= max_abs_diff:  # NaN refuses too
        raise OnnxMismatch(
            f"deploy: ONNX Runtime's logits differ from PyTorch's by {diff:.3g} (max abs diff), above "
            f"deploy.max_abs_diff={max_abs_diff:g}: model.onnx refused and not written. Raise deploy.max_abs_diff "
            "if that difference is acceptable, or try deploy.fold_bn=false to see whether folding causes it",
            diff,
        )
    return VerifiedOnnx(data=data, max_abs_diff=diff, folded_bn=folded_bn)


def _export(model: nn.Module, x: torch.Tensor, buffer: io.BytesIO, opset: int | None) -> None:
    """TorchScript-based export (``dynamo=False``: no onnxscript needed), batch axis dynamic."""
    torch.onnx.export(
        model,
        (x,),
        buffer,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )


def ort_session(data: bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of the model ``data``, with ``threads`` intra-op threads
    (None: torch's current thread count, so PyTorch and ORT latencies are comparable)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def ort_latency_ms(session: Any, example: torch.Tensor, batch_size: int, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of one ONNX Runtime call at ``batch_size`` (``example``'s first sample repeated)."""
    x = example[:1].detach().cpu().float()
    x = x.expand(batch_size, *x.shape[1:]).contiguous().numpy()
    feed = {INPUT_NAME: x}
    for _ in range(warmup):
        session.run([OUTPUT_NAME], feed)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        session.run([OUTPUT_NAME], feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def deploy(model: nn.Module, batch: torch.Tensor, settings: DeploySettings, output_dir: Path) -> dict[str, Any]:
    """Run the deploy step on the final ``model``; returns the row's ``deploy/...`` fields.

    Never raises for a model that cannot be deployed: the reason is in ``deploy/status`` and
    ``deploy/error`` (and the log), and ``model.onnx`` is only written once verified.
    """
    if not settings.onnx:
        return {"deploy/status": "off"}
    start = time.perf_counter()
    path = Path(output_dir) / ONNX_FILE
    threads = torch.get_num_threads()
    out: dict[str, Any] = {"deploy/ort_threads": threads}
    try:
        shipped = export_verified_onnx(
            model,
            batch,
            fold_bn=settings.fold_bn,
            max_abs_diff=settings.max_abs_diff,
            opset=settings.opset,
            threads=threads,
        )
        out.update(
            {
                "deploy/folded_bn": shipped.folded_bn,
                "deploy/onnx_max_abs_diff": shipped.max_abs_diff,
                "deploy/onnx_bytes": len(shipped.data),
            }
        )
        session = ort_session(shipped.data, threads)
        for b in sorted({1, *settings.batch_sizes}):
            out[f"deploy/ort_latency_ms_b{b}"] = ort_latency_ms(session, batch, int(b), settings.repeats)
        atomic_write_bytes(path, shipped.data)
        out["deploy/status"] = "ok"
    except Exception as err:  # noqa: BLE001 - a model that cannot ship must not lose the run's results
        error = err if isinstance(err, DeployError) else DeployError(_unexpected(err))
        if isinstance(err, OnnxMismatch):
            out["deploy/onnx_max_abs_diff"] = err.max_abs_diff
        path.unlink(missing_ok=True)  # never leave an unverified or stale model.onnx behind
        out.update({"deploy/status": error.status, "deploy/error": str(error)})
        log.error("%s", error, exc_info=not isinstance(err, DeployError))
    out["deploy/wall_s"] = time.perf_counter() - start
    return out


def real_batch(datamodule: Any, limit: int = 256) -> torch.Tensor:
    """The first images of the test split (at most ``limit``): the real batch ONNX is checked on."""
    x, _ = next(iter(datamodule.test_dataloader()))
    return x[:limit]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"


def _unexpected(err: BaseException) -> str:
    return f"deploy: {type(err).__name__}: {_first_line(err)} (set deploy.onnx=false to skip the deploy step)"
