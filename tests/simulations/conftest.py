"""Small simulation settings: a tiny backbone (seconds to pretrain), 40 users, cohorts of 3."""

from __future__ import annotations

from typing import Any

TINY: dict[str, Any] = {
    "federation.pretrain_images": 300, "federation.pretrain_epochs": 0.2, "federation.rounds": 2,
    "federation.cohort_size": 3, "federation.min_clients": 2, "federation.eval_users": 3,
    "federation.local_epochs": 1.0, "federation.lr": 0.1, "federation.round_timeout_s": 900.0,
    "simulation.num_users": 40, "simulation.test_users": 4, "simulation.eval_every": 1,
    "simulation.backend": "inprocess",
}


def tiny(**overrides: Any) -> dict[str, Any]:
    """TINY with ``key=value`` overrides (``simulation__x`` / ``federation__x`` for dotted keys)."""
    return {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}
