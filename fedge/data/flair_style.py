"""A FLAIR-style federated task generated from Fashion-MNIST, deterministic by seed.

Like FLAIR (Song et al., 2022): many users with heavy-tailed data sizes (log-normal), each with its own label
mix (Dirichlet, non-IID) and its own "camera" (contrast, brightness, gamma, blur, sensor noise), multi-label
images (2x2 mosaics of 1-4 items), a fine (10 items) and a coarse (4 groups) label set, and users split into
train/val/test populations.

Fashion-MNIST's 70,000 images are split once, by a fixed permutation, into a *public* pool (pretraining)
and disjoint private pools for the train, val and test populations, so no private image is ever seen in
pretraining and no test user's item appears in a training user's mosaic. A user's data is a pure function
of (seed, user id), generated on request: 10,000 users never sit in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fedge.data.base import POPULATIONS, UserData
from fedge.data.fashion_mnist import CLASSES, load_fashion_mnist
from fedge.errors import DataError

COARSE = ["upper-body", "lower/full-body", "footwear", "bag"]
FINE_TO_COARSE = np.array([0, 1, 0, 1, 0, 2, 0, 2, 3, 2])
CELL = 16  # each 28x28 item is resized to a 16x16 cell of the 32x32 mosaic
POOL_SPLIT_SEED = 20221  # fixed: the public/private split must not depend on the task seed
PUBLIC_SIZE = 30_000
ITEMS_PER_IMAGE_P = np.array([0.4, 0.3, 0.2, 0.1])  # P(1..4 items in an image)


@dataclass(frozen=True)
class CameraStyle:
    """Per-user image formation: ``x -> clip(contrast*(x-0.5)+0.5+brightness)**gamma``, blur, noise."""

    contrast: float = 1.0
    brightness: float = 0.0
    gamma: float = 1.0
    blur: float = 0.0
    noise: float = 0.0


@dataclass(frozen=True)
class UserProfile:
    num_examples: int
    label_mix: np.ndarray
    style: CameraStyle


def pool_indices() -> dict[str, np.ndarray]:
    """Indices into Fashion-MNIST's train+test images (70,000) of the public, train, val and test pools."""
    order = np.random.default_rng(POOL_SPLIT_SEED).permutation(70_000)
    priv = order[PUBLIC_SIZE:]
    a, b = int(0.7 * len(priv)), int(0.8 * len(priv))
    return {"public": order[:PUBLIC_SIZE], "train": priv[:a], "val": priv[a:b], "test": priv[b:]}


@lru_cache(maxsize=2)
def _pools(path: str | None) -> dict[str, tuple[np.ndarray, np.ndarray, list[np.ndarray]]]:
    """Resized (16x16 float32) items, labels and per-class indices of each pool."""
    import torch
    import torch.nn.functional as F

    xtr, ytr = load_fashion_mnist("train", path)
    xte, yte = load_fashion_mnist("test", path)
    x = np.concatenate([xtr, xte])
    y = np.concatenate([ytr, yte])
    if len(x) != 70_000:
        raise DataError(f"expected Fashion-MNIST's 70,000 images, found {len(x)}")
    with torch.no_grad():
        small = F.interpolate(torch.from_numpy(x).float()[:, None] / 255.0, size=(CELL, CELL), mode="area")
    items = small[:, 0].numpy()
    return {
        k: (items[idx], y[idx], [np.flatnonzero(y[idx] == c) for c in range(len(CLASSES))])
        for k, idx in pool_indices().items()
    }


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (radius 2) over the last two axes."""
    if sigma <= 0:
        return x
    k = np.exp(-0.5 * (np.arange(-2, 3) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(2, 2), (2, 2)], mode="edge")
    h = sum(k[i] * pad[..., :, i : i + x.shape[-1]] for i in range(5))
    return sum(k[i] * h[..., i : i + x.shape[-2], :] for i in range(5))


def apply_style(x: np.ndarray, style: CameraStyle, rng: np.random.Generator) -> np.ndarray:
    """Render images in [0, 1] through a user's camera."""
    x = np.clip(style.contrast * (x - 0.5) + 0.5 + style.brightness, 0.0, 1.0) ** style.gamma
    x = _blur(x, style.blur)
    if style.noise > 0:
        x = x + rng.normal(0.0, style.noise, size=x.shape)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def compose_mosaics(
    items: np.ndarray, labels: np.ndarray, picks: Sequence[np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """2x2 mosaics: image ``i`` holds the items ``picks[i]`` in random distinct cells; fine multi-hot labels."""
    n = len(picks)
    out = np.zeros((n, 1, 2 * CELL, 2 * CELL), np.float32)
    fine = np.zeros((n, len(CLASSES)), np.float32)
    for i, idx in enumerate(picks):
        cells = rng.permutation(4)[: len(idx)]
        for cell, j in zip(cells, idx):
            r, c = divmod(int(cell), 2)
            out[i, 0, r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = items[j]
            fine[i, labels[j]] = 1.0
    return out, fine


def coarse_of(fine: np.ndarray) -> np.ndarray:
    """Coarse multi-hot labels from fine multi-hot labels."""
    coarse = np.zeros((fine.shape[0], len(COARSE)), np.float32)
    for f, c in enumerate(FINE_TO_COARSE):
        coarse[:, c] = np.maximum(coarse[:, c], fine[:, f])
    return coarse


class FlairStyleDataset:
    """The FLAIR-style population (implements :class:`fedge.data.base.FederatedDataset`)."""

    label_names = {"fine": list(CLASSES), "coarse": list(COARSE)}
    image_shape = (1, 2 * CELL, 2 * CELL)

    def __init__(
        self,
        num_users: int = 1000,
        seed: int = 0,
        fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        median_examples: float = 12.0,
        size_sigma: float = 1.1,
        max_examples: int = 400,
        dirichlet_alpha: float = 0.3,
        style_strength: float = 1.0,
        data_path: str | None = None,
    ) -> None:
        if num_users < 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
            raise DataError("need >= 3 users and three positive population fractions summing to 1")
        self.num_users, self.seed = num_users, seed
        self.median_examples, self.size_sigma, self.max_examples = median_examples, size_sigma, max_examples
        self.dirichlet_alpha, self.style_strength, self.data_path = dirichlet_alpha, style_strength, data_path
        n_train = max(1, int(round(fractions[0] * num_users)))
        n_val = max(1, int(round(fractions[1] * num_users)))
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, num_users)}
        self._ranges = {p: range(*b) for p, b in bounds.items()}

    def __repr__(self) -> str:
        return f"FlairStyleDataset(num_users={self.num_users}, seed={self.seed})"

    def user_ids(self, population: str) -> Sequence[str]:
        if population not in POPULATIONS:
            raise DataError(f"unknown population {population!r}; use one of {POPULATIONS}")
        return [f"u{i:05d}" for i in self._ranges[population]]

    def _index(self, user_id: str) -> int:
        try:
            idx = int(user_id.removeprefix("u"))
        except ValueError:
            idx = -1
        if not user_id.startswith("u") or not 0 <= idx < self.num_users:
            raise DataError(f"unknown user {user_id!r} (this population has u00000..u{self.num_users - 1:05d})")
        return idx

    def population_of(self, user_id: str) -> str:
        idx = self._index(user_id)
        return next(p for p, r in self._ranges.items() if idx in r)

    def profile(self, user_id: str) -> UserProfile:
        """Data size, label mix and camera style: cheap, no images generated."""
        rng = np.random.default_rng([self.seed, 0, self._index(user_id)])
        size = int(np.clip(round(self.median_examples * np.exp(self.size_sigma * rng.normal())), 2,
                           self.max_examples))
        mix = rng.dirichlet(np.full(len(CLASSES), self.dirichlet_alpha))
        s = self.style_strength
        style = CameraStyle(
            contrast=float(1.0 + s * rng.uniform(-0.55, 0.25)),
            brightness=float(s * rng.uniform(-0.2, 0.2)),
            gamma=float(np.exp(s * rng.uniform(-0.7, 0.7))),
            blur=float(s * rng.uniform(0.0, 1.2) if rng.random() < 0.5 else 0.0),
            noise=float(s * rng.uniform(0.0, 0.12)),
        )
        return UserProfile(size, mix, style)

    def num_examples(self, user_id: str) -> int:
        return self.profile(user_id).num_examples

    def load_user(self, user_id: str) -> UserData:
        prof = self.profile(user_id)
        items, labels, by_class = _pools(self.data_path)[self.population_of(user_id)]
        rng = np.random.default_rng([self.seed, 1, self._index(user_id)])
        counts = rng.choice(4, size=prof.num_examples, p=ITEMS_PER_IMAGE_P) + 1
        picks = []
        for k in counts:
            classes = rng.choice(len(CLASSES), size=k, p=prof.label_mix)
            picks.append(np.array([by_class[c][rng.integers(len(by_class[c]))] for c in classes]))
        images, fine = compose_mosaics(items, labels, picks, rng)
        images = apply_style(images, prof.style, rng)
        return UserData(user_id, images, {"fine": fine, "coarse": coarse_of(fine)})

    def pooled(self, population: str, max_users: int | None = None) -> UserData:
        """Concatenate the data of (the first ``max_users``) users of a population (central training/eval)."""
        users = [self.load_user(u) for u in list(self.user_ids(population))[:max_users]]
        return UserData(
            f"{population}[{len(users)}]",
            np.concatenate([u.images for u in users]),
            {k: np.concatenate([u.labels[k] for u in users]) for k in users[0].labels},
        )


def public_split(num_images: int = 30_000, seed: int = 0, data_path: str | None = None) -> UserData:
    """Clean (no camera style), uniform-label mosaics from the public pool, for pretraining."""
    items, labels, _ = _pools(data_path)["public"]
    rng = np.random.default_rng([seed, 2])
    counts = rng.choice(4, size=num_images, p=ITEMS_PER_IMAGE_P) + 1
    picks = [rng.integers(len(items), size=k) for k in counts]
    images, fine = compose_mosaics(items, labels, picks, rng)
    return UserData("public", images, {"fine": fine, "coarse": coarse_of(fine)})
