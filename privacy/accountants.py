"""Privacy accountants: small objects with a ``history`` of ``(noise_multiplier, sample_rate, steps)``.

They wrap Opacus' RDP and PRV accountants (the math is Opacus'); fedge adds batched steps, a
hypothetical ``epsilon_after`` for budget checks, and a :class:`PrivacyReport` that always names the
DP unit, delta, accountant and sampling assumption. Every epsilon assumes the Poisson-subsampled
Gaussian mechanism: each example (or user) is included independently with probability ``sample_rate``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedge.errors import ConfigError

AccountantName = Literal["rdp", "prv"]
Unit = Literal["example", "user"]
Step = tuple[float, float, int]
ACCOUNTANTS: dict[str, type[IAccountant]] = {"rdp": RDPAccountant, "prv": PRVAccountant}
SAMPLING = "poisson"
#: RDP orders: Opacus' defaults (1.1 ... 63) and a geometric tail to 1024. Small epsilons (few steps,
#: low sampling rate or large noise) are tightest at orders above 63, where Opacus' defaults stop and
#: warn "Optimal order is the largest alpha"; the tail makes those bounds tighter (never looser: the
#: minimum is over a superset) for a few milliseconds per epsilon.
RDP_ORDERS: tuple[float, ...] = (
    *RDPAccountant.DEFAULT_ALPHAS,
    *(80, 96, 128, 160, 192, 256, 384, 512, 768, 1024),
)


@dataclass(frozen=True)
class PrivacyReport:
    """An (epsilon, delta) guarantee with everything needed to read it correctly."""

    epsilon: float
    delta: float
    unit: Unit
    accountant: str
    sampling: str = SAMPLING
    steps: int = 0

    def __str__(self) -> str:
        steps = f", {self.steps} steps" if self.steps else ""  # 0: the report does not know the step count
        return (
            f"({self.epsilon:.3f}, {self.delta:g})-DP per {self.unit}, {self.accountant.upper()} accountant, "
            f"{self.sampling} sampling{steps}"
        )


def _check_step(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise ConfigError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier}")
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if steps < 0 or int(steps) != steps:
        raise ConfigError(f"steps must be a non-negative integer, got {steps}")


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta}; a common choice is 1/(10 * population)")


class Accountant:
    """Composes Poisson-subsampled Gaussian steps; ``name`` is ``"rdp"`` or ``"prv"``.

    ``history`` holds ``(noise_multiplier, sample_rate, steps)`` tuples, merging consecutive equal
    mechanisms, exactly like Opacus. Save it with :meth:`state_dict`, restore with :meth:`load_state_dict`.
    """

    def __init__(self, name: AccountantName = "rdp", history: Iterable[Step] = ()) -> None:
        if name not in ACCOUNTANTS:
            raise ConfigError(f"unknown accountant {name!r}; choose one of {sorted(ACCOUNTANTS)}")
        self.name: str = name
        self.history: list[Step] = []
        for noise_multiplier, sample_rate, steps in history:
            self.step(noise_multiplier, sample_rate, steps)

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` applications of the Gaussian mechanism with Poisson rate ``sample_rate``."""
        _check_step(noise_multiplier, sample_rate, steps)
        if steps == 0:
            return
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            self.history[-1] = (noise_multiplier, sample_rate, self.history[-1][2] + int(steps))
        else:
            self.history.append((float(noise_multiplier), float(sample_rate), int(steps)))

    @property
    def steps(self) -> int:
        """Total number of composed steps."""
        return sum(s for _, _, s in self.history)

    def get_epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (an upper bound for PRV; ``inf`` if any step had no noise)."""
        return _epsilon(self.name, self.history, delta)

    def epsilon_after(self, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
        """Epsilon that spending ``steps`` more would reach; the accountant itself is unchanged."""
        trial = Accountant(self.name, self.history)  # type: ignore[arg-type]
        trial.step(noise_multiplier, sample_rate, steps)
        return trial.get_epsilon(delta)

    def report(self, delta: float, unit: Unit) -> PrivacyReport:
        """The current guarantee as a self-describing report."""
        return PrivacyReport(self.get_epsilon(delta), delta, unit, self.name, SAMPLING, self.steps)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state for checkpoints."""
        return {"accountant": self.name, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; refuses a history recorded by another accountant."""
        if state.get("accountant") != self.name:
            raise ConfigError(f"state of accountant {state.get('accountant')!r} cannot load into {self.name!r}")
        self.history = []
        for noise_multiplier, sample_rate, steps in state["history"]:
            self.step(float(noise_multiplier), float(sample_rate), int(steps))

    def __repr__(self) -> str:
        return f"Accountant({self.name!r}, history={self.history})"


def _epsilon(name: str, history: list[Step], delta: float) -> float:
    _check_delta(delta)
    return _epsilon_cached(name, tuple(tuple(h) for h in history if h[2] > 0), delta)  # type: ignore[arg-type]


@lru_cache(maxsize=1024)
def _epsilon_cached(name: str, history: tuple[Step, ...], delta: float) -> float:
    # Pure and slow (PRV: an FFT; RDP: series for fractional orders); a budget check and the spend
    # that follows it ask for the same value.
    if not history:
        return 0.0
    if any(z == 0 for z, _, _ in history):
        return math.inf
    acc = ACCOUNTANTS[name]()
    acc.history = [tuple(h) for h in history]
    if name == "prv":
        # Opacus' default eps_error (0.01 absolute) is coarse for small epsilons; tighten it.
        eps = acc.get_epsilon(delta, eps_error=0.001)
    else:
        eps = acc.get_epsilon(delta, alphas=list(RDP_ORDERS))
    # The RDP-to-DP conversion can dip just below 0 when almost nothing is spent; (0, delta) holds then.
    return max(0.0, float(eps))


def compute_epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: AccountantName = "rdp"
) -> float:
    """Epsilon of ``steps`` Poisson-subsampled Gaussian steps (a one-off, no history kept)."""
    return Accountant(accountant, [(noise_multiplier, sample_rate, steps)]).get_epsilon(delta)


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantName = "rdp",
    tolerance: float = 0.01,
) -> float:
    """Smallest noise multiplier (to ``tolerance`` in epsilon) whose ``steps`` steps stay within ``target_epsilon``.

    Returns 0.0 for ``target_epsilon == inf`` (no privacy).
    """
    if target_epsilon == math.inf:
        return 0.0
    if not target_epsilon > 0:
        raise ConfigError(f"target_epsilon must be > 0, got {target_epsilon}")
    _check_step(1.0, sample_rate, steps)
    _check_delta(delta)
    if steps == 0:
        return 0.0
    kwargs: dict[str, Any] = {"eps_error": 0.001} if accountant == "prv" else {"alphas": list(RDP_ORDERS)}
    try:
        with warnings.catch_warnings():
            # The search's first brackets (sigma 20, 40, ...) spend far less than any target and peak above
            # the largest order; they are discarded, so their "largest alpha" warning says nothing.
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            sigma = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=tolerance,
                **kwargs,
            )
        return float(sigma)
    except ValueError as err:
        raise ConfigError(
            f"cannot reach epsilon={target_epsilon} at delta={delta} with q={sample_rate}, {steps} steps: {err}; "
            "raise the budget, lower the sample rate or run fewer steps"
        ) from err
