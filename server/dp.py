"""The server's seam to ``fedge.privacy``: user-level DP-FedAvg releases recorded in the run's ledger.

No DP math here: :func:`fedge.privacy.user_dp.dp_fedavg_aggregate` clips, averages, noises and records.
This module only makes the release idempotent per round for ``--resume``: if a crash hit after a round's
spend was recorded but before the round committed, the redone round reuses that spend (the first
aggregate was never released), so no round is counted twice and no recorded spend is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from fedge.privacy.ledger import POPULATION, PrivacyLedger, Spend
from fedge.privacy.user_dp import UserDPConfig, dp_fedavg_aggregate, noise_std

RUN = "federation"


def open_ledger(path: str | Path, epsilon_budget: float, delta: float) -> PrivacyLedger:
    """The run's ledger with its user-level budget (``epsilon_budget <= 0`` means no limit)."""
    ledger = PrivacyLedger(path)
    ledger.open_run(RUN, epsilon=epsilon_budget if epsilon_budget > 0 else math.inf, delta=delta, unit="user")
    return ledger


class _ReuseSpend:
    """Ledger view for a redone round whose spend is already recorded: no new check, no new row."""

    def __init__(self, spend: Spend) -> None:
        self._spend = spend

    def check(self, *args: object, **kwargs: object) -> float:
        return self._spend.epsilon_after

    def record(self, *args: object, **kwargs: object) -> Spend:
        return self._spend


def recorded_spend(ledger: PrivacyLedger, round_num: int) -> Spend | None:
    """The population spend already recorded for ``round_num``, if any."""
    spends = [s for s in ledger.spends(RUN) if s.subject == POPULATION and s.round == round_num]
    return spends[-1] if spends else None


def check_round(ledger: PrivacyLedger, round_num: int, noise_multiplier: float, sample_rate: float) -> None:
    """Raise :class:`~fedge.errors.PrivacyBudgetExceeded` before a round that would pass the budget."""
    if recorded_spend(ledger, round_num) is None:
        ledger.check(RUN, POPULATION, noise_multiplier, sample_rate, 1)


def dp_fedavg(deltas: Sequence[Mapping[str, torch.Tensor]], config: UserDPConfig, ledger: PrivacyLedger,
              round_num: int, sample_rate: float, generator: torch.Generator | None = None
              ) -> tuple[dict[str, torch.Tensor], Spend, float]:
    """One recorded DP-FedAvg release; returns ``(noised mean delta, spend, noise std on the mean)``."""
    existing = recorded_spend(ledger, round_num)
    view = _ReuseSpend(existing) if existing is not None else ledger
    noised, _, spend = dp_fedavg_aggregate(deltas, config, ledger=view, run=RUN, round=round_num,  # type: ignore[arg-type]
                                           sample_rate=sample_rate, generator=generator)
    std = noise_std(config.update_noise_multiplier, config.clip_norm, config.expected_cohort_size)
    return noised, spend, std


def user_epsilon(ledger: PrivacyLedger) -> float:
    """User-level epsilon of the run so far (0 before any DP round)."""
    return ledger.epsilon(RUN, POPULATION) if ledger.accountant(RUN, POPULATION).steps else 0.0
