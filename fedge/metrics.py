"""Evaluation metrics: top-1 accuracy (multi-class) and macro/micro average precision (multi-label, as FLAIR)."""

from __future__ import annotations

import numpy as np


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy; ``labels`` are class indices (or one-hot rows)."""
    if labels.ndim == 2:
        labels = labels.argmax(1)
    return float((logits.argmax(1) == labels).mean())


def average_precision(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Macro and micro average precision (scikit-learn's step-wise AP, no interpolation).

    Macro AP averages over labels that have at least one positive, as FLAIR's evaluation does: a label
    absent from the evaluation set has no defined AP.
    """
    from sklearn.metrics import average_precision_score

    present = targets.sum(0) > 0
    if not present.any():
        return {"macro_ap": float("nan"), "micro_ap": float("nan")}
    return {
        "macro_ap": float(average_precision_score(targets[:, present], scores[:, present], average="macro")),
        "micro_ap": float(average_precision_score(targets.ravel(), scores.ravel())),
    }


def compute_metrics(logits: np.ndarray, labels: np.ndarray, multilabel: bool) -> dict[str, float]:
    """Accuracy for multi-class; macro/micro AP for multi-label."""
    return average_precision(logits, labels) if multilabel else {"accuracy": accuracy(logits, labels)}
