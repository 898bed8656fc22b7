"""LiRA audit: ROC metrics, logit confidence, and the attack on synthetic leaky / non-leaky models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedge.errors import ConfigError
from fedge.privacy.audit import leave_one_out_audit, logit_confidence, plot_roc, roc_metrics


def test_roc_metrics_extremes() -> None:
    labels = np.r_[np.ones(500), np.zeros(500)]
    perfect = roc_metrics(np.r_[np.ones(500) + 1, np.zeros(500)], labels)
    assert (perfect.auc, perfect.tpr_at_0_1_fpr, perfect.tpr_at_1_fpr) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(0)
    chance = roc_metrics(rng.normal(size=20_000), rng.integers(0, 2, 20_000))
    assert chance.auc == pytest.approx(0.5, abs=0.02)
    assert chance.tpr_at_1_fpr < 0.03
    tied = roc_metrics(np.zeros(1000), labels)  # one threshold: nothing below 100% FPR
    assert tied.auc == pytest.approx(0.5) and tied.tpr_at_1_fpr == 0.0
    with pytest.raises(ConfigError):
        roc_metrics(np.zeros(3), np.ones(3))


def test_logit_confidence_matches_definition() -> None:
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(50, 10)) * 5, rng.integers(0, 10, 50)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    py = p[np.arange(50), labels]
    assert np.allclose(logit_confidence(logits, labels), np.log(py) - np.log(1 - py))
    big = np.array([[1000.0, 0.0, -1000.0]])
    assert np.isfinite(logit_confidence(big, np.array([0])))[0]


def _synthetic(shift: float, models: int = 16, n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-example difficulty plus a membership shift: what a model that memorises looks like."""
    rng = np.random.default_rng(seed)
    in_mask = rng.random((models, n)) < 0.5
    difficulty = rng.normal(0, 3, n)
    conf = difficulty + shift * in_mask + rng.normal(0, 1, (models, n))
    return conf, in_mask


def test_lira_detects_membership_and_not_its_absence() -> None:
    leaky, _, _ = leave_one_out_audit(*_synthetic(shift=3.0))
    assert leaky.auc > 0.95 and leaky.tpr_at_1_fpr > 0.4
    offline, _, _ = leave_one_out_audit(*_synthetic(shift=3.0), online=False)
    assert offline.auc > 0.9
    private, _, _ = leave_one_out_audit(*_synthetic(shift=0.0))
    assert private.auc == pytest.approx(0.5, abs=0.04)
    assert private.tpr_at_1_fpr < 0.05
    with pytest.raises(ConfigError):
        leave_one_out_audit(*_synthetic(shift=1.0, models=2))


def test_plot_roc_writes_png(tmp_path: Path) -> None:
    _, s, y = leave_one_out_audit(*_synthetic(shift=2.0, models=4, n=100))
    path = plot_roc({"eps=inf": (s, y)}, tmp_path / "roc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
