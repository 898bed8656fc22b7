"""Corruptions: shape/dtype kept, deterministic, stronger with severity; streams keep labels aligned."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.edge.tta.streams import CORRUPTIONS, SEVERITIES, continual_stream, corrupt, corruption_stream
from fedge.errors import ConfigError


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    yy, xx = np.mgrid[0:28, 0:28]
    out = []
    for i in range(16):  # smooth garment-like blobs with stripes of varying frequency on black
        blob = np.exp(-(((yy - 14) / 8.0) ** 2 + ((xx - 14) / (4.0 + i % 4)) ** 2))
        out.append(255 * blob * (0.6 + 0.4 * np.cos(yy * (0.3 + 0.1 * i))))
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruption_is_deterministic_and_monotone_in_severity(images: np.ndarray, name: str) -> None:
    dists = []
    for s in SEVERITIES:
        out = corrupt(images, name, s, seed=3)
        assert out.dtype == np.uint8 and out.shape == images.shape
        assert np.array_equal(out, corrupt(images, name, s, seed=3))
        dists.append(np.abs(out.astype(float) - images).mean())
    assert dists[0] > 0
    assert dists[-1] > dists[0]


def test_unknown_corruption_or_severity_is_a_config_error(images: np.ndarray) -> None:
    with pytest.raises(ConfigError):
        corrupt(images, "fog_of_war", 3)
    with pytest.raises(ConfigError):
        corrupt(images, "contrast", 6)


def test_streams_keep_labels_aligned(images: np.ndarray) -> None:
    labels = np.arange(16)
    s = corruption_stream(images, labels, "clean", 1, 10, seed=1)
    assert len(s) == 10
    for x, y in zip(s.images, s.labels):
        assert np.array_equal(x, images[y])
    c = continual_stream(images, labels, ["gaussian_noise", "contrast"], 3, 5)
    assert c.domains == ("gaussian_noise",) * 5 + ("contrast",) * 5 and len(c) == 10
    batches = list(c.batches(4))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
