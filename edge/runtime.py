"""The phone-side runtime: load a bundle, preprocess, run, post-process, swap adaptable parameters.

Depends only on ``onnxruntime`` and ``numpy`` (plus the torch-free ``fedge.edge.manifest``/``errors``), as an
Android or iOS app does with ONNX Runtime's mobile packages; docs/edge.md shows the same steps in Kotlin
and Swift. Adaptable parameters (the norm/FiLM affines) are overridable initializers of the graph, so new
values are just extra feeds: the session is never recreated.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from fedge.edge.errors import BundleError
from fedge.edge.manifest import read_manifest

__all__ = ["EdgeModel", "BundleError"]


class EdgeModel:
    """A loaded bundle. ``variant`` picks ``fp32``, ``int8``, ``fp32_ort`` or ``int8_ort`` from the manifest."""

    def __init__(self, bundle: str | Path, variant: str = "fp32", threads: int = 1, verify: bool = True) -> None:
        self.bundle = Path(bundle)
        self.manifest = read_manifest(self.bundle, verify=verify)
        files = self.manifest["files"]
        if variant not in files:
            have = sorted(k for k in files if k != "reference")
            raise BundleError(f"bundle {self.bundle} has no '{variant}' model (has {have}); "
                              "run `fed-edge quantize` / `fed-edge convert` first")
        self.variant = variant
        ort.set_default_logger_severity(3)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.bundle / files[variant]["path"]), so,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types for a bad file
            raise BundleError(f"bundle {self.bundle}: ONNX Runtime cannot load {files[variant]['path']}: {e}") from e
        self._check_signature()
        self._overrides: dict[str, np.ndarray] = {}

    def _check_signature(self) -> None:
        want = self.manifest["input"]
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != want["name"]:
            raise BundleError(f"bundle {self.bundle}: model inputs {[i.name for i in inputs]} do not match the "
                              f"manifest's input {want['name']!r}; the model and manifest come from different exports")
        if list(inputs[0].shape[1:]) != list(want["shape"][1:]):
            raise BundleError(f"bundle {self.bundle}: model input shape {inputs[0].shape} != manifest {want['shape']}")
        outs = [o.name for o in self.session.get_outputs()]
        if outs != [o["name"] for o in self.manifest["outputs"]]:
            raise BundleError(f"bundle {self.bundle}: model outputs {outs} do not match the manifest")
        overridable = {i.name for i in self.session.get_overridable_initializers()}
        missing = [p["name"] for p in self.manifest.get("adaptable", []) if p["name"] not in overridable]
        if missing:
            raise BundleError(f"bundle {self.bundle}: adaptable parameters {missing[:3]} are not overridable in "
                              f"the {self.variant} model; re-export with adaptable=True")

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def adaptable(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every parameter :meth:`set_params` accepts."""
        return {p["name"]: tuple(p["shape"]) for p in self.manifest.get("adaptable", [])}

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """Raw images -> model input: uint8 pixels are scaled to [0, 1]; then ``(x*scale - mean) / std``.

        Accepts HxW, CxHxW or NxCxHxW (NCHW, as the manifest says).
        """
        pre = self.manifest["preprocessing"]
        x = np.asarray(images)
        x = x.astype(np.float32) * np.float32(pre.get("uint8_scale", 1 / 255)) if x.dtype == np.uint8 \
            else x.astype(np.float32)
        shape = self.manifest["input"]["shape"][1:]
        while x.ndim < len(shape) + 1:
            x = x[None]
        if list(x.shape[1:]) != list(shape):
            raise BundleError(f"input of shape {x.shape[1:]} does not fit the model's {shape} ({pre['layout']})")
        mean = np.asarray(pre["mean"], np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(pre["std"], np.float32).reshape(1, -1, 1, 1)
        return np.ascontiguousarray((x * np.float32(pre["scale"]) - mean) / std)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits for an already preprocessed float32 batch, with the current adaptable parameters."""
        name = self.manifest["input"]["name"]
        return self.session.run(None, {name: np.ascontiguousarray(x, np.float32), **self._overrides})[0]

    def postprocess(self, logits: np.ndarray, threshold: float = 0.5, top_k: int = 3) -> list[dict[str, Any]]:
        """Per example: probabilities (sigmoid for multi-label, softmax otherwise) and the predicted labels."""
        if self.manifest["multilabel"]:
            probs = 1.0 / (1.0 + np.exp(-logits))
            picked = [np.flatnonzero(p >= threshold) for p in probs]
        else:
            e = np.exp(logits - logits.max(1, keepdims=True))
            probs = e / e.sum(1, keepdims=True)
            picked = [np.argsort(-p)[:1] for p in probs]
        out = []
        for p, idx in zip(probs, picked):
            top = np.argsort(-p)[:top_k]
            out.append({"labels": [self.labels[i] for i in idx],
                        "top": [(self.labels[i], float(p[i])) for i in top], "probs": p})
        return out

    def predict(self, images: np.ndarray, threshold: float = 0.5) -> list[dict[str, Any]]:
        """preprocess -> run -> postprocess."""
        return self.postprocess(self.run(self.preprocess(images)), threshold)

    def set_params(self, params: Mapping[str, np.ndarray], backbone_hash: str | None = None) -> None:
        """Swap adaptable parameters (e.g. new FiLM-folded norm affines from the cloud) for later runs.

        ``backbone_hash``, when the sender states one, must be this bundle's: values adapted on another
        backbone are refused rather than silently mixed in.
        """
        mine = self.manifest.get("backbone_hash", "")
        if backbone_hash is not None and mine and backbone_hash != mine:
            raise BundleError(f"parameters were adapted on backbone {backbone_hash[:16]}, this bundle's backbone "
                              f"is {mine[:16]}; fetch parameters for this bundle or update the bundle")
        shapes = self.adaptable
        for name, value in params.items():
            if name not in shapes:
                raise BundleError(f"{name!r} is not an adaptable parameter of this bundle "
                                  f"(adaptable: {list(shapes)[:4]}...)")
            arr = np.ascontiguousarray(value, dtype=np.float32)
            if arr.shape != shapes[name] or not np.isfinite(arr).all():
                raise BundleError(f"{name}: got shape {arr.shape} (finite={bool(np.isfinite(arr).all())}), "
                                  f"expected finite values of shape {shapes[name]}")
            self._overrides[name] = arr

    def reset_params(self) -> None:
        """Back to the exported (trained) values."""
        self._overrides.clear()

    def self_test(self, atol: float = 1e-4) -> dict[str, float]:
        """Run the bundle's stored reference inputs and compare with the outputs recorded at export time
        (on the exporting machine) for this variant's precision: the check an app or the ARM64 script runs."""
        ref = np.load(self.bundle / self.manifest["files"]["reference"]["path"])
        key = f"{self.variant.split('_')[0]}_logits"
        if key not in ref:
            raise BundleError(f"bundle {self.bundle}: reference outputs for {self.variant} are missing")
        saved = self._overrides
        self._overrides = {}
        try:
            got = self.run(ref["inputs"])
        finally:
            self._overrides = saved
        diff = float(np.abs(got - ref[key]).max())
        agree = float((got.argmax(1) == ref[key].argmax(1)).mean())
        return {"max_abs_diff": diff, "top1_agreement": agree, "n": int(len(got)),
                "ok": bool(diff <= atol and agree == 1.0)}
