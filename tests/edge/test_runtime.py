"""The phone-side runtime: onnxruntime + numpy only, pre/post-processing, param swaps, clear bundle errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fedge.edge.errors import BundleError
from fedge.edge.runtime import EdgeModel
from fedge.errors import FedgeError

NO_TORCH = """
import sys
from fedge.edge.runtime import EdgeModel
import numpy as np
m = EdgeModel(sys.argv[1], "int8")
x = (np.random.default_rng(0).random((2, 1, 32, 32)) * 255).astype(np.uint8)
out = m.predict(x)
name, shape = next(iter(m.adaptable.items()))
m.set_params({name: np.ones(shape, np.float32)})
m.run(m.preprocess(x))
assert m.self_test()["ok"]
heavy = [k for k in ("torch", "onnx", "fedge.models", "fedge.adapters", "sklearn") if k in sys.modules]
print("HEAVY", heavy, len(out))
"""


def test_runtime_imports_only_onnxruntime_and_numpy(bundle) -> None:
    res = subprocess.run([sys.executable, "-c", NO_TORCH, str(bundle)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "HEAVY [] 2" in res.stdout, res.stdout


def test_predict_and_swap(bundle, task) -> None:
    m = EdgeModel(bundle)
    assert m.self_test()["ok"]
    x = task.test[0][:4]
    base = m.run(m.preprocess(x))
    out = m.predict(x)
    assert len(out) == 4 and all(0 <= p <= 1 for p in out[0]["probs"])
    assert set(out[0]["labels"]) <= set(m.labels)
    name, shape = next(iter(m.adaptable.items()))
    m.set_params({name: np.zeros(shape, np.float32)})
    assert np.abs(m.run(x) - base).max() > 1e-4
    m.reset_params()
    np.testing.assert_allclose(m.run(x), base, atol=1e-6)
    with pytest.raises(BundleError, match="expected finite values of shape"):
        m.set_params({name: np.zeros((3,), np.float32)})
    with pytest.raises(BundleError, match="not an adaptable parameter"):
        m.set_params({"nope": np.zeros(shape, np.float32)})
    with pytest.raises(BundleError, match="adapted on backbone"):
        m.set_params({name: np.zeros(shape, np.float32)}, backbone_hash="0" * 64)
    m.set_params({name: np.zeros(shape, np.float32)}, backbone_hash=m.manifest["backbone_hash"])


def test_bundle_files_are_self_contained(bundle) -> None:
    names = {p.name for p in bundle.iterdir()}
    assert names == {"manifest.json", "model.onnx", "model.int8.onnx", "reference.npz"}, names


def test_uint8_preprocessing(bundle, task) -> None:
    m = EdgeModel(bundle)
    img = (task.test[0][0, 0] * 255).round().astype(np.uint8)  # one HxW camera frame
    np.testing.assert_allclose(m.preprocess(img)[0, 0], img / 255.0, atol=1e-6)
    with pytest.raises(BundleError, match="does not fit"):
        m.preprocess(np.zeros((28, 28), np.uint8))


def _copy(bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    return b


def test_corrupt_model_is_a_clear_error(bundle, tmp_path) -> None:
    b = _copy(bundle, tmp_path)
    data = bytearray((b / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its manifest hash"):
        EdgeModel(b)
    assert issubclass(BundleError, FedgeError)


def test_missing_or_garbled_manifest(bundle, tmp_path) -> None:
    b = _copy(bundle, tmp_path)
    (b / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="corrupt"):
        EdgeModel(b)
    (b / "manifest.json").unlink()
    with pytest.raises(BundleError, match="not an edge bundle"):
        EdgeModel(b)


def test_mismatched_model_and_manifest(bundle, tmp_path) -> None:
    """A manifest whose files verify but whose model has another signature (swapped in, hashes redone)."""
    b = _copy(bundle, tmp_path)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["input"]["name"] = "pixels"
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="different exports"):
        EdgeModel(b)
    manifest["format_version"] = 99
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format_version"):
        EdgeModel(b)


def test_missing_variant(bundle) -> None:
    with pytest.raises(BundleError, match="fed-edge convert"):
        EdgeModel(bundle, "int8_ort")
