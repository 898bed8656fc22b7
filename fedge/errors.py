"""The small hierarchy of errors that fedge raises for user mistakes.

CLIs turn any :class:`FedgeError` into one readable line and a non-zero exit; everything else is a bug.
"""

from __future__ import annotations


class FedgeError(Exception):
    """Base class of every error fedge raises on purpose (bad input, missing data, exhausted budget)."""


class ConfigError(FedgeError, ValueError):
    """A setting is missing, out of range or contradicts another one."""


class DataError(FedgeError):
    """A dataset is missing, corrupt or laid out differently than expected."""


class AdapterMismatchError(FedgeError):
    """An adapter state does not fit the model it is loaded into (backbone, names, shapes, spec)."""


class ValidationError(FedgeError):
    """An update or message failed validation; ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class PrivacyBudgetExceeded(FedgeError):
    """Work was refused because it would spend more privacy budget than configured."""
