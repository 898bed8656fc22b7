"""fed-edge end to end on files (backbone + adapter state), and readable one-line errors."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from fedge.edge.cli import main
from fedge.models import create_model


def test_export_quantize_convert_check_bench(trained, tmp_path, capsys) -> None:
    b = tmp_path / "bundle"
    common = ["--num-users", "300", "--max-eval-users", "15"]
    model = ["--backbone", str(trained["backbone"]), "--adapter", str(trained["adapter"])]
    assert main(["export", *model, "--out", str(b), "--parity-samples", "64", *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parity"]["fp32"]["top1_agreement"] == 1.0 and out["adaptable"] > 0
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["adapter_hash"] and manifest["backbone_hash"] and manifest["multilabel"]
    assert [s["kind"] for s in manifest["adapter_specs"]] == ["film", "head"]
    assert main(["quantize", str(b), "--methods", "minmax", "--calibration-samples", "64", *common]) == 0
    capsys.readouterr()
    assert main(["convert", str(b), "--no-usability"]) == 0
    capsys.readouterr()
    assert main(["check", str(b)]) == 0
    check = json.loads(capsys.readouterr().out)
    assert check["ok"] and set(check["self_test"]) == {"fp32", "int8", "fp32_ort", "int8_ort"}
    assert main(["bench", str(b), *model, "--iters", "20", "--json", str(tmp_path / "b.json"), *common]) == 0
    result = json.loads((tmp_path / "b.json").read_text())
    assert set(result["rows"]) == {"pytorch_eager", "ort_fp32", "ort_int8"}
    assert "int8_over_fp32_bytes" in result["ratios"]


def test_errors_are_one_line(trained, tmp_path, capsys) -> None:
    assert main(["check", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fed-edge check: error:") and "\n" not in err
    other = create_model("resnet_gn_small")  # a different backbone than the adapter was trained on
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with torch.no_grad():
        rc = main(["export", "--backbone", str(path), "--adapter", str(trained["adapter"]),
                   "--out", str(tmp_path / "b"), "--num-users", "300"])
    assert rc == 2
    assert "backbone" in capsys.readouterr().err
