"""Bundle-level steps after export: calibrated int8 quantization and ORT-format conversion.

Each step writes its files into the bundle and records what it measured in the manifest.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedge.edge.errors import BundleError
from fedge.edge.export import compare, ort_session, run_onnx
from fedge.edge.manifest import read_manifest, register_file, write_manifest
from fedge.edge.quantize import METHODS, op_histogram, quantize
from fedge.metrics import compute_metrics


def task_score(logits: np.ndarray, labels: np.ndarray, multilabel: bool) -> tuple[str, float]:
    """The headline metric of a task in points: macro AP (multi-label, as FLAIR) or top-1 accuracy."""
    m = compute_metrics(logits, labels, multilabel)
    key = "macro_ap" if multilabel else "accuracy"
    return key, 100.0 * m[key]


def quantize_bundle(
    bundle: str | Path,
    calibration: np.ndarray,
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    methods: Sequence[str] = tuple(METHODS),
    per_channel: bool = True,
    activation_type: str = "uint8",
) -> dict[str, Any]:
    """Quantize the bundle's fp32 model with each calibration method, keep the best on ``val``,
    and report its score against the float twin on ``test`` plus sizes. Writes ``model.int8.onnx``."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    fp32 = bundle / manifest["files"]["fp32"]["path"]
    multilabel = bool(manifest["multilabel"])
    keep = [p["name"] for p in manifest.get("adaptable", [])]
    fp_sess = ort_session(fp32)
    metric, fp_val = task_score(run_onnx(fp_sess, val[0]), val[1], multilabel)
    candidates: dict[str, dict[str, float]] = {}
    best: str | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            path = Path(tmp) / f"{method}.onnx"
            quantize(fp32, path, calibration, method=method, per_channel=per_channel,
                     activation_type=activation_type, keep_float=keep)
            _, score = task_score(run_onnx(ort_session(path), val[0]), val[1], multilabel)
            candidates[method] = {f"val_{metric}": score, f"val_{metric}_drop": fp_val - score}
            if best is None or score > candidates[best][f"val_{metric}"]:
                best = method
        if best is None:
            raise BundleError("no calibration method given")
        shutil.copy(Path(tmp) / f"{best}.onnx", bundle / "model.int8.onnx")
    int8 = bundle / "model.int8.onnx"
    fp_logits, q_logits = run_onnx(fp_sess, test[0]), run_onnx(ort_session(int8), test[0])
    _, fp_test = task_score(fp_logits, test[1], multilabel)
    _, q_test = task_score(q_logits, test[1], multilabel)
    report = {
        "method": best, "format": "QDQ", "per_channel": per_channel, "weights": "int8",
        "activations": activation_type, "calibration_samples": int(len(calibration)),
        "candidates": candidates, "metric": metric,
        f"fp32_test_{metric}": fp_test, f"int8_test_{metric}": q_test, "drop_points": fp_test - q_test,
        "test_examples": int(len(test[0])),
        "agreement_with_fp32": compare(fp_logits, q_logits),
        "fp32_bytes": fp32.stat().st_size, "int8_bytes": int8.stat().st_size,
        "size_ratio": int8.stat().st_size / fp32.stat().st_size,
        "int8_ops": op_histogram(int8),
    }
    ref_path = bundle / manifest["files"]["reference"]["path"]
    ref = dict(np.load(ref_path))
    ref["int8_logits"] = run_onnx(ort_session(int8), ref["inputs"])
    np.savez(ref_path, **ref)
    register_file(bundle, manifest, "reference", ref_path.name)
    manifest["models"]["int8"] = "model.int8.onnx"
    manifest["quantization"] = report
    register_file(bundle, manifest, "int8", "model.int8.onnx")
    write_manifest(bundle, manifest)
    return report


def convert_bundle(bundle: str | Path, usability: bool = True, target_platform: str | None = "arm"
                   ) -> dict[str, Any]:
    """Convert every ONNX model of the bundle to ``.ort``, check each loads and matches its source,
    write the merged reduced-operator config, and record the ORT Mobile usability verdict."""
    from fedge.edge.mobile import check_ort, convert_to_ort, mobile_usability, required_operators

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    ref = np.load(bundle / manifest["files"]["reference"]["path"])["inputs"]
    report: dict[str, Any] = {}
    ops: dict[str, dict[int, set[str]]] = {}
    for variant in [v for v in ("fp32", "int8") if v in manifest["files"]]:
        src = bundle / manifest["files"][variant]["path"]
        out = convert_to_ort(src, bundle, target_platform)
        # int8 outputs may differ from their ONNX twin only by ORT-format fusions; same tolerance as parity
        parity = check_ort(out["ort"], src, ref, atol=1e-4 if variant == "fp32" else 1e-2)
        for domain, versions in required_operators(out["config"]).items():
            for version, names in versions.items():
                ops.setdefault(domain, {}).setdefault(version, set()).update(names)
        out["config"].unlink()
        register_file(bundle, manifest, f"{variant}_ort", out["ort"].name)
        manifest["models"][f"{variant}_ort"] = out["ort"].name
        entry: dict[str, Any] = {"file": out["ort"].name, "bytes": out["ort"].stat().st_size,
                                 "parity_vs_onnx": parity}
        if usability:
            entry["mobile_usability"] = mobile_usability(src)
        report[variant] = entry
    lines = [f"{d};{v};{','.join(sorted(n))}" for d, vs in sorted(ops.items()) for v, n in sorted(vs.items())]
    config = bundle / "required_operators.config"
    config.write_text("# reduced-operator config for a custom ORT Mobile build (--include_ops_by_config)\n"
                      + "\n".join(lines) + "\n")
    register_file(bundle, manifest, "operators_config", config.name)
    report["required_operators"] = {d: {str(v): sorted(n) for v, n in vs.items()} for d, vs in ops.items()}
    report["target_platform"] = target_platform
    manifest["mobile"] = report
    write_manifest(bundle, manifest)
    return report
