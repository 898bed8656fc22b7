"""Static int8 quantization: accuracy within 1 point of the float twin, size, adaptable params stay float."""

from __future__ import annotations

import numpy as np
import onnx

from fedge.edge.export import ort_session, run_onnx
from fedge.edge.manifest import read_manifest
from fedge.edge.quantize import ArrayCalibrationReader


def test_int8_within_one_point_of_fp32(bundle) -> None:
    q = read_manifest(bundle)["quantization"]
    assert q["metric"] == "macro_ap"
    assert q["test_examples"] >= 300
    assert abs(q["drop_points"]) <= 1.0, q
    assert q["method"] in q["candidates"]
    assert q["format"] == "QDQ" and q["per_channel"]


def test_int8_is_small_and_really_quantized(bundle) -> None:
    q = read_manifest(bundle)["quantization"]
    assert q["size_ratio"] <= 0.3, q["size_ratio"]
    ops = q["int8_ops"]
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    conv_weights = [i for i in onnx.load(str(bundle / "model.int8.onnx")).graph.initializer
                    if i.name.endswith("weight_quantized")]
    assert conv_weights and all(i.data_type == onnx.TensorProto.INT8 for i in conv_weights)


def test_int8_keeps_adaptable_affines_swappable(bundle, task) -> None:
    manifest = read_manifest(bundle)
    sess = ort_session(bundle / "model.int8.onnx")
    names = {i.name for i in sess.get_overridable_initializers()}
    adapt = manifest["adaptable"]
    assert {p["name"] for p in adapt} <= names
    x = task.test[0][:16]
    p = adapt[0]
    changed = run_onnx(sess, x, {p["name"]: np.full(p["shape"], 2.0, np.float32)})
    assert np.abs(changed - run_onnx(sess, x)).max() > 1e-3


def test_calibration_reader_batches() -> None:
    reader = ArrayCalibrationReader(np.zeros((70, 1, 4, 4), np.float32), batch=32)
    sizes = []
    while (item := reader.get_next()) is not None:
        sizes.append(item["input"].shape[0])
    assert sizes == [32, 32, 6]
    reader.rewind()
    assert reader.get_next()["input"].shape[0] == 32
