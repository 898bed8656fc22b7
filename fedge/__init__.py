"""fedge: federated, differentially private on-device adaptation of small adapters."""

import os

# Flower reports usage events to its servers unless told not to; a privacy framework must not phone home by
# default, and every fedge process (and each Flower process it starts, via the environment) imports this
# package before Flower. Set FLWR_TELEMETRY_ENABLED=1 to opt in.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from fedge.errors import (
    AdapterMismatchError,
    ConfigError,
    DataError,
    FedgeError,
    PrivacyBudgetExceeded,
    ValidationError,
)

__version__ = "0.1.0"

__all__ = [
    "AdapterMismatchError",
    "ConfigError",
    "DataError",
    "FedgeError",
    "PrivacyBudgetExceeded",
    "ValidationError",
    "__version__",
]
