"""Model zoo: Opacus compatibility and the local pretrained-weights loader."""

from __future__ import annotations

import pytest
import torch
from opacus.validators import ModuleValidator
from safetensors.torch import save_file

from fedge.errors import ConfigError, DataError
from fedge.models import create_model, load_pretrained, read_state_dict


@pytest.mark.parametrize("arch", ["resnet_gn_small", "resnet18_gn", "vit_tiny"])
def test_zoo_models_are_opacus_compatible(arch: str) -> None:
    model = create_model(arch, num_classes=10, in_chans=1)
    assert ModuleValidator.validate(model, strict=False) == []
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    y = model(torch.rand(2, 1, 32, 32))
    assert y.shape == (2, 10)


def test_resnet18_uses_torchvision_layout() -> None:
    names = set(create_model("resnet18_gn").state_dict())
    for key in ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.bias", "layer4.1.bn2.weight", "fc.weight", "fc.bias"]:
        assert key in names


def _torchvision_style_checkpoint(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A checkpoint as torchvision/DDP writes it: 'module.' prefix, BatchNorm running stats, 1000-way fc."""
    sd = {f"module.{k}": v.clone() + 0.5 for k, v in model.state_dict().items()}
    for k in list(sd):
        if k.endswith("bn1.weight"):
            base = k[: -len("weight")]
            sd[base + "running_mean"] = torch.zeros_like(sd[k])
            sd[base + "running_var"] = torch.ones_like(sd[k])
            sd[base + "num_batches_tracked"] = torch.tensor(10)
    sd["module.fc.weight"] = torch.randn(1000, 512)
    sd["module.fc.bias"] = torch.randn(1000)
    return sd


def test_loader_reads_generated_torchvision_checkpoint(tmp_path) -> None:
    source = create_model("resnet18_gn", num_classes=1000)
    ckpt = _torchvision_style_checkpoint(source)
    torch.save({"state_dict": ckpt, "epoch": 3}, tmp_path / "r18.pth")
    target = create_model("resnet18_gn", num_classes=10)
    with pytest.raises(DataError, match="skip_classifier"):
        load_pretrained(target, tmp_path / "r18.pth")
    left = load_pretrained(target, tmp_path / "r18.pth", skip_classifier=True)
    assert left == ["fc.bias", "fc.weight"]
    for k, v in target.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, ckpt[f"module.{k}"]), k


def test_loader_reads_timm_vit_safetensors(tmp_path) -> None:
    source = create_model("vit_tiny", num_classes=10, in_chans=1)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    target = create_model("vit_tiny", num_classes=10, in_chans=1)
    assert load_pretrained(target, tmp_path / "vit.safetensors") == []
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(source.eval()(x), target.eval()(x))


def test_loader_errors_are_clear(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read"):
        read_state_dict(tmp_path / "junk.pth")
    small = create_model("resnet_gn_small")
    torch.save(small.state_dict(), tmp_path / "small.pth")
    with pytest.raises(DataError, match="do not fit"):
        load_pretrained(create_model("resnet18_gn"), tmp_path / "small.pth")
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("resnet50")
