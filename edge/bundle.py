"""Build an edge bundle: merged model -> ONNX -> parity check -> manifest (+ reference outputs).

Layout of a bundle directory::

    model.onnx            fp32, dynamic batch, norm affines as overridable initializers (adaptable)
    model.int8.onnx       after `fed-edge quantize` (QDQ, static, calibrated)
    *.ort, *.config       after `fed-edge convert` (ORT format + reduced-operator config)
    reference.npz         a few real inputs and the fp32 outputs on x86 (runtime self-test, ARM64 check)
    manifest.json         input/outputs, preprocessing, labels, hashes, opset, sizes, adaptable params
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from fedge.edge.export import (
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAME,
    check_parity,
    export_onnx,
    ort_session,
    run_onnx,
)
from fedge.edge.manifest import new_manifest, register_file, write_manifest

REFERENCE_NAME = "reference.npz"
N_REFERENCE = 16


@dataclass(frozen=True)
class BundleInfo:
    """Metadata that travels in the manifest (labels, task, provenance, preprocessing)."""

    labels: Sequence[str]
    multilabel: bool
    arch: str = "custom"
    backbone_hash: str = ""
    adapter_hash: str = ""
    adapter_specs: Sequence[dict[str, Any]] = ()
    task: str = ""
    # the runtime maps raw pixels p to (p * scale - mean) / std per channel; the default task feeds [0,1] floats
    preprocessing: dict[str, Any] = field(
        default_factory=lambda: {"layout": "NCHW", "scale": 1.0, "mean": [0.0], "std": [1.0],
                                 "uint8_scale": 1.0 / 255.0}
    )


def tensor_hash(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over sorted names, dtypes, shapes and bytes of a tensor mapping (e.g. an adapter state)."""
    from fedge.adapters import tensors_hash

    return tensors_hash(tensors)


def build_bundle(
    model: nn.Module,
    out: str | Path,
    inputs: np.ndarray,
    info: BundleInfo,
    *,
    adaptable: bool = True,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Export ``model`` (a plain, merged nn.Module) into bundle ``out`` and check parity on ``inputs``.

    ``inputs`` are real preprocessed examples (float32 NCHW); all of them are used for the parity check,
    the first 16 are stored with their outputs as the bundle's reference. Returns the manifest.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    model = model.eval()
    result = export_onnx(model, torch.from_numpy(inputs[:2]), out / "model.onnx", adaptable=adaptable, opset=opset)
    parity = check_parity(model, result.path, inputs, atol=atol)
    ref_x = inputs[:N_REFERENCE]
    ref_y = run_onnx(ort_session(result.path), ref_x)
    np.savez(out / REFERENCE_NAME, inputs=ref_x, fp32_logits=ref_y)
    manifest = new_manifest(
        created_with={"torch": torch.__version__, "onnxruntime": ort.__version__,
                      "machine": platform.machine(), "exporter": "torch.onnx.export(dynamo=True)"},
        arch=info.arch,
        task=info.task,
        input={"name": INPUT_NAME, "shape": [None, *inputs.shape[1:]], "dtype": "float32"},
        outputs=[{"name": OUTPUT_NAME, "shape": [None, len(info.labels)], "dtype": "float32",
                  "activation": "sigmoid" if info.multilabel else "softmax"}],
        preprocessing=dict(info.preprocessing),
        labels=list(info.labels),
        multilabel=info.multilabel,
        backbone_hash=info.backbone_hash,
        adapter_hash=info.adapter_hash,
        adapter_specs=list(info.adapter_specs),
        opset=result.opset,
        adaptable=list(result.adaptable),
        parity={"fp32": parity},
        models={"fp32": "model.onnx"},
    )
    register_file(out, manifest, "fp32", "model.onnx")
    register_file(out, manifest, "reference", REFERENCE_NAME)
    write_manifest(out, manifest)
    return manifest


def merged_from_adapters(
    arch: str,
    backbone: str | Path | None,
    adapter: str | Path | None,
    num_classes: int = 10,
    in_chans: int = 1,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build ``arch``, load the backbone weights and the adapter state, and merge: the model to export.

    Returns ``(plain_model, provenance)`` with the backbone hash, adapter hash, specs and head shape.
    """
    from fedge.adapters import AdapterState, backbone_hash, inject, load_adapter_state, merge
    from fedge.models import create_model, load_pretrained

    model = create_model(arch, num_classes=num_classes, in_chans=in_chans)
    if backbone is not None:
        load_pretrained(model, backbone)
    prov: dict[str, Any] = {"arch": arch, "backbone_hash": backbone_hash(model), "adapter_hash": "",
                            "adapter_specs": [], "multilabel": None, "num_classes": num_classes}
    if adapter is None:
        return model.eval(), prov
    state = AdapterState.load(adapter)
    inject(model, state.specs)
    load_adapter_state(model, state)  # raises AdapterMismatchError for a foreign backbone
    heads = [s for s in state.specs if s.kind == "head"]
    prov.update(adapter_hash=tensor_hash(dict(state)), adapter_specs=[s.to_dict() for s in state.specs],
                multilabel=heads[0].multilabel if heads else None,
                num_classes=heads[0].num_classes if heads else num_classes)
    return merge(model).eval(), prov
