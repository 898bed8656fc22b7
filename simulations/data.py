"""The simulated population: which dataset, which user a virtual SuperNode is, and loading it lazily.

A :class:`DataSpec` is small, JSON-serialisable and travels to every simulation worker (Ray actors inherit
it through the ``FEDGE_SIM_DATA`` environment variable, see :mod:`fedge.simulations.client_app`). Virtual
SuperNode ``partition-id`` ``i`` is the ``i``-th user of the federation's ``train`` population; a user's data
is generated (FLAIR-style) or read (FLAIR HDF5) only when that node is sampled, so 10,000 users never sit in
memory. The dataset itself is :mod:`fedge.data.source`'s, the one the server evaluates on: images reach the
model as the file holds them (RGB for FLAIR, resized to ``image_size``) and labels keep the file's count.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedge.data.base import UserData
from fedge.data.source import DataSource, open_source, user_ids
from fedge.data.source import pooled as pooled_source
from fedge.errors import DataError

ENV = "FEDGE_SIM_DATA"


@dataclass(frozen=True)
class DataSpec:
    """Everything a worker needs to find a user's data and where its device ledger goes."""

    source: DataSource = DataSource()
    label_set: str = "fine"  # the label set the federation trains on
    run_dir: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DataSpec:
        fields = json.loads(text)
        return cls(**{**fields, "source": DataSource(**fields["source"])})


def population_size(spec: DataSpec) -> int:
    """Number of training users (= virtual SuperNodes)."""
    return len(user_ids(spec.source, "train"))


def train_user_id(spec: DataSpec, partition_id: int) -> str:
    """The user a virtual SuperNode trains as."""
    ids = user_ids(spec.source, "train")
    if not 0 <= partition_id < len(ids):
        raise DataError(f"partition-id {partition_id} outside the {len(ids)} training users")
    return ids[partition_id]


def load_user(spec: DataSpec, user_id: str) -> UserData:
    """One user's data, ready for the model."""
    return open_source(spec.source).load_user(user_id)


def pooled(spec: DataSpec, population: str, max_users: int) -> UserData | None:
    """The first ``max_users`` users of a population, concatenated (None if it has no examples)."""
    return pooled_source(spec.source, population, max_users)


def describe(spec: DataSpec) -> dict[str, Any]:
    """Population sizes and example-count statistics of the training users (from profiles, no images)."""
    ds = open_source(spec.source)
    train = user_ids(spec.source, "train")
    sample = train[:: max(1, len(train) // 2000)]
    sizes = np.array([ds.num_examples(u) for u in sample])
    out: dict[str, Any] = {
        "train_users": len(train), "val_users": len(user_ids(spec.source, "val")),
        "test_users": len(user_ids(spec.source, "test")),
        "examples_median": float(np.median(sizes)) if len(sizes) else math.nan,
        "examples_mean": float(sizes.mean()) if len(sizes) else math.nan}
    if spec.source.dataset == "flair":
        out.update({"public_users": len(user_ids(spec.source, "public")), "image_shape": list(ds.image_shape),
                    "labels": {k: len(v) for k, v in ds.label_names.items()}})
    return out
