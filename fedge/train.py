"""A plain local training and evaluation loop for adapters (and for pretraining the backbone).

The loop trains whatever parameters require gradients (after :func:`fedge.adapters.inject`, only the adapter
tensors), with BCE for multi-label and cross-entropy for multi-class targets. DP training goes through
``fedge.privacy`` instead; this loop is the non-private reference.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedge.data.base import UserData
from fedge.errors import ConfigError
from fedge.metrics import compute_metrics
from fedge.progress import progress_bar


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of local training."""

    epochs: float = 1.0
    lr: float = 3e-3
    batch_size: int = 64
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 0


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Mean BCE-with-logits (multi-label, float multi-hot targets) or cross-entropy (class indices)."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, targets)


def as_targets(labels: np.ndarray, multilabel: bool) -> torch.Tensor:
    """Multi-hot float targets for multi-label, int64 class indices for multi-class."""
    if multilabel:
        return torch.as_tensor(labels, dtype=torch.float32)
    return torch.as_tensor(labels.argmax(1) if labels.ndim == 2 else labels, dtype=torch.int64)


def minibatches(n: int, batch_size: int, epochs: float, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Shuffled index batches covering ``epochs`` passes over ``n`` examples (fractional epochs allowed)."""
    steps = max(1, int(np.ceil(epochs * n / batch_size)))
    order = np.empty(0, dtype=np.int64)
    for _ in range(steps):
        if len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(n)])
        yield order[:batch_size]
        order = order[batch_size:]


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; use 'adam' or 'sgd'")


def train(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    multilabel: bool,
    cfg: TrainConfig = TrainConfig(),
    progress: bool = False,
    desc: str = "train",
) -> dict[str, float]:
    """Train the model's trainable parameters in place; returns loss, steps, seconds and samples/s."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    opt = make_optimizer(params, cfg)
    x_all = torch.as_tensor(images)
    y_all = as_targets(labels, multilabel)
    rng = np.random.default_rng(cfg.seed)
    model.train()
    losses: list[float] = []
    seen = 0
    t0 = time.perf_counter()
    batches = list(minibatches(len(x_all), cfg.batch_size, cfg.epochs, rng))
    for idx in progress_bar(batches, desc=desc, enabled=progress):
        x, y = x_all[idx], y_all[idx]
        loss = loss_fn(model(x), y, multilabel)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        seen += len(idx)
    seconds = time.perf_counter() - t0
    model.eval()
    return {"loss": float(np.mean(losses[-max(1, len(losses) // 10):])), "steps": len(batches),
            "seconds": seconds, "samples_per_s": seen / max(seconds, 1e-9)}


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits for ``images`` (float32 NCHW), in eval mode."""
    was_training = model.training
    model.eval()
    x = torch.as_tensor(images)
    out = [model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, multilabel: bool) -> dict[str, float]:
    """Accuracy (multi-class) or macro/micro AP (multi-label) of the model on the given data."""
    return compute_metrics(predict(model, images), labels, multilabel)


def adapt_centrally(
    backbone: nn.Module, kinds: str, train_data: UserData, test_data: UserData, cfg: TrainConfig,
    label_set: str = "fine", progress: bool = True,
) -> dict[str, float]:
    """Inject ``kinds`` (e.g. ``"film+head"``) into a copy of ``backbone``, train on pooled data, evaluate.

    The non-private, central reference for an adapter kind; returns trainable parameters (absolute and as a
    fraction of the backbone), test metrics, training seconds and samples/s.
    """
    from fedge.adapters import adapter_state, inject, parse_adapter_kinds

    model = copy.deepcopy(backbone)
    num_classes = train_data.labels[label_set].shape[1]
    inject(model, parse_adapter_kinds(kinds, num_classes=num_classes, multilabel=True), seed=cfg.seed)
    stats = train(model, train_data.images, train_data.labels[label_set], multilabel=True, cfg=cfg,
                  progress=progress, desc=kinds)
    metrics = evaluate(model, test_data.images, test_data.labels[label_set], multilabel=True)
    trainable = adapter_state(model).num_parameters()
    n_backbone = sum(p.numel() for p in backbone.parameters())
    return {"trainable": trainable, "fraction": trainable / n_backbone, **metrics,
            "seconds": stats["seconds"], "samples_per_s": stats["samples_per_s"]}
