"""LAME: the returned assignments are the fixed point of Eq. 8, lower the energy, and smooth neighbours."""

from __future__ import annotations

import numpy as np

from fedge.edge.tta.lame import energy, knn_affinity, lame
from fedge.edge.tta.selection import softmax


def _clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 8)) * 5
    y = np.repeat(np.arange(3), 20)
    feats = centers[y] + rng.normal(size=(60, 8))
    logits = np.eye(3)[y] * 1.0 + rng.normal(size=(60, 3)) * 1.2  # noisy classifier
    return feats, logits, y


def test_knn_affinity_has_k_neighbours_and_no_self_loops() -> None:
    feats, _, _ = _clusters()
    w = knn_affinity(feats, k=5)
    assert (w.sum(1) == 5).all() and (np.diag(w) == 0).all()


def test_output_is_the_fixed_point() -> None:
    feats, logits, _ = _clusters()
    z = lame(logits, feats, k=5, max_steps=500, tol=1e-14)
    w = knn_affinity(feats, 5)
    again = softmax(np.log(softmax(logits)) + w @ z)
    np.testing.assert_allclose(again, z, atol=1e-6)
    np.testing.assert_allclose(z.sum(1), 1.0, atol=1e-9)


def test_energy_decreases_and_labels_get_smoother() -> None:
    feats, logits, y = _clusters()
    p = softmax(logits)
    z = lame(logits, feats, k=5)
    w = knn_affinity(feats, 5)
    log_p = np.log(p)
    assert energy(z, log_p, w) < energy(p, log_p, w)
    assert (z.argmax(1) == y).mean() >= (p.argmax(1) == y).mean()
    assert (z.argmax(1) == y).mean() > 0.9


def test_no_neighbours_returns_the_model_output() -> None:
    z = lame(np.array([[2.0, 0.0, -1.0]]), np.ones((1, 4)))
    np.testing.assert_allclose(z, softmax(np.array([[2.0, 0.0, -1.0]])), atol=1e-12)
