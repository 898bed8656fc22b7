"""The default TTA task: Fashion-MNIST (10 classes), a tiny edge CNN and a larger cloud foundation model.

Both models are GroupNorm nets trained on clean Fashion-MNIST train images and cached under
``FEDGE_HOME/tta`` by a hash of their recipe; the test split (corrupted by :mod:`fedge.edge.tta.streams`)
is the stream they adapt on. Everything is sized for 2 shared CPU cores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from fedge.errors import ConfigError, DataError
from fedge.paths import fedge_home

log = logging.getLogger(__name__)
NUM_CLASSES = 10
INPUT_SHAPE = (1, 28, 28)


class TinyCNN(nn.Module):
    """The edge model: conv-GN-ReLU(-maxpool) x3, a 3x3 average pool and a linear head (~30k parameters)."""

    def __init__(self, num_classes: int = NUM_CLASSES, in_chans: int = 1, widths: tuple[int, ...] = (16, 32, 64),
                 groups: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, 1, 1, bias=False), nn.GroupNorm(groups, w), nn.ReLU()]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        layers.append(nn.AdaptiveAvgPool2d(3))
        self.features = nn.Sequential(*layers)
        self.num_features = c * 9
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def build_model(arch: str) -> nn.Module:
    """``tiny_cnn`` (the edge default), ``wide_cnn`` (the foundation default) or any :func:`fedge.models.create_model` name (10 classes, 1 channel)."""
    if arch == "tiny_cnn":
        return TinyCNN()
    if arch == "wide_cnn":  # the default cloud foundation: same family, 2x wider (~4x compute, ~120k params)
        return TinyCNN(widths=(32, 64, 128), groups=8)
    from fedge.models import create_model

    return create_model(arch, num_classes=NUM_CLASSES, in_chans=1)


@dataclass(frozen=True)
class TaskModelConfig:
    """How one model of the task is trained on clean Fashion-MNIST (cache key = hash of these fields)."""

    arch: str = "tiny_cnn"
    num_train: int = 20_000
    epochs: float = 2.0
    lr: float = 3e-3
    batch_size: int = 128
    seed: int = 0
    init_from: TaskModelConfig | None = None  # continue training from this (cached) model

    def key(self) -> str:
        fields = asdict(self)
        if self.init_from is None:
            del fields["init_from"]  # keeps the keys of from-scratch recipes stable
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


EDGE_DEFAULT = TaskModelConfig("tiny_cnn", num_train=30_000, epochs=2.0)
FOUNDATION_DEFAULT = TaskModelConfig("wide_cnn", num_train=60_000, epochs=1.0, lr=1e-3, seed=1,
                                     init_from=TaskModelConfig("wide_cnn", num_train=60_000, epochs=1.0))


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) or (N, 1, 28, 28) pixels -> float32 (N, 1, 28, 28) in [0, 1] (the bundle's input)."""
    x = np.asarray(images)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return np.ascontiguousarray(x.reshape(len(x), *INPUT_SHAPE))


def _shift(x: torch.Tensor, rng: np.random.Generator, max_px: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_px`` pixels (zero fill): the only training augmentation."""
    pad = F.pad(x, (max_px,) * 4)
    dx, dy = rng.integers(0, 2 * max_px + 1, size=2)
    return pad[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]


def train_classifier(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TaskModelConfig) -> dict[str, float]:
    """Cross-entropy training with Adam and random shifts; returns the final loss and seconds."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    xt, yt = torch.from_numpy(to_input(x)), torch.from_numpy(np.asarray(y, np.int64))
    steps = max(1, int(cfg.epochs * len(xt) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps)
    model.train()
    t0, losses = time.perf_counter(), []
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(xt), cfg.batch_size))
        loss = F.cross_entropy(model(_shift(xt[idx], rng)), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return {"loss": float(np.mean(losses[-20:])), "seconds": time.perf_counter() - t0}


def load_or_train(cfg: TaskModelConfig, cache_dir: str | Path | None = None) -> nn.Module:
    """The trained model for ``cfg``: loaded from the cache, or trained on clean train images and cached."""
    cache = Path(cache_dir) if cache_dir is not None else fedge_home() / "tta"
    path = cache / f"{cfg.arch}-{cfg.key()}.safetensors"
    model = build_model(cfg.arch)
    if path.is_file():
        try:
            model.load_state_dict(load_file(str(path)))
        except Exception as exc:
            raise DataError(f"cached TTA model {path} is unreadable ({exc}); delete it to train again") from None
        return model.eval()
    from fedge.data.fashion_mnist import load_fashion_mnist

    if cfg.init_from is not None:
        model.load_state_dict(load_or_train(cfg.init_from, cache).state_dict())
    images, labels = load_fashion_mnist("train")
    if cfg.num_train > len(images):
        raise ConfigError(f"num_train={cfg.num_train} exceeds the {len(images)} Fashion-MNIST train images")
    pick = np.random.default_rng(cfg.seed).permutation(len(images))[: cfg.num_train]
    stats = train_classifier(model, images[pick], labels[pick], cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"config": json.dumps(asdict(cfg), default=str), "loss": f"{stats['loss']:.4f}"})
    tmp.replace(path)
    log.info("trained %s in %.0fs (loss %.3f) -> %s", cfg.arch, stats["seconds"], stats["loss"], path)
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 500) -> float:
    """Top-1 accuracy of a torch model on uint8 images."""
    x = torch.from_numpy(to_input(images))
    pred = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)]).numpy()
    return float((pred == labels).mean())


def load_weights(arch: str, path: str | Path) -> nn.Module:
    """A task model of ``arch`` with the state dict stored at ``path`` (safetensors)."""
    model = build_model(arch)
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception as exc:
        raise DataError(f"cannot load {arch} weights from {path}: {exc}") from None
    return model.eval()


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s state dict as safetensors (what ``fed-edge cloud serve --edge-weights`` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def export_edge_bundle(model: nn.Module, out: str | Path, arch: str = "tiny_cnn", n_parity: int = 128) -> dict:
    """Export the edge model as an adaptable fedge edge bundle (norm affines overridable), parity-checked
    on clean train images; the manifest records the backbone hash the cloud's bundles must match."""
    from fedge.adapters import backbone_hash
    from fedge.data.fashion_mnist import CLASSES, load_fashion_mnist
    from fedge.edge.bundle import BundleInfo, build_bundle

    images, _ = load_fashion_mnist("train")
    info = BundleInfo(labels=CLASSES, multilabel=False, arch=arch, backbone_hash=backbone_hash(model),
                      task="fashion_mnist/tta")
    return build_bundle(model, out, to_input(images[:n_parity]), info)
