"""The IDX reader on generated files, and the real Debian package when installed."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from fedge.data.fashion_mnist import DEFAULT_DIR, load_fashion_mnist, read_idx
from fedge.errors import DataError


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def test_read_generated_idx(tmp_path) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28)).astype(np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, compress=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels, compress=False)
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), images)
    x, y = load_fashion_mnist("train", str(tmp_path))
    assert np.array_equal(x, images) and y.dtype == np.int64 and list(y) == list(range(5))


def test_corrupt_and_missing_files_give_clear_errors(tmp_path, monkeypatch) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "bad")
    images = np.zeros((3, 28, 28), np.uint8)
    _write_idx(tmp_path / "short", images, compress=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-10])
    with pytest.raises(DataError, match="promises"):
        read_idx(tmp_path / "short")
    monkeypatch.setenv("FEDGE_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("test")


@pytest.mark.skipif(not DEFAULT_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_debian_package_loads() -> None:
    x, y = load_fashion_mnist("test")
    assert x.shape == (10_000, 28, 28) and x.dtype == np.uint8
    assert np.array_equal(np.bincount(y), np.full(10, 1000))
