"""Static int8 post-training quantization with ONNX Runtime's own tooling (QDQ, per-channel, calibrated).

A thin wrapper: ``quant_pre_process`` (shape inference + graph optimization), then ``quantize_static`` with a
:class:`CalibrationDataReader` over real samples. The calibration method is chosen by measurement: each
candidate is quantized and scored on a validation split, and the best is kept.

Two choices come from measurement on this CPU (see docs/edge.md): activations are ``QUInt8`` (x86 kernels
run u8 x s8; s8 x s8 QDQ falls back to slow paths, 3x slower than fp32 here), and normalization ops
(InstanceNormalization from GroupNorm, LayerNormalization) stay float: ORT has no int8 kernel for them, and
their affine inputs are the adaptable parameters a device must be able to overwrite with float values.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
from onnxruntime.quantization.registry import QDQRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process

from fedge.edge.errors import ExportError
from fedge.edge.export import INPUT_NAME

METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
FLOAT_OPS = ("InstanceNormalization", "LayerNormalization", "BatchNormalization")
OP_TYPES = tuple(sorted(set(QDQRegistry) - set(FLOAT_OPS)))


class ArrayCalibrationReader(CalibrationDataReader):
    """Feeds ``samples`` (float32 NCHW) to the calibrator in batches of ``batch``."""

    def __init__(self, samples: np.ndarray, batch: int = 32, input_name: str = INPUT_NAME) -> None:
        self.samples = np.ascontiguousarray(samples, dtype=np.float32)
        self.batch, self.input_name = batch, input_name
        self._it: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.samples), self.batch):
            yield {self.input_name: self.samples[i:i + self.batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def preprocess(fp32_path: str | Path, out_path: str | Path) -> Path:
    """ORT's quantization pre-processing (symbolic shape inference + optimization)."""
    quant_pre_process(str(fp32_path), str(out_path))
    return Path(out_path)


def quantize(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: np.ndarray,
    *,
    method: str = "minmax",
    per_channel: bool = True,
    activation_type: str = "uint8",
    keep_float: Sequence[str] = (),
) -> Path:
    """Quantize ``fp32_path`` into ``out_path`` (QDQ, int8 weights) calibrated on ``calibration``.

    ``keep_float`` names graph tensors (the adaptable affines) whose consumers must stay float; a model
    where one of them was quantized anyway raises :class:`ExportError`.
    """
    if method not in METHODS:
        raise ExportError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    if activation_type not in ACTIVATION_TYPES:
        raise ExportError(f"activation type {activation_type!r}: use uint8 (x86) or int8 (ARM)")
    ort.set_default_logger_severity(3)
    with tempfile.TemporaryDirectory() as tmp:
        pre = preprocess(fp32_path, Path(tmp) / "pre.onnx")
        model = onnx.load(str(pre))
        keep = set(keep_float)
        exclude = [n.name for n in model.graph.node if keep & set(n.input)]
        extra: dict[str, Any] = {}
        if method == "percentile":
            extra["CalibPercentile"] = 99.99
        cache = None
        reader: ArrayCalibrationReader | None = None
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress to stdout
            if method == "entropy":
                cache = _entropy_cache(pre, ArrayCalibrationReader(calibration), Path(tmp))
            else:
                reader = ArrayCalibrationReader(calibration)
            quantize_static(
                str(pre), str(out_path), reader, calibration_cache_path=cache,
                quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=ACTIVATION_TYPES[activation_type], weight_type=QuantType.QInt8,
                calibrate_method=METHODS[method], op_types_to_quantize=list(OP_TYPES),
                nodes_to_exclude=exclude, extra_options=extra,
            )
    _check_float_inputs(Path(out_path), keep)
    return Path(out_path)


def _entropy_cache(model: Path, reader: ArrayCalibrationReader, tmp: Path) -> Path:
    """Entropy (KL) ranges with TensorRT's 2048 histogram bins, saved as ORT's calibration cache.

    ``quantize_static`` builds its entropy calibrator with 128 bins and 128 quantized bins, which leaves one
    candidate threshold: the full range, i.e. MinMax (measured: identical scales). ``num_bins`` is not among
    the options it forwards, so the calibrator is built here with ORT's own ``create_calibrator``.
    """
    calibrator = create_calibrator(model, list(OP_TYPES), augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.Entropy,
                                   extra_options={"num_bins": 2048, "num_quantized_bins": 128})
    calibrator.collect_data(reader)
    path = tmp / "entropy_cache.json"
    save_tensors_data(calibrator.compute_data(), path)
    return path


def _check_float_inputs(path: Path, keep: set[str]) -> None:
    """Every adaptable affine must still be a float graph input with a float initializer."""
    model = onnx.load(str(path))
    inputs = {i.name for i in model.graph.input}
    inits = {i.name: i.data_type for i in model.graph.initializer}
    bad = [n for n in keep if n not in inputs or inits.get(n) != onnx.TensorProto.FLOAT]
    if bad:
        raise ExportError(f"quantization turned adaptable parameters {bad[:4]} into constants or int8")


def op_histogram(path: str | Path) -> dict[str, int]:
    """Count of each op type in an ONNX file (evidence for what was and was not quantized)."""
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
