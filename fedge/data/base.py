"""The per-user interface every federated dataset in fedge exposes (FLAIR-style generator, real FLAIR HDF5).

A federated dataset is a set of users split into populations (``train``/``val``/``test``). A user's data is
loaded lazily, on request, so that a population of 10,000 users never sits in memory at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

POPULATIONS = ("train", "val", "test")


@dataclass(frozen=True)
class UserData:
    """One user's examples.

    ``images`` is float32, NCHW, values in [0, 1]; ``labels`` maps a label-set name (``"fine"``,
    ``"coarse"``) to a float32 multi-hot matrix of shape (N, num_labels).
    """

    user_id: str
    images: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])


@runtime_checkable
class FederatedDataset(Protocol):
    """What simulations, clients and benchmarks need from a federated dataset."""

    #: label-set name -> ordered label names, e.g. {"fine": [...], "coarse": [...]}
    label_names: dict[str, list[str]]
    #: (channels, height, width) of every image
    image_shape: tuple[int, int, int]

    def user_ids(self, population: str) -> Sequence[str]:
        """User ids of one population (``train``, ``val`` or ``test``), in a stable order."""
        ...

    def num_examples(self, user_id: str) -> int:
        """Number of examples of one user, without loading the images."""
        ...

    def load_user(self, user_id: str) -> UserData:
        """Load (or generate) one user's examples."""
        ...
