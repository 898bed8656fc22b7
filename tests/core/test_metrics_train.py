"""Metrics against their definitions, and the local training loop."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.adapters import inject, parse_adapter_kinds
from fedge.metrics import accuracy, average_precision
from fedge.models import create_model
from fedge.train import TrainConfig, evaluate, minibatches, train


def _ap_by_definition(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP = mean over positives of the precision among all examples scored at least as high (ties as sklearn)."""
    precisions = []
    for i in np.flatnonzero(targets):
        at_least = scores >= scores[i]
        precisions.append(targets[at_least].sum() / at_least.sum())
    return float(np.mean(precisions))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_average_precision_matches_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=(30, 4)).astype(float)  # ties on purpose
    targets = (rng.random((30, 4)) < 0.3).astype(float)
    targets[:, 3] = 0  # an absent label is excluded from macro AP
    ap = average_precision(scores, targets)
    present = [c for c in range(4) if targets[:, c].any()]
    if present:
        macro = np.mean([_ap_by_definition(scores[:, c], targets[:, c]) for c in present])
        assert abs(ap["macro_ap"] - macro) < 1e-9
        assert abs(ap["micro_ap"] - _ap_by_definition(scores.ravel(), targets.ravel())) < 1e-9


def test_accuracy() -> None:
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy(logits, np.array([1, 0, 0])) == 2 / 3
    assert accuracy(logits, np.eye(2)[[1, 0, 0]]) == 2 / 3


def test_minibatches_cover_epochs() -> None:
    batches = list(minibatches(10, 4, 2.0, np.random.default_rng(0)))
    assert len(batches) == 5 and all(len(b) == 4 for b in batches)
    counts = np.bincount(np.concatenate(batches), minlength=10)
    assert counts.min() >= 1 and counts.sum() == 20


def test_training_an_adapter_fits_a_separable_task() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=256)
    images = rng.random((256, 1, 32, 32), dtype=np.float32) * 0.2
    images[labels == 1, :, :16] += 0.8  # class 1 is bright in the top half
    model = create_model("resnet_gn_small", num_classes=2)
    inject(model, parse_adapter_kinds("head", 2, multilabel=False))
    before = evaluate(model, images, labels, multilabel=False)["accuracy"]
    stats = train(model, images, labels, multilabel=False, cfg=TrainConfig(epochs=8, lr=1e-2, batch_size=32))
    after = evaluate(model, images, labels, multilabel=False)["accuracy"]
    assert after >= 0.95 and after > before
    assert stats["steps"] == 64 and stats["samples_per_s"] > 0
