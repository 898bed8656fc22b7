"""The FLAIR-style generator: deterministic, heavy-tailed, non-IID, lazy, and disjoint from pretraining data."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.data.base import FederatedDataset
from fedge.data.flair_style import FlairStyleDataset, coarse_of, pool_indices, public_split
from fedge.errors import DataError


def test_deterministic_by_seed() -> None:
    a, b, c = FlairStyleDataset(200, seed=1), FlairStyleDataset(200, seed=1), FlairStyleDataset(200, seed=2)
    ua, ub, uc = a.load_user("u00007"), b.load_user("u00007"), c.load_user("u00007")
    assert np.array_equal(ua.images, ub.images)
    assert all(np.array_equal(ua.labels[k], ub.labels[k]) for k in ua.labels)
    assert len(ua) != len(uc) or not np.array_equal(ua.images, uc.images)
    assert isinstance(a, FederatedDataset)


def test_sizes_are_heavy_tailed() -> None:
    ds = FlairStyleDataset(10_000, seed=0)
    sizes = np.sort([ds.num_examples(u) for p in ("train", "val", "test") for u in ds.user_ids(p)])
    median = np.median(sizes)
    top_decile_share = sizes[-len(sizes) // 10 :].sum() / sizes.sum()
    assert sizes.max() >= 20 * median  # a long right tail
    assert top_decile_share > 0.35  # 10% of users hold over a third of the data
    log = np.log(sizes)
    assert ((log - log.mean()) ** 3).mean() / log.std() ** 3 > -0.5  # log-sizes roughly symmetric: log-normal-ish
    assert sizes.mean() > 1.3 * median  # right-skewed in linear scale


def test_label_mixes_are_non_iid() -> None:
    ds = FlairStyleDataset(400, seed=0)
    users = [ds.load_user(u) for u in list(ds.user_ids("train"))[:60]]
    users = [u for u in users if len(u) >= 10]
    dists = np.array([u.labels["fine"].sum(0) / u.labels["fine"].sum() for u in users])
    global_dist = dists.mean(0)
    tv = 0.5 * np.abs(dists - global_dist).sum(1)
    assert np.median(tv) > 0.3  # a typical user's label mix is far from the population's
    dominant = dists.max(1)
    assert np.median(dominant) > 0.35  # most users are dominated by a few labels


def test_styles_differ_between_users() -> None:
    ds = FlairStyleDataset(100, seed=0)
    styles = [ds.profile(u).style for u in ds.user_ids("train")]
    assert len({round(s.gamma, 6) for s in styles}) == len(styles)
    assert np.std([s.contrast for s in styles]) > 0.1


def test_multilabel_and_coarse_labels() -> None:
    ds = FlairStyleDataset(100, seed=0)
    u = ds.load_user("u00003")
    fine, coarse = u.labels["fine"], u.labels["coarse"]
    assert u.images.shape[1:] == ds.image_shape and u.images.dtype == np.float32
    assert 0.0 <= u.images.min() and u.images.max() <= 1.0
    assert fine.shape == (len(u), 10) and coarse.shape == (len(u), 4)
    assert fine.sum(1).min() >= 1 and fine.sum(1).max() <= 4
    assert np.array_equal(coarse, coarse_of(fine))
    big = ds.pooled("train")
    assert (big.labels["fine"].sum(1) > 1).mean() > 0.3  # many images carry several labels


def test_populations_partition_users_and_pools_are_disjoint() -> None:
    ds = FlairStyleDataset(1000, seed=0)
    ids = {p: set(ds.user_ids(p)) for p in ("train", "val", "test")}
    assert sum(len(v) for v in ids.values()) == 1000 and len(set.union(*ids.values())) == 1000
    assert len(ids["train"]) == 800 and ds.population_of("u00999") == "test"
    pools = pool_indices()
    names = list(pools)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not set(pools[a]) & set(pools[b]), (a, b)
    assert len(pools["public"]) == 30_000 and sum(len(v) for v in pools.values()) == 70_000


def test_public_split_is_clean_and_deterministic() -> None:
    a, b = public_split(100, seed=0), public_split(100, seed=0)
    assert np.array_equal(a.images, b.images)
    assert a.labels["fine"].shape == (100, 10)


def test_large_population_is_lazy() -> None:
    import tracemalloc

    tracemalloc.start()
    ds = FlairStyleDataset(10_000, seed=0)
    total = sum(ds.num_examples(u) for u in ds.user_ids("train"))
    user = ds.load_user(ds.user_ids("train")[-1])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # materialising every train user would take total*32*32*4 bytes; the generator stays far below
    assert total * 32 * 32 * 4 > 500e6
    assert peak < 150e6, peak
    assert len(user) == ds.num_examples(user.user_id)


def test_unknown_user_and_population() -> None:
    ds = FlairStyleDataset(10)
    with pytest.raises(DataError, match="unknown user"):
        ds.load_user("u00010")
    with pytest.raises(DataError, match="unknown user"):
        ds.load_user("alice")
    with pytest.raises(DataError, match="population"):
        ds.user_ids("dev")
