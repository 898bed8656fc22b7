"""User-level DP-FedAvg: clipping, calibrated noise std (statistical, fixed seed), adaptive clipping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.errors import ConfigError, PrivacyBudgetExceeded
from fedge.privacy.accountants import compute_epsilon
from fedge.privacy.ledger import POPULATION, PrivacyLedger
from fedge.privacy.user_dp import (
    UserDPConfig,
    calibrate_user_noise,
    clip_update,
    dp_fedavg_aggregate,
    global_l2_norm,
    noise_std,
    split_noise_multiplier,
    update_clip_norm,
)


def _update(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"film.scale": scale * torch.randn(16, generator=g), "head.weight": scale * torch.randn(10, 16, generator=g)}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 100.0), clip=st.floats(0.01, 10.0))
def test_clip_bounds_global_norm_and_keeps_direction(seed: int, scale: float, clip: float) -> None:
    u = _update(seed, scale)
    clipped, norm = clip_update(u, clip)
    assert norm == pytest.approx(global_l2_norm(u))
    assert global_l2_norm(clipped) <= clip * (1 + 1e-5)
    if norm <= clip:
        assert all(torch.equal(clipped[k], u[k]) for k in u)
    else:
        ratio = clipped["head.weight"] / u["head.weight"]
        assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio))


def test_aggregate_noise_std_matches_calibration(tmp_path: Path) -> None:
    q, rounds, target = 0.05, 100, 4.0
    z = calibrate_user_noise(target, 1e-5, rounds, q)
    assert compute_epsilon(z, q, rounds, 1e-5) <= target
    m, clip = 20, 0.5
    cfg = UserDPConfig(noise_multiplier=z, clip_norm=clip, expected_cohort_size=m)
    # Every client sends the same update of norm exactly `clip`: the noiseless average is known.
    direction = {"w": torch.ones(200_000, dtype=torch.float64)}
    u = {"w": direction["w"] * clip / global_l2_norm(direction)}
    expected_mean = u["w"] * 12 / m  # 12 clients showed up, the denominator is still m
    with PrivacyLedger(tmp_path / "l.db") as ledger:
        ledger.open_run("r", epsilon=target, delta=1e-5, unit="user")
        agg, _, spend = dp_fedavg_aggregate(
            [u] * 12, cfg, ledger=ledger, run="r", round=1, sample_rate=q,
            generator=torch.Generator().manual_seed(0),
        )
    residual = agg["w"] - expected_mean
    promised = noise_std(z, clip, m)
    # 200k samples: the std estimate has relative s.e. ~0.16%; 1% is > 6 s.e.
    assert residual.std().item() == pytest.approx(promised, rel=0.01)
    assert abs(residual.mean().item()) < 5 * promised / 200_000**0.5
    assert spend.unit == "user" and spend.subject == POPULATION and spend.noise_multiplier == z


def test_clipping_bounds_one_users_influence(tmp_path: Path) -> None:
    cfg = UserDPConfig(noise_multiplier=0.0, clip_norm=1.0, expected_cohort_size=10)
    base = [_update(i) for i in range(5)]
    huge = _update(99, scale=1e6)
    with PrivacyLedger(tmp_path / "l.db") as ledger:
        ledger.open_run("r", epsilon=float("inf"), delta=1e-5, unit="user")
        a, _, _ = dp_fedavg_aggregate(base, cfg, ledger=ledger, run="r", round=1, sample_rate=0.1)
        b, _, _ = dp_fedavg_aggregate(base + [huge], cfg, ledger=ledger, run="r", round=2, sample_rate=0.1)
    diff = {k: b[k] - a[k] for k in a}
    assert global_l2_norm(diff) <= 1.0 / 10 * (1 + 1e-5)


def test_over_budget_round_is_refused_before_aggregation(tmp_path: Path) -> None:
    cfg = UserDPConfig(noise_multiplier=0.5, clip_norm=1.0, expected_cohort_size=10)
    with PrivacyLedger(tmp_path / "l.db") as ledger:
        ledger.open_run("r", epsilon=1.0, delta=1e-5, unit="user")
        with pytest.raises(PrivacyBudgetExceeded):
            dp_fedavg_aggregate([_update(0)], cfg, ledger=ledger, run="r", round=1, sample_rate=1.0)
        assert ledger.spends("r") == []


def test_adaptive_clipping_tracks_quantile_and_keeps_privacy(tmp_path: Path) -> None:
    m = 100
    cfg = UserDPConfig(noise_multiplier=1.0, clip_norm=0.1, expected_cohort_size=m, adaptive=True)
    assert cfg.count_stddev == 5.0
    assert cfg.update_noise_multiplier == pytest.approx(split_noise_multiplier(1.0, 5.0))
    # Combined privacy equals z: z_u^-2 + (2 sigma_b)^-2 == z^-2.
    assert cfg.update_noise_multiplier**-2 + 10.0**-2 == pytest.approx(1.0)
    g = torch.Generator().manual_seed(1)
    norms_of = torch.distributions.LogNormal(0.0, 0.5)
    torch.manual_seed(0)
    with PrivacyLedger(tmp_path / "l.db") as ledger:
        ledger.open_run("r", epsilon=1e6, delta=1e-5, unit="user")
        for rnd in range(1, 41):
            norms = norms_of.sample((m,))
            updates = [{"w": torch.tensor([float(n)])} for n in norms]
            _, cfg, _ = dp_fedavg_aggregate(updates, cfg, ledger=ledger, run="r", round=rnd, sample_rate=0.1, generator=g)
    assert cfg.clip_norm == pytest.approx(1.0, rel=0.25)  # the median of LogNormal(0, .5) is 1
    assert update_clip_norm(1.0, [0.5] * m, m, 0.5, 0.2, 0.0) < 1.0  # all unclipped -> shrink
    with pytest.raises(ConfigError):
        split_noise_multiplier(3.0, 1.0)


def test_poisson_cohort_is_independent_per_node() -> None:
    import random

    from fedge.privacy.user_dp import poisson_cohort

    nodes = list(range(1000))
    sizes = [len(poisson_cohort(nodes, 0.05, random.Random(s))) for s in range(200)]
    mean = sum(sizes) / len(sizes)
    var = sum((x - mean) ** 2 for x in sizes) / (len(sizes) - 1)
    assert mean == pytest.approx(50, abs=2.5)  # binomial(1000, 0.05): mean 50, var 47.5
    assert var == pytest.approx(47.5, rel=0.35)  # a fixed-size sample would have variance 0
    assert set(poisson_cohort(nodes, 1.0)) == set(nodes)
    with pytest.raises(ConfigError):
        poisson_cohort(nodes, 0.0)
