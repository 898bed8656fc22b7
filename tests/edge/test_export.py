"""Export parity for every adapter kind x backbone, and adaptable (swappable) norm affines."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from fedge.adapters import AdapterSpec, inject, merge
from fedge.edge.export import check_parity, export_onnx, norm_affine_names, ort_session, run_onnx, run_torch
from fedge.models import create_model

from .conftest import randomize_adapters, real_inputs

KINDS = ["film", "lora", "head"]
FAST = ["resnet_gn_small", "vit_tiny"]


def _adapted(arch: str, kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_chans=1) if arch != "resnet18_gn" else \
        create_model(arch, num_classes=10, in_chans=1, small_input=True)
    spec = AdapterSpec(kind="head", num_classes=7, multilabel=True) if kind == "head" else AdapterSpec(kind=kind)
    inject(model, [spec])
    randomize_adapters(model)
    return model.eval()


def _parity(arch: str, kind: str, tmp_path) -> None:
    adapted = _adapted(arch, kind)
    plain = merge(adapted)
    x = real_inputs(32)
    # the merge is exact up to float rounding, and the exported graph matches the merged model
    np.testing.assert_allclose(run_torch(plain, x), run_torch(adapted, x), atol=1e-4)
    result = export_onnx(plain, torch.from_numpy(x[:2]), tmp_path / "m.onnx")
    report = check_parity(plain, result.path, x, atol=1e-4)
    assert report["top1_agreement"] == 1.0 and report["max_abs_diff"] <= 1e-4
    assert result.adaptable, "norm affines should be adaptable by default"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", FAST)
def test_parity_every_kind_and_backbone(arch: str, kind: str, tmp_path) -> None:
    _parity(arch, kind, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_parity_resnet18_gn(kind: str, tmp_path) -> None:
    _parity("resnet18_gn", kind, tmp_path)


def test_swapped_affines_match_pytorch(tmp_path) -> None:
    """A device feeds new norm/FiLM affines at run time: same outputs as PyTorch with those values."""
    model = _adapted("vit_tiny", "film")
    plain = merge(model)
    x = real_inputs(16)
    result = export_onnx(plain, torch.from_numpy(x[:2]), tmp_path / "m.onnx")
    names = [p["name"] for p in result.adaptable]
    assert set(names) == set(norm_affine_names(plain))
    g = torch.Generator().manual_seed(1)
    new = {n: (dict(plain.named_parameters())[n].detach() + 0.3 * torch.randn(
        dict(plain.named_parameters())[n].shape, generator=g)) for n in names[::3]}
    sess = ort_session(result.path)
    got = run_onnx(sess, x, {n: v.numpy() for n, v in new.items()})
    with torch.no_grad():
        for n, v in new.items():
            dict(plain.named_parameters())[n].copy_(v)
    want = run_torch(plain, x)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(got - run_onnx(sess, x)).max() > 1e-2  # the swap really changed the outputs


def test_not_adaptable_bakes_constants_and_batch_is_dynamic(tmp_path) -> None:
    model = create_model("resnet_gn_small").eval()
    x = real_inputs(8)
    result = export_onnx(model, torch.from_numpy(x[:2]), tmp_path / "m.onnx", adaptable=False)
    assert result.adaptable == ()
    proto = onnx.load(str(result.path))
    assert [i.name for i in proto.graph.input] == ["input"]
    sess = ort_session(result.path)
    assert not sess.get_overridable_initializers()
    check_parity(model, result.path, x)
    for n in (1, 3, 7):  # dynamic batch
        assert run_onnx(sess, real_inputs(7)[:n]).shape == (n, 10)
