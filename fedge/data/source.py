"""Which federated dataset a run uses, and what the model needs to know about it.

A :class:`DataSource` names a dataset (the FLAIR-style generator or a real FLAIR HDF5 file) in a few
hashable, JSON-able fields. Server, simulation and pretraining all open it here, so the label count and
the image shape the model is built for come from the data, not from constants.

Real FLAIR: ``public_users`` training users (a seeded sample) are held out as the *public* split a
backbone can be pretrained on; the federation's ``train`` population is the rest, so pretraining, the
federation, the server's held-out ``val`` users and the ``test`` users are four disjoint sets.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from fedge.data.base import FederatedDataset, UserData
from fedge.errors import DataError

DATASETS = ("flair-style", "flair")
PUBLIC_SEED = 20_221  # fixed: which FLAIR users are public must not depend on the task seed


@dataclass(frozen=True)
class DataSource:
    """A federated dataset: ``flair-style`` (generated, ``num_users``/``seed``) or ``flair`` (``flair_path``)."""

    dataset: str = "flair-style"
    num_users: int = 1000
    seed: int = 0
    flair_path: str = ""
    image_size: int = 0  # FLAIR: resize to image_size x image_size (0 = the file's own size)
    public_users: int = 0  # FLAIR: training users held out for pretraining

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise DataError(f"unknown dataset {self.dataset!r}; use one of {', '.join(DATASETS)}")
        if self.dataset == "flair" and not self.flair_path:
            raise DataError("dataset 'flair' needs flair_path, the FLAIR HDF5 file (see docs/flair.md)")
        if self.image_size < 0 or self.public_users < 0:
            raise DataError("image_size and public_users must be >= 0")
        if self.dataset == "flair-style" and self.image_size not in (0, 32):
            raise DataError(f"FLAIR-style images are 32x32; leave image_size at 0, got {self.image_size}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@lru_cache(maxsize=8)
def open_source(src: DataSource) -> FederatedDataset:
    """The dataset ``src`` names (cached per process; users' data is never cached)."""
    if src.dataset == "flair-style":
        from fedge.data.flair_style import FlairStyleDataset

        return FlairStyleDataset(num_users=src.num_users, seed=src.seed)
    from fedge.data.flair_hdf5 import FlairHDF5Dataset

    return FlairHDF5Dataset(src.flair_path, image_size=src.image_size or None)


@lru_cache(maxsize=8)
def _splits(src: DataSource) -> dict[str, list[str]]:
    ds = open_source(src)
    out = {p: list(ds.user_ids(p)) for p in ("train", "val", "test")}
    public: list[str] = []
    if src.dataset == "flair" and src.public_users > 0:
        train = out["train"]
        if src.public_users >= len(train):
            raise DataError(f"public_users={src.public_users} leaves no federation users of the "
                            f"{len(train)} training users in {src.flair_path}; lower it")
        pick = np.random.default_rng(PUBLIC_SEED).choice(len(train), size=src.public_users, replace=False)
        public = [train[i] for i in sorted(pick)]
        held = set(public)
        out["train"] = [u for u in train if u not in held]
    out["public"] = public
    return out


def user_ids(src: DataSource, population: str) -> list[str]:
    """Users of ``train`` (the federation's), ``val``, ``test`` or ``public`` (FLAIR's pretraining users)."""
    splits = _splits(src)
    if population not in splits:
        raise DataError(f"unknown population {population!r}; use one of {', '.join(splits)}")
    return list(splits[population])


def num_labels(src: DataSource, label_set: str) -> int:
    """Number of labels of ``label_set`` (the model's outputs)."""
    names = open_source(src).label_names
    if label_set not in names:
        raise DataError(f"{src.dataset} has no label set {label_set!r} (has {sorted(names)})")
    return len(names[label_set])


def image_shape(src: DataSource) -> tuple[int, int, int]:
    """(channels, height, width) of the images the model sees."""
    return tuple(int(x) for x in open_source(src).image_shape)  # type: ignore[return-value]


def pooled(src: DataSource, population: str, max_users: int | None = None) -> UserData | None:
    """The first ``max_users`` users of a population, concatenated (None if they have no examples)."""
    return pool_users(src, user_ids(src, population)[:max_users], name=population)


def pool_users(src: DataSource, users: list[str], max_images: int | None = None, name: str = "pool"
               ) -> UserData | None:
    """These users' data concatenated (in order, up to ``max_images`` images); None if they have none."""
    ds = open_source(src)
    parts: list[UserData] = []
    total = 0
    for uid in users:
        if max_images is not None and total >= max_images:
            break
        user = ds.load_user(uid)
        if len(user):
            parts.append(user)
            total += len(user)
    if not parts:
        return None
    keep = slice(0, max_images)
    return UserData(f"{name}[{len(parts)}]", np.concatenate([u.images for u in parts])[keep],
                    {k: np.concatenate([u.labels[k] for u in parts])[keep] for k in parts[0].labels})


def fingerprint(src: DataSource) -> str:
    """Content identity of a FLAIR file's public split (label names, public users and their sizes).

    A backbone pretrained on the public users is cached under this, so another file at the same path
    never returns a stale backbone, without hashing tens of gigabytes of images.
    """
    ds = open_source(src)
    public = user_ids(src, "public")
    blob = json.dumps({"labels": ds.label_names, "public": public, "shape": ds.image_shape,
                       "sizes": [ds.num_examples(u) for u in public]}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
