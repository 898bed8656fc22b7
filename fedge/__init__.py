"""fedge: federated, differentially private on-device adaptation of small adapters."""

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
