"""Fashion-MNIST-C-style corruptions at 5 severities and the test-time streams built from them.

Corruptions follow Hendrycks & Dietterich's ImageNet-C/CIFAR-10-C families (noise, blur, digital), with
severities rescaled for 28x28 grayscale images. Every function maps uint8 (N, 28, 28) to uint8 of the same
shape and is deterministic given its ``rng``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from fedge.errors import ConfigError

SEVERITIES = (1, 2, 3, 4, 5)


def _f(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 255.0


def _u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def gaussian_noise(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    return _u8(_f(x) + rng.normal(0, [0.08, 0.12, 0.18, 0.26, 0.38][s - 1], x.shape))


def shot_noise(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    lam = [60, 25, 12, 5, 3][s - 1]
    return _u8(rng.poisson(_f(x) * lam) / lam)


def impulse_noise(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    amount = [0.03, 0.06, 0.09, 0.17, 0.27][s - 1]
    out = x.copy()
    hit = rng.random(x.shape) < amount
    out[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0, 255).astype(np.uint8)
    return out


def gaussian_blur(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    return _u8(ndimage.gaussian_filter(_f(x), sigma=(0, *([[0.5, 0.75, 1.0, 1.25, 1.5][s - 1]] * 2))))


def motion_blur(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    length = [3, 4, 5, 6, 8][s - 1]
    kernel = np.zeros((1, length, length), np.float32)
    kernel[0, length // 2, :] = 1.0 / length  # horizontal streak, as a camera shake
    return _u8(ndimage.convolve(_f(x), kernel, mode="constant"))


def contrast(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = [0.4, 0.3, 0.2, 0.1, 0.05][s - 1]
    xf = _f(x)
    mean = xf.mean(axis=(1, 2), keepdims=True)
    return _u8((xf - mean) * c + mean)


def brightness(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    return _u8(_f(x) + [0.1, 0.2, 0.3, 0.4, 0.5][s - 1])


def pixelate(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    size = int(28 * [0.6, 0.5, 0.4, 0.3, 0.25][s - 1])
    out = np.empty_like(x)
    for i, img in enumerate(x):
        small = Image.fromarray(img).resize((size, size), Image.Resampling.BOX)
        out[i] = np.asarray(small.resize(img.shape[::-1], Image.Resampling.NEAREST))
    return out


def jpeg(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    quality = [25, 18, 15, 10, 7][s - 1]
    out = np.empty_like(x)
    for i, img in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
    return out


CORRUPTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    f.__name__: f for f in (gaussian_noise, shot_noise, impulse_noise, gaussian_blur, motion_blur, contrast,
                            brightness, pixelate, jpeg)
}


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` (1-5) to uint8 images (N, 28, 28); ``clean`` is a no-op."""
    if name == "clean":
        return np.array(images, copy=True)
    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {name!r}; choose from clean, {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ConfigError(f"severity must be one of {SEVERITIES}, got {severity}")
    images = np.asarray(images, np.uint8)
    return CORRUPTIONS[name](images, severity, np.random.default_rng(seed))


@dataclass(frozen=True)
class Stream:
    """A test-time stream: images in arrival order, their labels and the corruption each came from."""

    images: np.ndarray
    labels: np.ndarray
    domains: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Consecutive ``(images, labels)`` batches in arrival order."""
        for i in range(0, len(self), batch_size):
            yield self.images[i:i + batch_size], self.labels[i:i + batch_size]


def corruption_stream(images: np.ndarray, labels: np.ndarray, name: str, severity: int, n: int,
                      seed: int = 0) -> Stream:
    """``n`` shuffled test images under one corruption."""
    idx = np.random.default_rng(seed).permutation(len(images))[:n]
    return Stream(corrupt(images[idx], name, severity, seed), labels[idx], (name,) * len(idx))


def continual_stream(images: np.ndarray, labels: np.ndarray, names: Sequence[str], severity: int,
                     n_per_domain: int, seed: int = 0) -> Stream:
    """Segments of ``n_per_domain`` images, one per corruption in ``names``, back to back (no resets)."""
    order = np.random.default_rng(seed).permutation(len(images))
    parts_x, parts_y, domains = [], [], []
    for k, name in enumerate(names):
        idx = order[(k * n_per_domain) % len(order):][:n_per_domain]
        parts_x.append(corrupt(images[idx], name, severity, seed + k))
        parts_y.append(labels[idx])
        domains += [name] * len(idx)
    return Stream(np.concatenate(parts_x), np.concatenate(parts_y), tuple(domains))
