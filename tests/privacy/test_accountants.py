"""Accountants: every epsilon fedge reports is cross-checked against Google's dp-accounting.

Tolerances (relative): RDP vs dp_accounting RdpAccountant with the same orders (fedge's ``RDP_ORDERS``): 2%. They agree to
<0.1% for eps < 10; at eps > 20 (z < 0.8, q > 0.2) dp-accounting drops fractional orders 1.1-1.7 whose
series it cannot converge while Opacus keeps them, and Opacus comes out up to ~2.5% lower, so the
property test stays in z >= 0.8, q <= 0.1. PRV vs dp_accounting
PLDAccountant (pessimistic, grid 1e-3): 2% + 0.01 absolute (both are numerical upper bounds).
"""

from __future__ import annotations

import math

import dp_accounting as dpa
import pytest
from dp_accounting import pld, rdp
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from fedge.errors import ConfigError
from fedge.privacy.accountants import RDP_ORDERS, Accountant, PrivacyReport, calibrate_noise, compute_epsilon

CASES = [
    (1.1, 0.01, 1000, 1e-5),
    (0.8, 0.05, 200, 1e-5),
    (2.0, 0.1, 50, 1e-6),
    (5.0, 1.0, 10, 1e-5),
    (1.0, 0.002, 5000, 1e-6),
    (0.6, 0.2, 30, 1e-5),
]


def _event(z: float, q: float) -> dpa.DpEvent:
    return dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z))


def google_rdp(history: list[tuple[float, float, int]], delta: float) -> float:
    acc = rdp.RdpAccountant(list(RDP_ORDERS))  # the same orders as fedge
    for z, q, t in history:
        acc.compose(_event(z, q), t)
    return acc.get_epsilon(delta)


def google_pld(history: list[tuple[float, float, int]], delta: float) -> float:
    acc = pld.PLDAccountant(value_discretization_interval=1e-3)
    for z, q, t in history:
        acc.compose(_event(z, q), t)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("z,q,steps,delta", CASES)
def test_rdp_matches_dp_accounting(z: float, q: float, steps: int, delta: float) -> None:
    ours = compute_epsilon(z, q, steps, delta, "rdp")
    assert ours == pytest.approx(google_rdp([(z, q, steps)], delta), rel=0.02)


@pytest.mark.parametrize("z,q,steps,delta", CASES[:4])
def test_prv_matches_dp_accounting_pld(z: float, q: float, steps: int, delta: float) -> None:
    ours = compute_epsilon(z, q, steps, delta, "prv")
    assert ours == pytest.approx(google_pld([(z, q, steps)], delta), rel=0.02, abs=0.01)


def test_heterogeneous_history_matches_both() -> None:
    history = [(1.0, 0.02, 300), (1.5, 0.05, 100), (1.0, 0.02, 200)]
    for name, ref, rel in (("rdp", google_rdp, 0.02), ("prv", google_pld, 0.02)):
        acc = Accountant(name)  # type: ignore[arg-type]
        for step in history:
            acc.step(*step)
        assert acc.get_epsilon(1e-5) == pytest.approx(ref(history, 1e-5), rel=rel, abs=0.01)


def test_prv_is_tighter_than_rdp() -> None:
    assert compute_epsilon(1.1, 0.01, 1000, 1e-5, "prv") < compute_epsilon(1.1, 0.01, 1000, 1e-5, "rdp")


@settings(max_examples=15, deadline=None)
@given(
    z=st.floats(0.8, 5.0),
    q=st.floats(0.001, 0.1),
    steps=st.integers(1, 500),
    delta=st.sampled_from([1e-4, 1e-5, 1e-6]),
)
def test_rdp_matches_dp_accounting_property(z: float, q: float, steps: int, delta: float) -> None:
    ours = compute_epsilon(z, q, steps, delta, "rdp")
    assert ours == pytest.approx(google_rdp([(z, q, steps)], delta), rel=0.02)


@pytest.mark.parametrize("name", ["rdp", pytest.param("prv", marks=pytest.mark.slow)])
def test_calibration_hits_target(name: str) -> None:
    z = calibrate_noise(3.0, 1e-5, 0.02, 500, accountant=name)  # type: ignore[arg-type]
    eps = compute_epsilon(z, 0.02, 500, 1e-5, name)  # type: ignore[arg-type]
    assert 3.0 - 0.05 <= eps <= 3.0
    ref = google_rdp if name == "rdp" else google_pld
    assert ref([(z, 0.02, 500)], 1e-5) <= 3.0 * 1.02


def test_history_merges_and_round_trips() -> None:
    acc = Accountant("rdp")
    acc.step(1.0, 0.1)
    acc.step(1.0, 0.1, 4)
    acc.step(2.0, 0.1, 3)
    assert acc.history == [(1.0, 0.1, 5), (2.0, 0.1, 3)]
    assert acc.steps == 8
    restored = Accountant("rdp")
    restored.load_state_dict(acc.state_dict())
    assert restored.history == acc.history
    assert restored.get_epsilon(1e-5) == acc.get_epsilon(1e-5)
    with pytest.raises(ConfigError):
        Accountant("prv").load_state_dict(acc.state_dict())


def test_epsilon_after_does_not_mutate() -> None:
    acc = Accountant("rdp", [(1.0, 0.1, 10)])
    before = acc.get_epsilon(1e-5)
    after = acc.epsilon_after(1.0, 0.1, 10, 1e-5)
    assert after > before
    assert acc.get_epsilon(1e-5) == before
    assert after == pytest.approx(compute_epsilon(1.0, 0.1, 20, 1e-5))


def test_edge_cases_and_report() -> None:
    assert Accountant("rdp").get_epsilon(1e-5) == 0.0
    assert compute_epsilon(0.0, 0.1, 5, 1e-5) == math.inf
    assert calibrate_noise(math.inf, 1e-5, 0.1, 10) == 0.0
    with pytest.raises(ConfigError):
        compute_epsilon(1.0, 1.5, 5, 1e-5)
    with pytest.raises(ConfigError):
        compute_epsilon(1.0, 0.1, 5, 0.0)
    with pytest.raises(ConfigError):
        calibrate_noise(1e-4, 1e-5, 1.0, 10_000)
    report = Accountant("prv", [(1.0, 0.1, 10)]).report(1e-5, "user")
    assert isinstance(report, PrivacyReport)
    assert (report.unit, report.delta, report.accountant, report.sampling) == ("user", 1e-5, "prv", "poisson")
    assert "per user" in str(report) and "PRV" in str(report) and "poisson" in str(report)


@pytest.mark.parametrize("z,q,steps,delta", [(5.0, 0.0625, 1, 1e-3), (5.0, 0.01, 5, 1e-4), (10.0, 0.01, 10, 1e-5),
                                             (2.0, 0.01, 10, 1e-5), (1.0, 1 / 16, 4, 1e-4)])
def test_small_epsilons_use_orders_above_63(z: float, q: float, steps: int, delta: float) -> None:
    """Where Opacus' default orders stop short ("Optimal order is the largest alpha") fedge's reach further:
    no warning, a bound at least as tight, and still the dp-accounting value for the same orders."""
    import warnings

    default = RDPAccountant()
    default.history = [(z, q, steps)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = compute_epsilon(z, q, steps, delta, "rdp")
    assert not [w for w in caught if "largest alpha" in str(w.message)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ours <= default.get_epsilon(delta) + 1e-12
    assert ours == pytest.approx(google_rdp([(z, q, steps)], delta), rel=0.02)
