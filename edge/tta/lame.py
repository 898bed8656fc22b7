"""LAME (Boudiaf et al., CVPR 2022, "Parameter-free Online Test-time Adaptation"): output-only adaptation.

Per batch, the model's probabilities ``p`` are refined into assignments ``z`` that minimise the Laplacian-
regularised objective ``sum_i KL(z_i || p_i) - sum_ij W_ij z_i^T z_j`` over the simplex, where ``W`` is a
kNN affinity over the (L2-normalised) features. Its bound optimisation is the fixed point
``z_i = softmax(log p_i + sum_j W_ij z_j)`` (paper Eq. 8). No parameter is updated; numpy only.
"""

from __future__ import annotations

import numpy as np

from fedge.edge.tta.selection import softmax


def knn_affinity(features: np.ndarray, k: int = 5) -> np.ndarray:
    """Binary kNN affinity (``W_ij = 1`` if j is among i's k nearest neighbours, self excluded)."""
    f = np.asarray(features, np.float64)
    f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-12)
    n = len(f)
    sq = (f * f).sum(1)
    dist = sq[:, None] + sq[None, :] - 2 * f @ f.T
    np.fill_diagonal(dist, np.inf)
    k = min(k, n - 1)
    w = np.zeros((n, n))
    if k > 0:
        nn = np.argpartition(dist, k - 1, axis=1)[:, :k]
        np.put_along_axis(w, nn, 1.0, axis=1)
    return w


def energy(z: np.ndarray, log_p: np.ndarray, w: np.ndarray, lam: float = 1.0) -> float:
    """The LAME objective at ``z`` (lower is better)."""
    zc = np.clip(z, 1e-20, 1.0)
    return float((z * (np.log(zc) - log_p)).sum() - lam * (z * (w @ z)).sum())


def lame(logits: np.ndarray, features: np.ndarray, k: int = 5, lam: float = 1.0, max_steps: int = 100,
         tol: float = 1e-8) -> np.ndarray:
    """Refined class assignments (N, C) for one batch; iterate the fixed point until the energy settles."""
    log_p = np.log(np.clip(softmax(logits), 1e-20, 1.0))
    w = knn_affinity(features, k)
    z = np.exp(log_p)
    old: float | None = None
    for _ in range(max_steps):
        z = softmax(log_p + lam * (w @ z))
        e = energy(z, log_p, w, lam)
        if old is not None and abs(e - old) <= tol * max(abs(old), 1e-12):
            break
        old = e
    return z
