"""Validation of one client update against the global adapter state, before anything touches it.

Pure functions: a client's delta is a flat ``name -> tensor`` mapping plus the backbone hash it claims;
the reference is the round's global :class:`~fedge.adapters.AdapterState`. A bad update raises
:class:`~fedge.errors.ValidationError` whose ``reason`` is one of :data:`REASONS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fedge.adapters import AdapterState
from fedge.errors import ValidationError

#: machine-readable rejection reasons, in the order they are checked
REASONS = (
    "malformed",
    "payload_size",
    "backbone_hash",
    "missing_tensor",
    "unknown_tensor",
    "shape",
    "dtype",
    "non_finite",
    "norm",
    "num_examples",
)


@dataclass(frozen=True)
class ValidationLimits:
    """Bounds an update must respect (server-side settings).

    ``max_delta_norm`` bounds the global L2 norm of the delta; ``None`` disables the check (with
    user-level DP the clipping bound applies anyway, this check catches garbage early).
    ``max_payload_bytes`` bounds the serialised update size; ``None`` means 4x the global state size.
    """

    max_delta_norm: float | None = 1e3
    max_payload_bytes: int | None = None
    max_num_examples: int = 10_000_000


def delta_norm(delta: Mapping[str, torch.Tensor]) -> float:
    """Global L2 norm over every tensor of ``delta`` (float64 accumulation)."""
    total = 0.0
    for t in delta.values():
        total += float(torch.sum(t.detach().to(torch.float64) ** 2))
    return math.sqrt(total)


def validate_update(
    delta: Mapping[str, torch.Tensor],
    global_state: AdapterState,
    backbone_hash: str,
    num_examples: int,
    payload_bytes: int,
    limits: ValidationLimits = ValidationLimits(),
) -> None:
    """Raise :class:`ValidationError` unless ``delta`` is a well-formed update of ``global_state``.

    Checks size, backbone identity, tensor names, shapes, dtypes, finiteness, norm and example count,
    in that order; the first failure is reported. Never modifies ``global_state``.
    """
    max_bytes = limits.max_payload_bytes
    if max_bytes is None:
        max_bytes = 4 * max(global_state.nbytes(), 1) + 4096
    if payload_bytes > max_bytes:
        raise ValidationError("payload_size", f"update is {payload_bytes} bytes, the limit is {max_bytes}")
    if backbone_hash != global_state.backbone_hash:
        raise ValidationError(
            "backbone_hash",
            f"update was trained on backbone {backbone_hash[:12]!r}, the run uses "
            f"{global_state.backbone_hash[:12]!r}",
        )
    missing = sorted(set(global_state) - set(delta))
    if missing:
        raise ValidationError("missing_tensor", f"{len(missing)} adapter tensors missing, e.g. {missing[:3]}")
    unknown = sorted(set(delta) - set(global_state))
    if unknown:
        raise ValidationError("unknown_tensor", f"{len(unknown)} unknown tensors, e.g. {unknown[:3]}")
    for name, ref in global_state.items():
        t = delta[name]
        if not isinstance(t, torch.Tensor):
            raise ValidationError("malformed", f"{name!r} is a {type(t).__name__}, not a tensor")
        if tuple(t.shape) != tuple(ref.shape):
            raise ValidationError("shape", f"{name!r} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
        if t.dtype != ref.dtype:
            raise ValidationError("dtype", f"{name!r} has dtype {t.dtype}, expected {ref.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise ValidationError("non_finite", f"{name!r} contains NaN or Inf")
    if limits.max_delta_norm is not None:
        norm = delta_norm(delta)
        if norm > limits.max_delta_norm:
            raise ValidationError("norm", f"delta L2 norm {norm:.4g} exceeds the bound {limits.max_delta_norm:.4g}")
    if not (0 < num_examples <= limits.max_num_examples):
        raise ValidationError(
            "num_examples", f"num_examples={num_examples} outside (0, {limits.max_num_examples}]"
        )
