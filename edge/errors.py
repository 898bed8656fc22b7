"""Errors raised by fedge.edge; torch-free so the phone-side runtime can use them."""

from __future__ import annotations

from fedge.errors import FedgeError


class BundleError(FedgeError):
    """A bundle is missing, corrupt, or does not match the model or runtime it is used with."""


class ParityError(FedgeError):
    """An exported or converted model disagrees with its PyTorch (or float) reference."""


class ExportError(FedgeError):
    """A model cannot be exported, quantized or converted for the edge."""
