"""Data sources: label counts and image shapes from the data; FLAIR's public users are outside the federation."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedge.data.flair_hdf5 import write_tiny_flair_hdf5
from fedge.data.source import DataSource, fingerprint, image_shape, num_labels, pooled, user_ids
from fedge.errors import DataError


def _file(tmp_path: Path, name: str = "flair.hdf5") -> Path:
    users = {f"1{i:03d}@N0": ("train", 2 + i % 3) for i in range(10)}
    users |= {"2000@N0": ("val", 3), "3000@N0": ("test", 3)}
    write_tiny_flair_hdf5(tmp_path / name, users=users, image_hw=10)
    return tmp_path / name


def test_flair_style_shape_and_labels() -> None:
    src = DataSource(num_users=20)
    assert image_shape(src) == (1, 32, 32) and num_labels(src, "fine") == 10 and num_labels(src, "coarse") == 4
    assert user_ids(src, "public") == [] and len(user_ids(src, "train")) == 16
    with pytest.raises(DataError, match="32x32"):
        DataSource(image_size=64)


def test_flair_public_users_are_disjoint_and_stable(tmp_path: Path) -> None:
    path = _file(tmp_path)
    src = DataSource("flair", flair_path=str(path), image_size=8, public_users=3)
    public, train = user_ids(src, "public"), user_ids(src, "train")
    assert len(public) == 3 and len(train) == 7 and not set(public) & set(train)
    assert sorted(public + train) == user_ids(DataSource("flair", flair_path=str(path)), "train")
    assert image_shape(src) == (3, 8, 8) and num_labels(src, "fine") <= 8
    data = pooled(src, "val", 1)
    assert data is not None and data.images.shape[1:] == (3, 8, 8)
    assert fingerprint(src) == fingerprint(DataSource("flair", flair_path=str(path), image_size=8, public_users=3))
    assert fingerprint(src) != fingerprint(DataSource("flair", flair_path=str(path), image_size=8, public_users=4))
    with pytest.raises(DataError, match="no federation users"):
        user_ids(DataSource("flair", flair_path=str(path), public_users=10), "train")
    with pytest.raises(DataError, match="flair_path"):
        DataSource("flair")
