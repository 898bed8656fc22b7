"""Membership-inference audit: LiRA (Carlini et al. 2022, "Membership inference attacks from first principles").

Each of M models is trained on a random half of a pool of N examples (``in_mask[m, i]``). For every model
and example we keep the logit-scaled confidence ``phi = log p_y - log(1 - p_y)`` (Sec. IV.C). Auditing
model t leaves it out and fits, per example, Gaussians to the phi of the other ("shadow") models that
did (IN) and did not (OUT) train on it. Online LiRA scores ``log N(phi_t; IN) - log N(phi_t; OUT)``;
offline LiRA uses OUT only, ``log P(Z < phi_t)``. Scores of all targets are pooled into one ROC curve,
reported as AUC and TPR at 0.1% and 1% FPR (the low-FPR regime the paper argues matters).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import norm

from fedge.errors import ConfigError


@dataclass(frozen=True)
class AuditMetrics:
    """Attack success: area under the ROC curve and true-positive rates at low false-positive rates."""

    auc: float
    tpr_at_0_1_fpr: float
    tpr_at_1_fpr: float
    num_scores: int

    def as_dict(self) -> dict[str, float]:
        return {
            "auc": round(self.auc, 4),
            "tpr@0.1%fpr": round(self.tpr_at_0_1_fpr, 4),
            "tpr@1%fpr": round(self.tpr_at_1_fpr, 4),
            "num_scores": self.num_scores,
        }


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``log p_y - log(1 - p_y)`` per row, computed stably from logits as ``z_y - logsumexp(z_{!=y})``."""
    logits = np.asarray(logits, dtype=np.float64)
    idx = np.arange(len(labels))
    true = logits[idx, labels]
    others = logits.copy()
    others[idx, labels] = -np.inf
    peak = others.max(axis=1, keepdims=True)
    lse = peak[:, 0] + np.log(np.exp(others - peak).sum(axis=1))
    return true - lse


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) for thresholds at every distinct score, highest first; labels are 1 for members."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        raise ConfigError("an ROC curve needs both members and non-members")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.diff(s) != 0, True]  # keep the last index of each run of tied scores
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    return np.r_[0.0, fp / (~y).sum()], np.r_[0.0, tp / y.sum()]


def roc_metrics(scores: np.ndarray, labels: np.ndarray) -> AuditMetrics:
    """AUC and TPR at 0.1% / 1% FPR (the largest TPR whose FPR does not exceed the level)."""
    fpr, tpr = roc_curve(scores, labels)
    auc = float(np.trapezoid(tpr, fpr))

    def tpr_at(level: float) -> float:
        return float(tpr[fpr <= level].max())

    return AuditMetrics(auc, tpr_at(0.001), tpr_at(0.01), len(scores))


def lira_scores(
    target_conf: np.ndarray,
    shadow_conf: np.ndarray,
    shadow_in: np.ndarray,
    online: bool = True,
    global_variance: bool = True,
) -> np.ndarray:
    """LiRA membership scores (higher: more likely a member) for one target model; NaN where unusable.

    ``shadow_conf``/``shadow_in`` are [M, N]. ``global_variance`` pools the variance over examples,
    which the paper recommends when there are few shadow models (< 64).
    """
    shadow_conf, shadow_in = np.asarray(shadow_conf, dtype=np.float64), np.asarray(shadow_in).astype(bool)
    if shadow_conf.shape != shadow_in.shape or shadow_conf.shape[1] != len(target_conf):
        raise ConfigError("shadow_conf, shadow_in must be [models, examples] and match target_conf")
    out = ~shadow_in

    def stats(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count = mask.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(mask, shadow_conf, 0).sum(0) / count
            var = np.where(mask, (shadow_conf - mean) ** 2, 0).sum(0) / np.maximum(count - 1, 1)
        var[count < 2] = np.nan
        if global_variance:
            var = np.full_like(var, np.nanmedian(var) if np.isfinite(var).any() else np.nan)
        return mean, np.sqrt(var) + 1e-6

    # Examples without IN (online) or OUT shadow models get NaN: callers drop them.
    mu_out, sd_out = stats(out)
    if not online:
        return norm.logcdf(target_conf, mu_out, sd_out)
    mu_in, sd_in = stats(shadow_in)
    return norm.logpdf(target_conf, mu_in, sd_in) - norm.logpdf(target_conf, mu_out, sd_out)


def leave_one_out_audit(
    conf: np.ndarray, in_mask: np.ndarray, online: bool = True
) -> tuple[AuditMetrics, np.ndarray, np.ndarray]:
    """Audit every model with the others as shadows; returns (metrics, pooled scores, pooled labels)."""
    conf, in_mask = np.asarray(conf), np.asarray(in_mask).astype(bool)
    models = conf.shape[0]
    if models < 3:
        raise ConfigError("LiRA needs at least 3 models (one target, two or more shadows)")
    scores, labels = [], []
    for t in range(models):
        keep = np.arange(models) != t
        score = lira_scores(conf[t], conf[keep], in_mask[keep], online=online)
        usable = np.isfinite(score)
        scores.append(score[usable])
        labels.append(in_mask[t][usable])
    s, y = np.concatenate(scores), np.concatenate(labels)
    if len(s) == 0:
        raise ConfigError("no example had both IN and OUT shadow models; train more shadow models")
    return roc_metrics(s, y), s, y


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "LiRA") -> Path:
    """Log-log ROC curves (as in the LiRA paper) for ``label -> (scores, labels)``; saves a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for label, (scores, labels) in curves.items():
        fpr, tpr = roc_curve(scores, labels)
        auc = roc_metrics(scores, labels).auc
        ax.plot(np.maximum(fpr, 1e-5), np.maximum(tpr, 1e-5), label=f"{label} (AUC {auc:.3f})")
    ax.plot([1e-5, 1], [1e-5, 1], "k:", lw=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(1e-4, 1), ylim=(1e-4, 1), xlabel="false positive rate",
           ylabel="true positive rate", title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
