"""ORT format: conversion, the .ort files load and run, reduced-operator config."""

from __future__ import annotations

import shutil

from fedge.edge.manifest import read_manifest
from fedge.edge.pipeline import convert_bundle
from fedge.edge.runtime import EdgeModel


def test_convert_load_and_run(bundle, tmp_path) -> None:
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    report = convert_bundle(b, usability=True)
    assert (b / "model.ort").is_file() and (b / "model.int8.ort").is_file()
    assert report["fp32"]["parity_vs_onnx"]["max_abs_diff"] <= 1e-4
    assert report["int8"]["parity_vs_onnx"]["top1_agreement"] == 1.0
    assert "summary" in report["fp32"]["mobile_usability"]
    config = (b / "required_operators.config").read_text()
    assert "ai.onnx;" in config and "Conv" in config and "QLinearConv" in config
    manifest = read_manifest(b)  # hashes of the new files verify
    assert {"fp32_ort", "int8_ort", "operators_config"} <= set(manifest["files"])
    for variant in ("fp32_ort", "int8_ort"):
        model = EdgeModel(b, variant)
        assert model.self_test()["ok"]
        assert len(model.predict(model.preprocess(task_image()))) == 1


def task_image():
    import numpy as np

    return (np.arange(32 * 32) % 256).astype(np.uint8).reshape(32, 32)
