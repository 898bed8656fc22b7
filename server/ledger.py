"""The run's user-level privacy accounting: a ``fedge.privacy`` accountant plus its durable ledger.

One ledger entry per round, keyed by the round number: a round interrupted after its spend was recorded
and then redone after ``--resume`` reuses that entry instead of adding a second one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedge.errors import PrivacyBudgetExceeded
from fedge.privacy.accountants import Accountant
from fedge.server.config import FederationConfig


class RunLedger:
    """User-level (epsilon, delta) of the run so far; refuses a round that would exceed the budget."""

    def __init__(self, path: str | Path, cfg: FederationConfig) -> None:
        self.path = Path(path)
        self.cfg = cfg
        self.accountant = Accountant("rdp")
        self._store = _open_store(self.path)

    # accountant state travels in the checkpoint (the commit record)
    def accountant_state(self) -> dict[str, Any]:
        return self.accountant.state_dict()

    def load_accountant_state(self, state: dict[str, Any]) -> None:
        if state:
            self.accountant.load_state_dict(state)

    def _active(self) -> bool:
        return self.cfg.user_dp and self.cfg.user_noise_multiplier > 0

    def epsilon(self) -> float:
        """User-level epsilon so far (``inf`` without user-level noise, 0 before any round)."""
        if not self._active():
            return math.inf if self.accountant.steps or not self.cfg.user_dp else 0.0
        return self.accountant.get_epsilon(self.cfg.user_delta) if self.accountant.steps else 0.0

    def check_budget(self, round_num: int) -> None:
        """Raise :class:`PrivacyBudgetExceeded` if round ``round_num`` would exceed ``epsilon_budget``."""
        if self.cfg.epsilon_budget <= 0 or not self._active():
            return
        after = self.accountant.epsilon_after(self.cfg.user_noise_multiplier, self._rate(), 1, self.cfg.user_delta)
        if after > self.cfg.epsilon_budget:
            raise PrivacyBudgetExceeded(
                f"round {round_num} would bring user-level epsilon to {after:.3f} > budget "
                f"{self.cfg.epsilon_budget}; raise --epsilon-budget or --user-noise, or stop here")

    def _rate(self) -> float:
        return min(1.0, self.cfg.cohort_size / max(self.cfg.population_size, 1))

    def spend(self, round_num: int, sample_rate: float) -> float:
        """Compose round ``round_num`` into the accountant; returns the epsilon after it."""
        if not self._active():
            return math.inf if self.cfg.user_dp is False else math.inf
        self.accountant.step(self.cfg.user_noise_multiplier, sample_rate, 1)
        return self.accountant.get_epsilon(self.cfg.user_delta)

    def record(self, round_num: int, epsilon: float) -> None:
        """Durably record round ``round_num``'s cumulative epsilon (idempotent per round)."""
        self._store.record(round_num, epsilon, self.accountant.state_dict())

    def recorded_rounds(self) -> list[int]:
        return self._store.rounds()


def _open_store(path: Path) -> Any:
    from fedge.server._ledger_store import RoundLedgerStore

    return RoundLedgerStore(path)
