"""Pretraining cache: content-addressed, verified on load, corruption detected."""

from __future__ import annotations

import pytest
import torch

from fedge.adapters import backbone_hash
from fedge.errors import DataError
from fedge.pretrain import PretrainConfig, cache_path, load_or_pretrain_backbone

TINY = PretrainConfig(num_images=256, epochs=0.25, batch_size=64)


def test_pretrain_caches_and_reloads_identically() -> None:
    model, info = load_or_pretrain_backbone(TINY, progress=False)
    path = cache_path(TINY)
    assert path.is_file() and info["backbone_hash"] == backbone_hash(model)
    again, info2 = load_or_pretrain_backbone(TINY, progress=False)
    assert info2["backbone_hash"] == info["backbone_hash"]
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(model(x), again(x))
    other = PretrainConfig(num_images=256, epochs=0.25, batch_size=64, seed=1)
    assert cache_path(other) != path  # a changed config never returns the cached backbone


def test_corrupt_cache_is_reported() -> None:
    load_or_pretrain_backbone(TINY, progress=False)
    path = cache_path(TINY)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # flip bits inside a tensor
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt"):
        load_or_pretrain_backbone(TINY, progress=False)
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match="unreadable"):
        load_or_pretrain_backbone(TINY, progress=False)


def test_default_keys_predate_the_flair_fields() -> None:
    """Fields added for real FLAIR enter the key only when set: FLAIR-style backbones keep their cache file."""
    assert PretrainConfig().key() == "2dd4cf3cc44d4373"
    assert PretrainConfig(in_chans=3).key() != PretrainConfig().key()
