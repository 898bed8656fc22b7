"""CEMA selection rules on synthetic probabilities with known entropies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedge.edge.tta.selection import BUDGET, HIGH, KEEP, LOW, REDUNDANT, SelectionConfig, Selector, entropy

C = 10
LN_C = math.log(C)


def probs_with_entropy(target: float, cls: int = 0) -> np.ndarray:
    """A distribution peaked on ``cls`` (rest uniform) whose entropy is ``target`` nats (bisection)."""
    lo, hi = 1.0 / C, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        p = np.full(C, (1 - mid) / (C - 1))
        p[cls] = mid
        if entropy(p[None])[0] > target:
            lo = mid
        else:
            hi = mid
    return p


def batch(ents: list[float], classes: list[int] | None = None) -> np.ndarray:
    classes = classes or list(range(len(ents)))
    return np.stack([probs_with_entropy(e, c % C) for e, c in zip(ents, classes)])


def test_low_and_high_entropy_are_dropped() -> None:
    cfg = SelectionConfig(max_fraction=1.0, redundancy=1.1)
    sel = Selector(C, cfg)
    ents = [0.01 * LN_C, 0.3 * LN_C, 0.45 * LN_C, 0.9 * LN_C]
    assert list(sel.reasons(batch(ents))) == [LOW, KEEP, KEEP, HIGH]
    assert sel.e_min == pytest.approx(cfg.e_min * LN_C) and sel.e_max == pytest.approx(cfg.e_max_init * LN_C)


def test_e_max_follows_batch_quantile_with_decay_and_clamps() -> None:
    cfg = SelectionConfig(decay=0.5, quantile=1.0, max_fraction=1.0, redundancy=1.1)
    sel = Selector(C, cfg)
    e0 = sel.e_max
    sel.select(batch([0.3 * LN_C] * 4))  # every sample has the same entropy -> quantile is that value
    assert sel.e_max == pytest.approx(0.5 * e0 + 0.5 * 0.3 * LN_C)
    for _ in range(30):  # confident stream: E_max decays but never below the floor
        sel.select(batch([0.01 * LN_C] * 4))
    assert sel.e_max == pytest.approx(cfg.e_max_floor * LN_C)
    for _ in range(30):  # a new, harder corruption: E_max rises again (bounded by ln C)
        sel.select(batch([0.95 * LN_C] * 4))
    assert cfg.e_max_floor * LN_C < sel.e_max <= LN_C
    assert sel.e_max == pytest.approx(0.95 * LN_C, rel=1e-3)


def test_redundant_with_running_mean_prediction_is_dropped() -> None:
    sel = Selector(C, SelectionConfig(max_fraction=1.0, redundancy=0.9))
    first = batch([0.3 * LN_C] * 4, classes=[2, 2, 2, 2])
    assert sel.select(first).all()  # no running mean yet: nothing is redundant
    same = batch([0.3 * LN_C, 0.3 * LN_C], classes=[2, 7])
    assert list(sel.reasons(same)) == [REDUNDANT, KEEP]


def test_budget_keeps_the_most_uncertain_within_range() -> None:
    sel = Selector(C, SelectionConfig(max_fraction=0.25, redundancy=1.1))
    ents = [0.2 * LN_C, 0.3 * LN_C, 0.4 * LN_C, 0.35 * LN_C, 0.25 * LN_C, 0.32 * LN_C, 0.28 * LN_C, 0.22 * LN_C]
    verdict = sel.reasons(batch(ents))
    assert list(np.flatnonzero(verdict == KEEP)) == [2, 3]  # floor(0.25 * 8) = 2, highest entropies
    assert (verdict == BUDGET).sum() == 6


def test_fraction_and_counts_accumulate() -> None:
    sel = Selector(C, SelectionConfig(max_fraction=1.0, redundancy=1.1))
    sel.select(batch([0.01 * LN_C, 0.3 * LN_C, 0.9 * LN_C, 0.3 * LN_C], classes=[0, 1, 2, 3]))
    assert sel.seen == 4 and sel.uploaded == 2 and sel.fraction == 0.5
    assert sel.counts["low"] == 1 and sel.counts["high"] == 1 and sel.counts["keep"] == 2


def test_bad_config_is_a_config_error() -> None:
    from fedge.errors import ConfigError

    with pytest.raises(ConfigError):
        SelectionConfig(e_min=0.5, e_max_floor=0.2)
