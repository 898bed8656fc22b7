"""fedge.edge: merge, ONNX export, int8 quantization, ORT mobile format, bundles and the phone-side runtime.

Imports are lazy so that ``fedge.edge.runtime`` (onnxruntime + numpy only) never pulls in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EdgeModel": "fedge.edge.runtime",
    "BundleError": "fedge.edge.errors",
    "ParityError": "fedge.edge.errors",
    "ExportError": "fedge.edge.errors",
    "read_manifest": "fedge.edge.manifest",
    "build_bundle": "fedge.edge.bundle",
    "BundleInfo": "fedge.edge.bundle",
    "merged_from_adapters": "fedge.edge.bundle",
    "export_onnx": "fedge.edge.export",
    "check_parity": "fedge.edge.export",
    "quantize_bundle": "fedge.edge.pipeline",
    "convert_bundle": "fedge.edge.pipeline",
    "convert_to_ort": "fedge.edge.mobile",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedge.edge' has no attribute {name!r}")
