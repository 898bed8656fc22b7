"""fedge.privacy: every epsilon in fedge — accountants, the privacy ledger, user-level DP-FedAvg,
example-level DP-SGD on adapters (Opacus) and the LiRA membership-inference audit.

Light parts (accountants, ledger, user-level DP math) import eagerly; DP-SGD and the audit load on
first use so that e.g. a server that only aggregates does not pay for Opacus' training stack.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from fedge.privacy.accountants import Accountant, PrivacyReport, calibrate_noise, compute_epsilon
from fedge.privacy.ledger import POPULATION, Budget, PrivacyLedger, Spend
from fedge.privacy.user_dp import (
    UserDPConfig,
    add_gaussian_noise,
    calibrate_user_noise,
    clip_update,
    dp_fedavg_aggregate,
    global_l2_norm,
    noise_std,
    poisson_cohort,
    update_clip_norm,
)

if TYPE_CHECKING:
    from fedge.privacy.audit import AuditMetrics, leave_one_out_audit, lira_scores, plot_roc, roc_metrics
    from fedge.privacy.dp_sgd import DPSGDConfig, DPSGDResult, plan, train_dp_sgd

_LAZY = {
    "DPSGDConfig": "dp_sgd",
    "DPSGDResult": "dp_sgd",
    "plan": "dp_sgd",
    "train_dp_sgd": "dp_sgd",
    "AuditMetrics": "audit",
    "leave_one_out_audit": "audit",
    "lira_scores": "audit",
    "plot_roc": "audit",
    "roc_metrics": "audit",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"fedge.privacy.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'fedge.privacy' has no attribute {name!r}")


__all__ = [
    "POPULATION",
    "Accountant",
    "AuditMetrics",
    "Budget",
    "DPSGDConfig",
    "DPSGDResult",
    "PrivacyLedger",
    "PrivacyReport",
    "Spend",
    "UserDPConfig",
    "add_gaussian_noise",
    "calibrate_noise",
    "calibrate_user_noise",
    "clip_update",
    "compute_epsilon",
    "dp_fedavg_aggregate",
    "global_l2_norm",
    "leave_one_out_audit",
    "lira_scores",
    "noise_std",
    "poisson_cohort",
    "plan",
    "plot_roc",
    "roc_metrics",
    "train_dp_sgd",
    "update_clip_norm",
]
