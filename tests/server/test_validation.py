"""Every rejection reason of ``fedge.server.validation``, each from a crafted bad update."""

from __future__ import annotations

import pytest
import torch

from fedge.adapters import AdapterSpec, AdapterState
from fedge.errors import ValidationError
from fedge.server.validation import REASONS, ValidationLimits, delta_norm, validate_update

HASH = "a" * 64


@pytest.fixture()
def state() -> AdapterState:
    g = torch.Generator().manual_seed(0)
    tensors = {"film.0.gamma": torch.randn(8, generator=g), "film.0.beta": torch.randn(8, generator=g),
               "head.weight": torch.randn(4, 8, generator=g)}
    return AdapterState(tensors, [AdapterSpec(kind="film")], HASH)


def good_delta(state: AdapterState) -> dict[str, torch.Tensor]:
    return {k: 0.01 * torch.ones_like(v) for k, v in state.items()}


def snapshot(state: AdapterState) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state.items()}


def _bad(state: AdapterState, reason: str) -> dict:
    """Arguments of validate_update for an update that fails exactly with ``reason``."""
    d = good_delta(state)
    args = {"delta": d, "backbone_hash": HASH, "num_examples": 10, "payload_bytes": 100}
    if reason == "malformed":
        d["head.weight"] = [[0.0] * 8] * 4  # not a tensor
    elif reason == "payload_size":
        args["payload_bytes"] = 10**9
    elif reason == "backbone_hash":
        args["backbone_hash"] = "b" * 64
    elif reason == "missing_tensor":
        del d["film.0.beta"]
    elif reason == "unknown_tensor":
        d["evil.extra"] = torch.zeros(3)
    elif reason == "shape":
        d["head.weight"] = torch.zeros(8, 4)
    elif reason == "dtype":
        d["head.weight"] = torch.zeros(4, 8, dtype=torch.float64)
    elif reason == "non_finite":
        d["film.0.gamma"] = d["film.0.gamma"].clone()
        d["film.0.gamma"][3] = float("nan")
    elif reason == "norm":
        d["film.0.gamma"] = torch.full((8,), 1e6)
    elif reason == "num_examples":
        args["num_examples"] = 0
    return args


def test_good_update_passes(state: AdapterState) -> None:
    validate_update(good_delta(state), state, HASH, num_examples=10, payload_bytes=100)


@pytest.mark.parametrize("reason", REASONS)
def test_each_reason_is_rejected_and_state_unchanged(state: AdapterState, reason: str) -> None:
    before = snapshot(state)
    with pytest.raises(ValidationError) as info:
        validate_update(global_state=state, limits=ValidationLimits(max_delta_norm=100.0), **_bad(state, reason))
    assert info.value.reason == reason
    assert set(state) == set(before)
    assert all(torch.equal(state[k], before[k]) for k in before)


def test_inf_is_non_finite(state: AdapterState) -> None:
    d = good_delta(state)
    d["head.weight"] = torch.full((4, 8), float("inf"))
    with pytest.raises(ValidationError, match="non_finite"):
        validate_update(d, state, HASH, 10, 100)


def test_payload_default_limit_scales_with_state(state: AdapterState) -> None:
    validate_update(good_delta(state), state, HASH, 10, payload_bytes=4 * state.nbytes())
    with pytest.raises(ValidationError, match="payload_size"):
        validate_update(good_delta(state), state, HASH, 10, payload_bytes=4 * state.nbytes() + 5000)


def test_delta_norm() -> None:
    assert delta_norm({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}) == pytest.approx(5.0)
