"""The simulated population: which dataset, which user a virtual SuperNode is, and loading it lazily.

A :class:`DataSpec` is small, JSON-serialisable and travels to every simulation worker (Ray actors inherit
it through the ``FEDGE_SIM_DATA`` environment variable, see :mod:`fedge.simulations.client_app`). Virtual
SuperNode ``partition-id`` ``i`` is the ``i``-th user of the ``train`` population; a user's data is
generated (FLAIR-style) or read (FLAIR HDF5) only when that node is sampled, so 10,000 users never sit in
memory.

Real FLAIR images are RGB 256x256 with 17 coarse / 1,628 fine labels; the deployment's backbone takes
grayscale 32x32 and :class:`~fedge.server.config.FederationConfig` fixes 4 coarse / 10 fine outputs. The
adapter here converts images (channel mean, resize) and places a file's labels in the first output units,
refusing files with more labels than outputs (the server hook this needs is described in docs/simulation.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from fedge.data.base import FederatedDataset, UserData
from fedge.errors import DataError

ENV = "FEDGE_SIM_DATA"
#: model outputs per label set, as fedge.server.config.FederationConfig.num_classes fixes them
OUTPUTS = {"fine": 10, "coarse": 4}


@dataclass(frozen=True)
class DataSpec:
    """Everything a worker needs to find a user's data and where its device ledger goes."""

    dataset: str = "flair-style"
    num_users: int = 1000
    seed: int = 0
    flair_path: str = ""
    image_size: int = 32
    channels: int = 1
    label_set: str = "fine"  # the label set the federation trains on (FLAIR: must fit the model's outputs)
    run_dir: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DataSpec:
        return cls(**json.loads(text))


@lru_cache(maxsize=4)
def open_dataset(spec_json: str) -> FederatedDataset:
    """The dataset a spec names (cached per process; user data itself is never cached)."""
    spec = DataSpec.from_json(spec_json)
    if spec.dataset == "flair-style":
        from fedge.data.flair_style import FlairStyleDataset

        return FlairStyleDataset(num_users=spec.num_users, seed=spec.seed)
    if spec.dataset == "flair":
        from fedge.data.flair_hdf5 import FlairHDF5Dataset

        ds = FlairHDF5Dataset(spec.flair_path, image_size=spec.image_size)
        names = ds.label_names[spec.label_set]
        if len(names) > OUTPUTS[spec.label_set]:
            raise DataError(
                f"{spec.flair_path} has {len(names)} {spec.label_set} labels but the federation's model has "
                f"{OUTPUTS[spec.label_set]} outputs; the real FLAIR file needs FederationConfig.num_classes from "
                f"the dataset (see docs/simulation.md, 'Hooks the apps need')")
        return ds
    raise DataError(f"unknown dataset {spec.dataset!r}; use 'flair-style' or 'flair'")


def population_size(spec: DataSpec) -> int:
    """Number of training users (= virtual SuperNodes)."""
    return len(open_dataset(spec.to_json()).user_ids("train"))


def train_user_id(spec: DataSpec, partition_id: int) -> str:
    """The user a virtual SuperNode trains as."""
    ids = open_dataset(spec.to_json()).user_ids("train")
    if not 0 <= partition_id < len(ids):
        raise DataError(f"partition-id {partition_id} outside the {len(ids)} training users")
    return ids[partition_id]


def to_model_inputs(data: UserData, spec: DataSpec) -> UserData:
    """FLAIR images/labels in the model's layout (grayscale, ``image_size``, labels padded to the outputs)."""
    if spec.dataset != "flair":
        return data
    images = data.images
    if images.shape[1] != spec.channels:
        images = images.mean(axis=1, keepdims=True).astype(np.float32)
    labels = {}
    for name, y in data.labels.items():
        if y.shape[1] > OUTPUTS[name]:
            continue  # a label set this federation does not train on and the model cannot hold
        out = np.zeros((len(y), OUTPUTS[name]), np.float32)
        out[:, : y.shape[1]] = y
        labels[name] = out
    return UserData(data.user_id, np.ascontiguousarray(images), labels)


def load_user(spec: DataSpec, user_id: str) -> UserData:
    """One user's data, ready for the model."""
    return to_model_inputs(open_dataset(spec.to_json()).load_user(user_id), spec)


def pooled(spec: DataSpec, population: str, max_users: int) -> UserData | None:
    """The first ``max_users`` users of a population, concatenated (None if it has no examples)."""
    ds = open_dataset(spec.to_json())
    users = [load_user(spec, u) for u in list(ds.user_ids(population))[:max_users]]
    users = [u for u in users if len(u)]
    if not users:
        return None
    return UserData(f"{population}[{len(users)}]", np.concatenate([u.images for u in users]),
                    {k: np.concatenate([u.labels[k] for u in users]) for k in users[0].labels})


def describe(spec: DataSpec) -> dict[str, Any]:
    """Population sizes and example-count statistics of the training users (from profiles, no images)."""
    ds = open_dataset(spec.to_json())
    train = ds.user_ids("train")
    sample = train[:: max(1, len(train) // 2000)]
    sizes = np.array([ds.num_examples(u) for u in sample])
    return {"train_users": len(train), "val_users": len(ds.user_ids("val")), "test_users": len(ds.user_ids("test")),
            "examples_median": float(np.median(sizes)) if len(sizes) else math.nan,
            "examples_mean": float(sizes.mean()) if len(sizes) else math.nan}
