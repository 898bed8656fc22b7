"""User-level DP-FedAvg as pure functions on flat ``name -> tensor`` updates.

Semantics (McMahan et al. 2018, "Learning differentially private recurrent language models"):
each sampled client's adapter delta is clipped to L2 norm ``C`` over *all* its tensors, the clipped
deltas are summed and divided by the *expected* cohort size ``m = q * N`` (a fixed denominator, so one
user changes the average by at most ``C / m``), and Gaussian noise with std ``z * C / m`` is added once
to the average. Adaptive clipping follows Andrew et al. 2021 ("Differentially private learning with
adaptive clipping"): ``C`` tracks a target quantile of update norms using a noised count of unclipped
updates, and the update noise is raised so the pair of releases has the same privacy as ``z`` alone.
Accounting: one Poisson-subsampled Gaussian step (rate ``q``, noise ``z``) per round, unit "user".
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import torch

from fedge.errors import ConfigError
from fedge.privacy.accountants import AccountantName, calibrate_noise
from fedge.privacy.ledger import POPULATION, PrivacyLedger, Spend

Update = Mapping[str, torch.Tensor]
T = TypeVar("T")


def global_l2_norm(update: Update) -> float:
    """L2 norm of all tensors of an update taken together."""
    if not update:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([t.detach().double().norm() for t in update.values()])))


def clip_update(update: Update, clip_norm: float) -> tuple[dict[str, torch.Tensor], float]:
    """Scale ``update`` so its global L2 norm is at most ``clip_norm``; returns (clipped, original norm)."""
    if not clip_norm > 0:
        raise ConfigError(f"clip_norm must be > 0, got {clip_norm}")
    norm = global_l2_norm(update)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: v * factor for k, v in update.items()}, norm


def noise_std(noise_multiplier: float, clip_norm: float, expected_cohort_size: float) -> float:
    """Std of the Gaussian noise on the averaged update: ``z * C / m`` (same as Flower's ``compute_stdv``)."""
    return noise_multiplier * clip_norm / expected_cohort_size


def sum_updates(updates: Sequence[Update]) -> dict[str, torch.Tensor]:
    """Element-wise sum of updates that share names, shapes and dtypes."""
    if not updates:
        raise ConfigError("cannot aggregate an empty cohort")
    names = set(updates[0])
    out = {k: v.detach().clone() for k, v in updates[0].items()}
    for u in updates[1:]:
        if set(u) != names:
            raise ConfigError(f"updates disagree on tensor names: {sorted(names ^ set(u))}")
        for k, v in u.items():
            out[k] += v
    return out


def add_gaussian_noise(update: Update, std: float, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """``update`` plus i.i.d. N(0, std^2) on every coordinate."""
    return {
        k: v + std * torch.randn(v.shape, generator=generator, dtype=v.dtype, device=v.device) if std > 0 else v.clone()
        for k, v in update.items()
    }


def split_noise_multiplier(noise_multiplier: float, clipped_count_stddev: float) -> float:
    """Noise multiplier for the update when the clipped count is also released (Andrew et al. 2021, Thm. 1).

    ``z_update = (z^-2 - (2 * sigma_b)^-2)^(-1/2)``, so (update, count) together cost what ``z`` costs.
    """
    if noise_multiplier == 0:
        return 0.0
    if 2 * clipped_count_stddev <= noise_multiplier:
        raise ConfigError(
            f"clipped_count_stddev={clipped_count_stddev} is too small for noise_multiplier={noise_multiplier}; "
            f"it must exceed {noise_multiplier / 2} (default: expected cohort size / 20)"
        )
    return (noise_multiplier**-2 - (2 * clipped_count_stddev) ** -2) ** -0.5


def update_clip_norm(
    clip_norm: float,
    norms: Sequence[float],
    expected_cohort_size: float,
    target_quantile: float,
    learning_rate: float,
    clipped_count_stddev: float,
    generator: torch.Generator | None = None,
) -> float:
    """Geometric update of ``C`` towards the ``target_quantile`` of update norms (Andrew et al. 2021, Alg. 1).

    Each client contributes ``1[norm <= C]``; the sum gets N(0, sigma_b^2) noise and is divided by ``m``.
    """
    unclipped = sum(1.0 for n in norms if n <= clip_norm)
    noise = float(torch.randn((), generator=generator, dtype=torch.float64)) * clipped_count_stddev
    fraction = (unclipped + noise) / expected_cohort_size
    return clip_norm * math.exp(-learning_rate * (fraction - target_quantile))


@dataclass(frozen=True)
class UserDPConfig:
    """DP-FedAvg settings; ``noise_multiplier`` is the one the accountant sees (the update's, when fixed)."""

    noise_multiplier: float
    clip_norm: float
    expected_cohort_size: float
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clipped_count_stddev: float | None = None  # default expected_cohort_size / 20 (Andrew et al.)

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0 or not self.clip_norm > 0 or not self.expected_cohort_size > 0:
            raise ConfigError(f"need noise_multiplier >= 0, clip_norm > 0, expected_cohort_size > 0; got {self}")
        if not 0 <= self.target_quantile <= 1:
            raise ConfigError(f"target_quantile must be in [0, 1], got {self.target_quantile}")

    @property
    def count_stddev(self) -> float:
        """Std of the noise on the unclipped-count sum (adaptive clipping only)."""
        if not self.adaptive:
            return 0.0
        return self.clipped_count_stddev if self.clipped_count_stddev is not None else self.expected_cohort_size / 20

    @property
    def update_noise_multiplier(self) -> float:
        """Noise multiplier applied to the averaged update (raised under adaptive clipping)."""
        if not self.adaptive:
            return self.noise_multiplier
        return split_noise_multiplier(self.noise_multiplier, self.count_stddev)


def dp_fedavg_aggregate(
    updates: Sequence[Update],
    config: UserDPConfig,
    *,
    ledger: PrivacyLedger,
    run: str,
    round: int,
    sample_rate: float,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], UserDPConfig, Spend]:
    """One DP-FedAvg release: check budget, clip, average over ``m``, noise, record.

    Returns (noised average delta, config for the next round with the adapted clip norm, spend).
    ``sample_rate`` is the Poisson cohort rate q the accountant assumes. The budget is checked before
    any update is touched; the spend is recorded before the aggregate is returned.
    """
    ledger.check(run, POPULATION, config.noise_multiplier, sample_rate, 1)
    clipped, norms = [], []
    for u in updates:
        c, n = clip_update(u, config.clip_norm)
        clipped.append(c)
        norms.append(n)
    m = config.expected_cohort_size
    mean = {k: v / m for k, v in sum_updates(clipped).items()}
    std = noise_std(config.update_noise_multiplier, config.clip_norm, m)
    noised = add_gaussian_noise(mean, std, generator)
    next_config = config
    if config.adaptive:
        new_c = update_clip_norm(
            config.clip_norm, norms, m, config.target_quantile, config.clip_learning_rate,
            config.count_stddev, generator,
        )
        next_config = replace(config, clip_norm=new_c)
    spend = ledger.record(run, round, POPULATION, config.noise_multiplier, sample_rate, 1)
    return noised, next_config, spend


def poisson_cohort(node_ids: Sequence[T], sample_rate: float, rng: random.Random | None = None) -> list[T]:
    """Each node joins independently with probability ``sample_rate``: the cohort the accountant assumes.

    A fixed-size ``random.sample`` is a different mechanism; with it the Poisson epsilon is only an
    approximation. The cohort may be empty or larger than ``sample_rate * len(node_ids)``: that is
    intended (the average still divides by the expected size).
    """
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate}")
    draw = (rng or random.SystemRandom()).random
    return [n for n in node_ids if draw() < sample_rate]


def calibrate_user_noise(
    target_epsilon: float,
    delta: float,
    rounds: int,
    cohort_sample_rate: float,
    accountant: AccountantName = "rdp",
) -> float:
    """Noise multiplier z so that ``rounds`` DP-FedAvg rounds at cohort rate q spend at most ``target_epsilon``."""
    return calibrate_noise(target_epsilon, delta, cohort_sample_rate, rounds, accountant)
