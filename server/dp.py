"""The server's seam to ``fedge.privacy``: user-level DP-FedAvg and the run's privacy ledger.

Nothing here does DP math of its own; it adapts ``fedge.privacy``'s pure functions and ledger to what
the round loop needs (one ledger entry per round, idempotent, so a resumed round is never counted twice).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedge import privacy


def dp_fedavg(deltas: Sequence[Mapping[str, torch.Tensor]], clip: float, noise_multiplier: float,
              expected_cohort: int, generator: torch.Generator | None = None
              ) -> tuple[dict[str, torch.Tensor], int, float]:
    """Clip each delta to ``clip``, average over ``expected_cohort``, add Gaussian noise.

    Returns ``(noisy mean delta, number of clipped deltas, noise std on the mean)``.
    """
    return privacy.dp_fedavg(deltas, clip=clip, noise_multiplier=noise_multiplier,
                             expected_cohort=expected_cohort, generator=generator)
