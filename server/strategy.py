"""Adapter-delta-only aggregation: validate each client's delta, aggregate, apply to the old global state.

Without user-level DP the new global state is ``old + sum_i n_i * delta_i / sum_i n_i`` (example-weighted
FedAvg on deltas). With user-level DP (DP-FedAvg, McMahan et al. 2018) each delta is clipped to
``user_clip`` in L2, the clipped deltas are averaged with equal weight over the expected cohort size, and
Gaussian noise of std ``noise_multiplier * user_clip / cohort_size`` is added; the clip/noise math is
``fedge.privacy``'s. The strategy knows nothing about Flower's transport: it takes parsed updates and
returns a new :class:`~fedge.adapters.AdapterState`, so simulation and deployment share it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from fedge.adapters import AdapterState, apply_delta
from fedge.errors import ValidationError
from fedge.privacy.ledger import PrivacyLedger
from fedge.privacy.user_dp import UserDPConfig
from fedge.server import dp
from fedge.server.config import FederationConfig
from fedge.server.protocol import ClientUpdate
from fedge.server.task import pretrain_hparams, task_for
from fedge.server.validation import ValidationLimits, delta_norm, validate_update

log = logging.getLogger("fedge.server")


@dataclass(frozen=True)
class Rejection:
    """A client update that was not aggregated, and why."""

    node_id: int
    reason: str
    message: str


@dataclass
class AggregateResult:
    """The new global state plus what went into it."""

    state: AdapterState
    accepted: list[ClientUpdate]
    noise_std: float = 0.0
    clipped: int = 0
    mean_delta_norm: float = 0.0
    user_eps: float = math.inf


def weighted_mean(deltas: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """``sum_i w_i * delta_i / sum_i w_i`` per tensor (float64 accumulation, cast back to each dtype)."""
    if not deltas or len(deltas) != len(weights):
        raise ValueError("need one weight per delta and at least one delta")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    out: dict[str, torch.Tensor] = {}
    for name, ref in deltas[0].items():
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for d, w in zip(deltas, weights):
            acc += float(w) * d[name].to(torch.float64)
        out[name] = (acc / total).to(ref.dtype)
    return out


class AdapterDeltaStrategy:
    """Validation + (DP-)FedAvg on adapter deltas, configured by a :class:`FederationConfig`."""

    def __init__(self, cfg: FederationConfig) -> None:
        self.cfg = cfg
        self.limits = ValidationLimits(
            max_delta_norm=cfg.max_delta_norm if cfg.max_delta_norm > 0 else None,
            max_payload_bytes=cfg.max_payload_bytes if cfg.max_payload_bytes > 0 else None,
        )

    def train_hparams(self, round_num: int) -> dict[str, object]:
        """Round hyperparameters sent in the ``config`` record of every train message."""
        c = self.cfg
        return {
            "arch": c.arch, "pretrain-images": c.pretrain_images, "pretrain-epochs": c.pretrain_epochs,
            "label-set": c.label_set, "local-epochs": c.local_epochs, "lr": c.lr,
            "batch-size": c.batch_size, "optimizer": c.optimizer,
            "client-dp": c.client_dp, "noise-multiplier": c.client_noise_multiplier,
            "max-grad-norm": c.client_max_grad_norm, "target-delta": c.client_delta,
            "seed": c.seed * 100_003 + round_num,
            **pretrain_hparams(task_for(c).pretrain),  # the backbone's input and classifier size (real FLAIR)
        }

    def screen(self, updates: Iterable[ClientUpdate | Rejection], global_state: AdapterState
               ) -> tuple[list[ClientUpdate], list[Rejection]]:
        """Validate every update; rejected ones are logged with node and reason and left out."""
        valid: list[ClientUpdate] = []
        rejected: list[Rejection] = []
        for u in updates:
            if isinstance(u, Rejection):
                rejected.append(u)
                continue
            try:
                validate_update(u.delta, global_state, u.backbone_hash, u.num_examples, u.payload_bytes,
                                self.limits)
            except ValidationError as err:
                rejected.append(Rejection(u.node_id, err.reason, str(err)))
                continue
            valid.append(u)
        for r in rejected:
            log.warning("rejected update from node %s: %s", r.node_id, r.message)
        return valid, rejected

    def aggregate(self, global_state: AdapterState, valid: Sequence[ClientUpdate], round_num: int = 0,
                  ledger: PrivacyLedger | None = None, generator: torch.Generator | None = None) -> AggregateResult:
        """New global state from validated updates (``global_state`` itself is never modified).

        With user-level DP the release is recorded in ``ledger`` (required) before it is returned.
        """
        if not valid:
            raise ValueError("no valid updates to aggregate")
        norms = [delta_norm(u.delta) for u in valid]
        mean_norm = float(sum(norms) / len(norms))
        if not self.cfg.user_dp:
            mean = weighted_mean([u.delta for u in valid], [u.num_examples for u in valid])
            return AggregateResult(_apply(global_state, mean), list(valid), mean_delta_norm=mean_norm)
        if ledger is None:
            raise ValueError("user-level DP needs the run's privacy ledger")
        noised, spend, std = dp.dp_fedavg([u.delta for u in valid], self.user_dp_config(), ledger, round_num,
                                          self.user_sample_rate(), generator)
        clipped = sum(1 for n in norms if n > self.cfg.user_clip)
        return AggregateResult(_apply(global_state, noised), list(valid), noise_std=std, clipped=clipped,
                               mean_delta_norm=mean_norm, user_eps=spend.epsilon_after)

    def user_dp_config(self) -> UserDPConfig:
        """Fixed-clip DP-FedAvg over the expected cohort size."""
        return UserDPConfig(noise_multiplier=self.cfg.user_noise_multiplier, clip_norm=self.cfg.user_clip,
                            expected_cohort_size=float(self.cfg.cohort_size))

    def user_sample_rate(self) -> float:
        """Poisson rate q = cohort / population: each connected user joins a round with probability q.

        The loop samples exactly so (``fedge.privacy.poisson_cohort``) when user-level noise is on.
        """
        population = self.cfg.population_size or self.cfg.cohort_size
        return min(1.0, self.cfg.cohort_size / population)


def _apply(state: AdapterState, delta: Mapping[str, torch.Tensor]) -> AdapterState:
    return apply_delta(state, state.with_tensors(delta))
