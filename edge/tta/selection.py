"""CEMA's sample selection on the device (Chen et al. 2023, "Cloud-Device Collaborative Adaptation to
Continual Changing Environments in the Real-World"): upload only samples that teach the cloud something.

Rules, in order, on the device's softmax outputs (numpy only, no backprop):
1. ``E < E_min``: already confident, little to learn -> drop ("low").
2. ``E > E_max``: too uncertain to give a reliable signal -> drop ("high"). ``E_max`` is dynamic: it starts at
   ``e_max_init * ln C`` and after every batch moves towards the batch's ``quantile`` entropy,
   ``E_max <- decay * E_max + (1 - decay) * q_t`` (clamped), so it tightens as the model gets more confident
   and loosens when a new corruption arrives.
3. Cosine similarity of the sample's probabilities to the moving average of uploaded probabilities
   above ``redundancy`` -> drop ("redundant"; EATA's rule, as CEMA uses it).
4. At most ``max_fraction`` of a batch is uploaded; the most uncertain remaining samples win ("budget").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fedge.errors import ConfigError

KEEP, LOW, HIGH, REDUNDANT, BUDGET = 0, 1, 2, 3, 4
REASONS = ("keep", "low", "high", "redundant", "budget")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of ``probs``."""
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(1)


@dataclass(frozen=True)
class SelectionConfig:
    """Thresholds as fractions of ``ln C`` (C = number of classes), so they carry across label sets."""

    e_min: float = 0.1
    e_max_init: float = 0.5
    e_max_floor: float = 0.25
    decay: float = 0.9
    quantile: float = 0.7
    redundancy: float = 0.95
    momentum: float = 0.9
    max_fraction: float = 0.3

    def __post_init__(self) -> None:
        if not 0 <= self.e_min < self.e_max_floor <= self.e_max_init <= 1:
            raise ConfigError("need 0 <= e_min < e_max_floor <= e_max_init <= 1 (fractions of ln C)")
        if not (0 < self.decay < 1 and 0 < self.quantile <= 1 and 0 < self.max_fraction <= 1):
            raise ConfigError("decay must be in (0, 1); quantile and max_fraction in (0, 1]")


@dataclass
class Selector:
    """Stateful CEMA selector: call :meth:`select` once per incoming batch."""

    num_classes: int
    cfg: SelectionConfig = field(default_factory=SelectionConfig)
    e_max: float = float("nan")
    mean_probs: np.ndarray | None = None
    seen: int = 0
    uploaded: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))

    def __post_init__(self) -> None:
        self.log_c = math.log(self.num_classes)
        if math.isnan(self.e_max):
            self.e_max = self.cfg.e_max_init * self.log_c

    @property
    def e_min(self) -> float:
        return self.cfg.e_min * self.log_c

    def reasons(self, probs: np.ndarray) -> np.ndarray:
        """Per-sample verdict (``KEEP``, ``LOW``, ...) for ``probs`` under the current state; no update."""
        ent = entropy(probs)
        verdict = np.full(len(ent), KEEP, np.int8)
        verdict[ent < self.e_min] = LOW
        verdict[ent > self.e_max] = HIGH
        if self.mean_probs is not None:
            p = np.asarray(probs, np.float64)
            cos = p @ self.mean_probs / (np.linalg.norm(p, axis=1) * np.linalg.norm(self.mean_probs) + 1e-12)
            verdict[(verdict == KEEP) & (cos > self.cfg.redundancy)] = REDUNDANT
        keep = np.flatnonzero(verdict == KEEP)
        cap = int(math.floor(self.cfg.max_fraction * len(ent)))
        if len(keep) > cap:
            order = keep[np.argsort(-ent[keep], kind="stable")]
            verdict[order[cap:]] = BUDGET
        return verdict

    def select(self, probs: np.ndarray) -> np.ndarray:
        """Boolean mask of the samples to upload; then update E_max and the running mean prediction."""
        probs = np.asarray(probs, np.float64)
        verdict = self.reasons(probs)
        mask = verdict == KEEP
        ent = entropy(probs)
        q = float(np.quantile(ent, self.cfg.quantile)) if len(ent) else self.e_max
        lo, hi = self.cfg.e_max_floor * self.log_c, self.log_c
        self.e_max = float(np.clip(self.cfg.decay * self.e_max + (1 - self.cfg.decay) * q, lo, hi))
        if mask.any():
            batch_mean = probs[mask].mean(0)
            self.mean_probs = batch_mean if self.mean_probs is None else \
                self.cfg.momentum * self.mean_probs + (1 - self.cfg.momentum) * batch_mean
        self.seen += len(probs)
        self.uploaded += int(mask.sum())
        for code, name in enumerate(REASONS):
            self.counts[name] += int((verdict == code).sum())
        return mask

    @property
    def fraction(self) -> float:
        """Fraction of all samples seen so far that were selected for upload."""
        return self.uploaded / self.seen if self.seen else 0.0
