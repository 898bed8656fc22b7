"""Phone format: ONNX -> ORT format (``.ort``), ORT Mobile usability check, reduced-operator config.

Wraps ``onnxruntime.tools.convert_onnx_models_to_ort`` (the same code as
``python -m onnxruntime.tools.convert_onnx_models_to_ort``) and the mobile usability checker
(``python -m onnxruntime.tools.check_onnx_model_mobile_usability``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort
from onnxruntime.tools.reduced_build_config_parser import parse_config

from fedge.edge.errors import ExportError, ParityError
from fedge.edge.export import compare, ort_session, run_onnx


def convert_to_ort(onnx_path: str | Path, out_dir: str | Path, target_platform: str | None = "arm"
                   ) -> dict[str, Path]:
    """Convert one ONNX file to ``<stem>.ort`` plus ``<stem>.required_operators.config`` in ``out_dir``.

    Uses the 'Fixed' optimization style (optimizations baked in; the right one for the CPU EP on a phone);
    ``target_platform`` 'arm' (phones) or 'amd64' picks the platform-specific fusions that get baked in.
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        shutil.copy(onnx_path, src / onnx_path.name)
        dst = Path(tmp) / "out"
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                convert_onnx_models_to_ort(src, output_dir=dst, optimization_styles=[OptimizationStyle.Fixed],
                                           target_platform=target_platform)
        except Exception as e:
            raise ExportError(f"ORT-format conversion of {onnx_path.name} failed: {e}") from e
        ort_files = list(dst.rglob("*.ort"))
        configs = list(dst.rglob("*.config"))
        if len(ort_files) != 1 or not configs:
            raise ExportError(f"ORT-format conversion of {onnx_path.name} produced {ort_files} and {configs}")
        out = {"ort": out_dir / f"{onnx_path.stem}.ort",
               "config": out_dir / f"{onnx_path.stem}.required_operators.config"}
        shutil.copy(ort_files[0], out["ort"])
        shutil.copy(configs[0], out["config"])
    return out


def required_operators(config_path: str | Path) -> dict[str, dict[int, list[str]]]:
    """Parse a reduced-build config into ``{domain: {opset: [ops]}}`` with ORT's own parser."""
    required_ops, _ = parse_config(str(config_path))
    return {domain: {int(v): sorted(ops) for v, ops in versions.items()} for domain, versions in required_ops.items()}


def mobile_usability(onnx_path: str | Path) -> dict[str, Any]:
    """Run ORT's mobile usability checker; returns its verdict and log lines (NNAPI / CoreML partitioning).

    Every operator is usable by the ORT Mobile CPU EP when :func:`convert_to_ort` succeeded and the
    ``.ort`` model loads (checked by :func:`check_ort`); this adds whether NNAPI/CoreML could take it.
    """
    from onnxruntime.tools.mobile_helpers.usability_checker import analyze_model

    logger = logging.getLogger("fedge.edge.usability")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        try_eps = bool(analyze_model(Path(onnx_path), skip_optimize=False, logger=logger))
    finally:
        logger.removeHandler(handler)
    lines = [ln for ln in stream.getvalue().splitlines() if "should perform well" in ln or "Unsupported ops" in ln]
    return {"nnapi_or_coreml_may_help": try_eps, "summary": lines}


def check_ort(ort_path: str | Path, onnx_path: str | Path, x: np.ndarray, atol: float = 1e-4) -> dict[str, float]:
    """Load the ``.ort`` file, run it on ``x`` and compare with the ONNX model it came from."""
    ref = run_onnx(ort_session(onnx_path), x)
    got = run_onnx(ort_session(ort_path), x)
    report = compare(ref, got)
    if report["max_abs_diff"] > atol or report["top1_agreement"] < 1.0:
        raise ParityError(f"{Path(ort_path).name} differs from {Path(onnx_path).name}: {report}")
    return report
