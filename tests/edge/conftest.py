"""Shared fixtures: a quickly trained FiLM+head model on the FLAIR-style task and its bundle (built once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedge.adapters import AdapterSpec, adapter_state, inject, merge
from fedge.data.flair_style import public_split
from fedge.edge.bundle import BundleInfo, build_bundle
from fedge.edge.data import TaskSplits, flair_style_splits
from fedge.models import create_model
from fedge.train import TrainConfig, train


@pytest.fixture(scope="session", autouse=True)
def _modest_threads() -> None:
    torch.set_num_threads(1)  # the 2 cores are shared; keep timings and load predictable


@pytest.fixture(scope="session")
def task() -> TaskSplits:
    return flair_style_splits(num_users=300, calibration_samples=128)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """resnet_gn_small pretrained briefly on public mosaics, then FiLM+head adapted on train users."""
    torch.manual_seed(0)
    model = create_model("resnet_gn_small", num_classes=10, in_chans=1)
    pub = public_split(1500, seed=3)
    train(model, pub.images, pub.labels["fine"], multilabel=True, cfg=TrainConfig(epochs=1, batch_size=64))
    root = tmp_path_factory.mktemp("trained")
    backbone_path = root / "backbone.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(backbone_path))
    inject(model, [AdapterSpec(kind="film"), AdapterSpec(kind="head", num_classes=10, multilabel=True)])
    from fedge.data.flair_style import FlairStyleDataset

    adapt = FlairStyleDataset(num_users=300).pooled("train", 40)
    train(model, adapt.images, adapt.labels["fine"], multilabel=True, cfg=TrainConfig(epochs=1, batch_size=64))
    adapter_path = root / "adapter.safetensors"
    adapter_state(model).save(adapter_path)
    return {"model": model, "plain": merge(model), "backbone": backbone_path, "adapter": adapter_path}


@pytest.fixture(scope="session")
def bundle(trained: dict, task: TaskSplits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained model exported (adaptable) and quantized: shared, treat as read-only (copy to modify)."""
    from fedge.edge.pipeline import quantize_bundle

    out = tmp_path_factory.mktemp("bundle") / "b"
    state = adapter_state(trained["model"])
    info = BundleInfo(labels=task.labels, multilabel=True, arch="resnet_gn_small", task="flair_style/fine",
                      backbone_hash=state.backbone_hash)
    build_bundle(trained["plain"], out, task.test[0][:128], info)
    quantize_bundle(out, task.calibration, task.val, task.test, methods=("minmax", "percentile"))
    return out


def randomize_adapters(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every trainable (adapter) parameter non-trivial values, so merging is not a no-op (LoRA B = 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def real_inputs(n: int = 64) -> np.ndarray:
    from fedge.data.flair_style import FlairStyleDataset

    return FlairStyleDataset(num_users=300).pooled("test", 10).images[:n]
